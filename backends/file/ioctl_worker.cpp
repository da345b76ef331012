#include "file/ioctl_worker.h"

#include <cerrno>
#include <cstdint>
#include <sys/ioctl.h>
#include <system_error>
#include <unistd.h>

namespace vb {

IoctlWorker::~IoctlWorker() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

bool IoctlWorker::push(Task *task) noexcept {
  if (!thread_.joinable()) {
    try {
      thread_ = std::thread([this] { run(); });
    } catch (const std::system_error &) {
      return false;
    }
  }
  task->next = nullptr;
  {
    std::lock_guard lock(mu_);
    if (queued_tail_)
      queued_tail_->next = task;
    else
      queued_ = task;
    queued_tail_ = task;
  }
  cv_.notify_all();
  return true;
}

IoctlWorker::Task *IoctlWorker::take_done() noexcept {
  std::lock_guard lock(mu_);
  Task *list = done_;
  done_ = nullptr;
  return list;
}

IoctlWorker::Task *IoctlWorker::take_queued() noexcept {
  std::lock_guard lock(mu_);
  Task *list = queued_;
  queued_ = queued_tail_ = nullptr;
  return list;
}

void IoctlWorker::wait_idle() noexcept {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return !running_ && !queued_; });
}

void IoctlWorker::run() noexcept {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || queued_; });
    if (stopping_)
      return;
    Task *task = queued_;
    queued_ = task->next;
    if (!queued_)
      queued_tail_ = nullptr;
    running_ = true;
    lock.unlock();
    task->error = ::ioctl(task->fd, task->request, task->range) == 0 ? 0 : errno;
    lock.lock();
    running_ = false;
    task->next = done_;
    done_ = task;
    const std::uint64_t one = 1;
    if (::write(notify_fd_, &one, sizeof one) < 0) {
      // Cannot happen with an eventfd of ours (EAGAIN needs 2^64 - 1 unread writes); the owner
      // also collects finished tasks when it cancels.
    }
    cv_.notify_all();
  }
}

} // namespace vb
