// The file backend: a local regular file or block device, served through io_uring.
//
// Operations (the queue, file_queue.h, maps each request onto one SQE at a time):
//   read / write    IORING_OP_READV / WRITEV at the request's offset. A short count
//                   is resubmitted for the rest; a read stopped by end of file (the file shrank,
//                   or under O_DIRECT a last partial block) reads zeros from there.
//   flush           IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync).
//   discard         regular file: IORING_OP_FALLOCATE PUNCH_HOLE|KEEP_SIZE. Block device:
//                   the BLKDISCARD ioctl on a small worker thread per queue (ioctl_worker.h):
//                   liburing 2.3 has no discard operation, and a discard may take long.
//   write-zeroes    IORING_OP_FALLOCATE. Regular file: ZERO_RANGE|KEEP_SIZE (blocks stay
//                   allocated); with may_unmap, PUNCH_HOLE|KEEP_SIZE; where ZERO_RANGE is not
//                   supported (tmpfs), PUNCH_HOLE then an allocating fallocate. Block device:
//                   ZERO_RANGE (the kernel's zero-out, never unmapping, writing zeros if the
//                   device cannot) or, with may_unmap on a device that zeroes by unmapping,
//                   PUNCH_HOLE. Both are BLKZEROOUT's work, done asynchronously.
//
// O_DIRECT (FileBackendOptions::direct): automatic opens with O_DIRECT and reads one block to
// see that it works, falling back to the page cache if open or read says EINVAL; on requires
// it. The alignment O_DIRECT needs comes from statx (STATX_DIOALIGN) or else the logical block
// size; a regular file's logical block size is 512 bytes or that alignment if larger, a block
// device's is its own (BLKSSZGET). The size is rounded down to whole logical blocks.
//
// Bounce policy: under O_DIRECT, a read or write whose buffers are not all aligned (address to
// the memory alignment, length to the offset alignment) goes through an aligned buffer of at
// most 1 MiB, in as many pieces as needed. Each queue has at most bounce_limit bytes of bounce
// buffers at once; a request that needs one waits at the head of the queue's FIFO (and the
// requests behind it with it: the FIFO keeps arrival order) until enough is free; one request
// at a time always proceeds. More than IOV_MAX iovecs are bounced too.
//
// Queueing: a queue's ring has queue_depth entries and at most that many requests are in the
// kernel; the rest wait in a FIFO. submit() only queues and schedules a Deferred, which
// prepares the SQEs (on the file registered with the ring) and makes one io_uring_submit per
// loop iteration, then reaps the CQEs already there (O_DIRECT on a fast device completes inside
// the submit); the ring's fd, watched level-triggered, wakes the loop for the others.
//
// Cancel and fence: cancel_all() waits for what the kernel holds instead of cancelling it (a
// local file always answers, IORING_OP_ASYNC_CANCEL cannot stop a read or write already
// running, and the buffers are the engine's until the kernel lets go; a file on a network
// filesystem that stops answering holds cancel_all() as long), then completes everything, held
// or answered, with ECANCELED. fence() completes what is held in the FIFO (and
// block-device discards the worker has not started) with ECANCELED; what the kernel has
// completes with its result, and a request already partly done is finished, not cancelled.
//
// Resize: queue 0 looks at the size (st_size, BLKGETSIZE64) every resize_poll_interval and
// reports any change, growth or shrinkage, through report_resize(). A timer rather than each
// flush: a guest that only reads never flushes.
//
// Threading: open() and the constructor at start-up; open_queue() on each queue's loop thread,
// which then owns that queue (its ring, the ioctl worker's eventfd, FIFO and bounce memory) alone. What queues
// share is fixed at open() except the size and one capability probe (atomics). capabilities(),
// current_size() and direct() from any thread after open().
#pragma once

#include "common/unique_fd.h"
#include "file/file_options.h"
#include "file/file_queue.h"
#include "vduse-bridge/backend.h"

#include <cstdint>
#include <memory>
#include <string>

namespace vb {

class FileBackend final : public Backend {
public:
  explicit FileBackend(FileBackendOptions options);
  ~FileBackend() override;
  FileBackend(const FileBackend &) = delete;
  FileBackend &operator=(const FileBackend &) = delete;

  const BackendCapabilities &capabilities() const override { return caps_; }
  // Loop thread of the queue: a FileQueue with a ring of queue_depth entries.
  std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) override;
  const char *kind() const noexcept override { return "file"; }

  // Whether I/O bypasses the page cache (O_DIRECT), as open() decided.
  bool direct() const noexcept { return target_.direct; }
  std::uint64_t current_size() const noexcept { return target_.size.load(std::memory_order_relaxed); }
  // Any thread (queue 0's timer calls it): the size now; a change is reported as a resize.
  void check_size() noexcept;

private:
  // Opens the file, learns its size and block sizes, probes O_DIRECT, fallocate and io_uring.
  // Throws with a message naming the path.
  void connect() override;
  void open_file();
  void learn_regular_file(const struct stat &st);
  void learn_block_device(const struct stat &st);
  bool direct_read_works(std::uint32_t align) const noexcept;
  void probe_fallocate(std::uint64_t at);
  void check_io_uring() const;
  std::uint64_t size_now() const noexcept;

  FileBackendOptions options_;
  BackendCapabilities caps_;
  FileTarget target_;
  UniqueFd fd_;
};

} // namespace vb
