// Runs blocking block-device ioctls (BLKDISCARD) one at a time on a thread of its own, so that a
// slow device never stalls a queue's loop: io_uring has no discard operation that liburing 2.3
// can prepare (IORING_OP_URING_CMD with BLOCK_URING_CMD_DISCARD came with Linux 6.12).
//
// Threading: push(), take_done(), take_queued() and wait_idle() belong to the owner's loop
// thread; the worker thread only runs tasks and, after each, writes 1 to notify_fd (an eventfd
// the owner watches). A task belongs to the worker from push() until take_done() or
// take_queued() hands it back.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace vb {

class IoctlWorker {
public:
  struct Task {
    Task *next = nullptr;
    void *owner = nullptr; // the caller's, untouched
    int fd = -1;
    unsigned long request = 0;       // BLKDISCARD, BLKZEROOUT: a {offset, length} argument
    std::uint64_t range[2] = {0, 0}; // bytes
    int error = 0;                   // 0 or an errno, once done
  };

  explicit IoctlWorker(int notify_fd) noexcept : notify_fd_(notify_fd) {}
  ~IoctlWorker();
  IoctlWorker(const IoctlWorker &) = delete;
  IoctlWorker &operator=(const IoctlWorker &) = delete;

  // Queues task (the thread starts on first use); false if the thread cannot be started.
  bool push(Task *task) noexcept;
  // The tasks finished since the last call, as a list through next (nullptr if none).
  Task *take_done() noexcept;
  // The tasks not started yet, which now never will be.
  Task *take_queued() noexcept;
  // Blocks until no task is running (the one running cannot be interrupted).
  void wait_idle() noexcept;

private:
  void run() noexcept;

  int notify_fd_;
  std::mutex mu_;
  std::condition_variable cv_; // wakes the thread (work, stop) and wait_idle (idle)
  Task *queued_ = nullptr;     // oldest first
  Task *queued_tail_ = nullptr;
  Task *done_ = nullptr; // newest first: order does not matter to completions
  bool running_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

} // namespace vb
