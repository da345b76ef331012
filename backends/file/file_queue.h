// One virtqueue's requests on the file (the design is in file_backend.h): an io_uring of its
// own with the file registered, SQEs submitted once per loop iteration and the completions that
// are already there reaped right after (O_DIRECT on a fast device completes inside
// io_uring_enter), the rest found by the queue's loop watching the ring's fd; at most `depth`
// requests in the kernel and the rest held in arrival order. The ioctl worker signals through an
// eventfd of its own.
//
// Threading: every method runs on the loop thread that created the queue. The ioctl worker's
// thread only runs block-device discards and writes its eventfd when one is done.
#pragma once

#include "common/unique_fd.h"
#include "event/event_loop.h"
#include "file/ioctl_worker.h"
#include "vduse-bridge/backend.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <liburing.h>
#include <memory>
#include <vector>

namespace vb {

// What the queues of one file share, set by FileBackend::open() before any queue exists.
// Afterwards only size and zero_range change (any thread).
struct FileTarget {
  int fd = -1;
  bool block_device = false;
  bool direct = false;                 // O_DIRECT: buffers and offsets must be aligned
  std::uint32_t mem_align = 512;       // O_DIRECT: buffer addresses
  std::uint32_t offset_align = 512;    // O_DIRECT: file offsets and buffer lengths
  bool zero_unmap = false;             // write-zeroes with may_unmap may punch (regular) / unmap (device)
  std::atomic<bool> zero_range{false}; // FALLOC_FL_ZERO_RANGE works; cleared if it turns out not to
  std::atomic<std::uint64_t> size{0};  // bytes, whole logical blocks
};

class FileQueue final : public BackendQueue {
public:
  struct Job; // one request, from submit() to its completion

  // Creates the ring on the calling (loop) thread; throws with a message on failure. caps and
  // target belong to the backend and outlive the queue. poll_size, if set, runs on this loop
  // every poll_interval.
  FileQueue(EventLoop &loop, const BackendCapabilities &caps, FileTarget &target, unsigned depth,
            std::size_t bounce_limit, std::function<void()> poll_size, std::chrono::milliseconds poll_interval);
  // Completes whatever is left with ECANCELED first (as cancel_all()).
  ~FileQueue() override;
  FileQueue(const FileQueue &) = delete;
  FileQueue &operator=(const FileQueue &) = delete;

  int submit(const Request &req, CompletionFn done, void *ctx) noexcept override;
  // Waits for what the kernel (or the ioctl worker) holds, then completes everything with
  // ECANCELED before returning.
  void cancel_all() noexcept override;
  // Completes what is held (never given to the kernel) with ECANCELED; the rest completes with
  // its result.
  void fence() noexcept override;

  // For tests and status (loop thread): requests holding a ring slot, requests waiting for one
  // (or for bounce memory), bounce memory in use.
  unsigned in_flight() const noexcept { return in_flight_; }
  std::size_t held() const noexcept { return held_.size; }
  std::size_t bounce_bytes() const noexcept { return bounce_in_use_; }

  struct JobList {
    Job *head = nullptr;
    Job *tail = nullptr;
    std::size_t size = 0;
  };

private:
  enum class Bounce { taken, wait, failed };

  int check(const Request &req) const noexcept;
  std::size_t bounce_size_for(const Request &req) const noexcept;
  Job *new_job() noexcept;
  void recycle(Job *job) noexcept;
  void issue_held() noexcept;
  bool issue(Job *job) noexcept;
  void prepare_rw(Job *job, io_uring_sqe *sqe) noexcept;
  void submit_ring() noexcept;
  void on_worker_event() noexcept;
  void reap() noexcept;
  void on_cqe(Job *job, int res) noexcept;
  void on_rw_done(Job *job, int res) noexcept;
  void on_fallocate_done(Job *job, int res) noexcept;
  void continue_job(Job *job) noexcept;
  void deliver_ioctls() noexcept;
  Bounce take_bounce(Job *job) noexcept;
  void release(Job *job) noexcept;
  void finish(Job *job, int error) noexcept;
  void drain_kernel(JobList &out) noexcept;

  EventLoop &loop_;
  const BackendCapabilities &caps_;
  FileTarget &target_;
  const unsigned depth_;
  const std::size_t bounce_limit_;
  std::size_t bounce_chunk_; // the most one request bounces at a time
  io_uring ring_{};
  int file_ = -1; // in SQEs: 0 with IOSQE_FIXED_FILE (registered), else target_.fd
  std::uint8_t sqe_flags_ = 0;
  UniqueFd event_fd_;                     // the worker's completions
  IoctlWorker worker_;                    // after event_fd_: stopped before it closes
  std::unique_ptr<IoWatch> ring_watch_;   // the ring's fd: CQEs waiting (level-triggered)
  std::unique_ptr<IoWatch> worker_watch_; // event_fd_
  Deferred kick_;                         // submits once per loop iteration
  Timer retry_;                           // the kernel refused a submission (out of memory): try again
  std::unique_ptr<Timer> size_timer_;
  unsigned in_flight_ = 0;  // jobs holding a slot: in the kernel, in the SQ ring or in resume_
  unsigned kernel_ops_ = 0; // SQEs prepared whose CQE has not been reaped
  std::size_t bounce_in_use_ = 0;
  JobList held_;   // accepted, no slot yet: what a fence cancels
  JobList resume_; // partly done, hold a slot, their next piece found no SQE
  Job *free_ = nullptr;
  std::vector<std::unique_ptr<Job>> jobs_;
};

} // namespace vb
