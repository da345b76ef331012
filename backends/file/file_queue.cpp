#include "file/file_queue.h"

#include "common/errors.h"
#include "common/log.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <event2/event.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <new>
#include <stdexcept>
#include <sys/eventfd.h>
#include <thread>

namespace vb {

struct FileQueue::Job {
  enum class Step : std::uint8_t { rw, flush, fallocate, ioctl };

  Request req{};
  CompletionFn done = nullptr;
  void *ctx = nullptr;
  Job *next = nullptr; // in held_, resume_ or the free list
  Step step = Step::rw;
  int mode = 0;                  // fallocate: this step's mode
  bool allocate_after = false;   // fallocate: a punched range is allocated again next (zeroes, no unmap)
  bool slot = false;             // counts in in_flight_
  std::uint64_t progress = 0;    // read/write: bytes done
  std::size_t bounce_size = 0;   // wanted; 0 = the request's own buffers go to the kernel
  char *bounce = nullptr;        // bounce_size bytes, once taken
  iovec one{};                   // the kernel's iovec for a bounced piece
  std::unique_ptr<iovec[]> rest; // the request's iovecs after progress (a short transfer)
  int rest_capacity = 0;
  IoctlWorker::Task task;
};

namespace {

constexpr std::size_t kBounceAlign = 4096;       // enough for any O_DIRECT buffer alignment
constexpr std::size_t kMaxBounceChunk = 1 << 20; // per request and piece
constexpr auto kRetryDelay = std::chrono::milliseconds(1);

using Job = FileQueue::Job;
using JobList = FileQueue::JobList;

void push_back(JobList &list, Job *job) noexcept {
  job->next = nullptr;
  if (list.tail)
    list.tail->next = job;
  else
    list.head = job;
  list.tail = job;
  ++list.size;
}

void push_front(JobList &list, Job *job) noexcept {
  job->next = list.head;
  list.head = job;
  if (!list.tail)
    list.tail = job;
  ++list.size;
}

Job *pop_front(JobList &list) noexcept {
  Job *job = list.head;
  if (!job)
    return nullptr;
  list.head = job->next;
  if (!list.head)
    list.tail = nullptr;
  --list.size;
  job->next = nullptr;
  return job;
}

void append(JobList &to, JobList &from) noexcept {
  while (Job *job = pop_front(from))
    push_back(to, job);
}

// Walks iov from byte skip on, n bytes, handing each piece to fn(char *base, size_t len).
template <typename Fn> void for_each_piece(const iovec *iov, int iovcnt, std::uint64_t skip, std::uint64_t n, Fn fn) {
  for (int i = 0; i < iovcnt && n > 0; ++i) {
    const std::uint64_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const std::uint64_t take = std::min(len - skip, n);
    fn(static_cast<char *>(iov[i].iov_base) + skip, static_cast<std::size_t>(take));
    n -= take;
    skip = 0;
  }
}

bool aligned(const iovec *iov, int iovcnt, std::uint32_t mem_align, std::uint32_t len_align) noexcept {
  for (int i = 0; i < iovcnt; ++i) // zero-length segments too: the kernel checks their address
    if (reinterpret_cast<std::uintptr_t>(iov[i].iov_base) % mem_align != 0 || iov[i].iov_len % len_align != 0)
      return false;
  return true;
}

std::uint64_t total_length(const iovec *iov, int iovcnt) noexcept {
  std::uint64_t n = 0;
  for (int i = 0; i < iovcnt; ++i)
    n += iov[i].iov_len;
  return n;
}

} // namespace

FileQueue::FileQueue(EventLoop &loop, const BackendCapabilities &caps, FileTarget &target, unsigned depth,
                     std::size_t bounce_limit, std::function<void()> poll_size, std::chrono::milliseconds poll_interval)
    : loop_(loop), caps_(caps), target_(target), depth_(depth), bounce_limit_(bounce_limit),
      event_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), worker_(event_fd_.get()),
      kick_(loop, [this] { issue_held(); }), retry_(loop, [this] { issue_held(); }) {
  // Pieces are whole O_DIRECT units; one request's piece may exceed a tiny limit (it is the
  // only one then: take_bounce lets a request through when no bounce memory is in use).
  const std::size_t unit = target_.offset_align;
  bounce_chunk_ = std::max(unit, std::min(bounce_limit_, kMaxBounceChunk) / unit * unit);
  if (event_fd_.get() < 0)
    throw std::runtime_error(errno_message("file backend: eventfd", errno));
  io_uring_params params{};
  // SUBMIT_ALL (5.18): an SQE that fails to start does not hold back the ones behind it.
  params.flags = IORING_SETUP_SUBMIT_ALL;
  int rc = io_uring_queue_init_params(depth_, &ring_, &params);
  if (rc == -EINVAL) {
    params = {};
    rc = io_uring_queue_init_params(depth_, &ring_, &params);
  }
  if (rc < 0)
    throw std::runtime_error(errno_message("file backend: io_uring_queue_init", -rc));
  try {
    // One registered file: no file-table lookup and reference per SQE (the daemon has threads,
    // so those are atomic). Without it, the plain fd.
    const int fd = target_.fd;
    if (io_uring_register_files(&ring_, &fd, 1) == 0) {
      file_ = 0;
      sqe_flags_ = IOSQE_FIXED_FILE;
    } else {
      file_ = target_.fd;
    }
    // The ring's fd is readable while CQEs wait. Level-triggered: a completion reaped right
    // after the submit (see issue_held) wakes nobody, unlike an eventfd the kernel writes per CQE.
    ring_watch_ = std::make_unique<IoWatch>(loop_, ring_.ring_fd, [this](short) { reap(); });
    ring_watch_->set_events(EV_READ);
    worker_watch_ = std::make_unique<IoWatch>(loop_, event_fd_.get(), [this](short) { on_worker_event(); });
    // Edge-triggered: every eventfd write wakes epoll again, so the counter is never read.
    worker_watch_->set_events(EV_READ | EV_ET);
    if (poll_size && poll_interval.count() > 0) {
      size_timer_ = std::make_unique<Timer>(loop_, std::move(poll_size));
      size_timer_->arm_periodic(poll_interval);
    }
  } catch (...) {
    worker_watch_.reset();
    ring_watch_.reset();
    io_uring_queue_exit(&ring_);
    throw;
  }
}

FileQueue::~FileQueue() {
  cancel_all();
  size_timer_.reset();
  worker_watch_.reset();
  ring_watch_.reset();
  io_uring_queue_exit(&ring_);
}

// 0, or the errno a request completes with at once.
int FileQueue::check(const Request &req) const noexcept {
  const std::uint64_t size = target_.size.load(std::memory_order_relaxed);
  if (req.op != Op::flush && (req.offset > size || req.length > size - req.offset))
    return EIO; // the engine checks ranges; this is the last line of defence
  switch (req.op) {
  case Op::read:
    return total_length(req.iov, req.iovcnt) == req.length ? 0 : EINVAL;
  case Op::write:
    if (caps_.read_only)
      return EROFS;
    return total_length(req.iov, req.iovcnt) == req.length ? 0 : EINVAL;
  case Op::flush:
    return 0;
  case Op::discard:
    return caps_.read_only ? EROFS : caps_.can_discard ? 0 : EOPNOTSUPP;
  case Op::write_zeroes:
    return caps_.read_only ? EROFS : caps_.can_write_zeroes ? 0 : EOPNOTSUPP;
  }
  return EINVAL;
}

// How much bounce memory a read or write needs: none when its buffers can go to the kernel.
std::size_t FileQueue::bounce_size_for(const Request &req) const noexcept {
  if (req.op != Op::read && req.op != Op::write)
    return 0;
  const bool direct_ok = !target_.direct || aligned(req.iov, req.iovcnt, target_.mem_align, target_.offset_align);
  if (direct_ok && req.iovcnt <= IOV_MAX)
    return 0;
  return static_cast<std::size_t>(std::min<std::uint64_t>(req.length, bounce_chunk_));
}

int FileQueue::submit(const Request &req, CompletionFn done, void *ctx) noexcept {
  const int refused = check(req);
  if (refused != 0 || ((req.op == Op::read || req.op == Op::write) && req.length == 0)) {
    done(ctx, refused);
    return 0;
  }
  Job *job = new_job();
  if (!job)
    return ENOMEM;
  job->req = req;
  job->done = done;
  job->ctx = ctx;
  job->bounce_size = bounce_size_for(req);
  switch (req.op) {
  case Op::read:
  case Op::write:
    job->step = Job::Step::rw;
    break;
  case Op::flush:
    job->step = Job::Step::flush;
    break;
  case Op::discard:
    if (target_.block_device) {
      // No io_uring operation discards (see ioctl_worker.h): BLKDISCARD on the worker.
      job->step = Job::Step::ioctl;
      job->task.owner = job;
      job->task.fd = target_.fd;
      job->task.request = BLKDISCARD;
      job->task.range[0] = req.offset;
      job->task.range[1] = req.length;
      if (!worker_.push(&job->task)) {
        recycle(job);
        return ENOMEM;
      }
      return 0;
    }
    job->step = Job::Step::fallocate;
    job->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    break;
  case Op::write_zeroes:
    // A regular file: punching reads back zeros and deallocates; ZERO_RANGE keeps the blocks.
    // A block device: ZERO_RANGE is a zero-out that never unmaps (falling back to writing
    // zeros), PUNCH_HOLE one that may unmap and never falls back.
    job->step = Job::Step::fallocate;
    if (req.may_unmap && target_.zero_unmap) {
      job->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    } else if (target_.block_device || target_.zero_range.load(std::memory_order_relaxed)) {
      job->mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    } else {
      job->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      job->allocate_after = true;
    }
    break;
  }
  push_back(held_, job);
  kick_.schedule();
  return 0;
}

FileQueue::Job *FileQueue::new_job() noexcept {
  Job *job = free_;
  if (job) {
    free_ = job->next;
    job->next = nullptr;
    return job;
  }
  try {
    jobs_.push_back(std::make_unique<Job>());
  } catch (const std::bad_alloc &) {
    return nullptr;
  }
  return jobs_.back().get();
}

void FileQueue::recycle(Job *job) noexcept {
  job->done = nullptr;
  job->ctx = nullptr;
  job->mode = 0;
  job->allocate_after = false;
  job->progress = 0;
  job->bounce_size = 0;
  job->next = free_;
  free_ = job;
}

// The Deferred (and the retry timer): gives held requests slots while there are free ones and
// bounce memory for those that need it, in arrival order, then submits everything prepared in
// this loop iteration with one io_uring_submit and reaps what completed inside it (O_DIRECT on
// a ramdisk or a fast device often does: one trip through epoll fewer per request).
void FileQueue::issue_held() noexcept {
  while (Job *job = pop_front(resume_)) {
    if (!issue(job)) {
      push_front(resume_, job);
      break;
    }
  }
  while (resume_.size == 0 && in_flight_ < depth_ && held_.head) {
    Job *job = held_.head;
    if (job->bounce_size != 0 && !job->bounce) {
      const Bounce b = take_bounce(job);
      if (b == Bounce::wait)
        break; // a completion gives memory back and schedules this again
      if (b == Bounce::failed) {
        pop_front(held_);
        finish(job, ENOMEM);
        continue;
      }
    }
    pop_front(held_);
    job->slot = true;
    ++in_flight_;
    if (!issue(job)) { // not sent: it stays first in line (and fenceable)
      job->slot = false;
      --in_flight_;
      push_front(held_, job);
      break;
    }
  }
  submit_ring();
  if (kernel_ops_ > 0)
    reap();
}

// Prepares job's next SQE. False if the SQ ring stays full even after a submit (the kernel
// refused it); the retry timer is armed then.
bool FileQueue::issue(Job *job) noexcept {
  io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {
    submit_ring();
    sqe = io_uring_get_sqe(&ring_);
  }
  if (!sqe) {
    if (!retry_.pending())
      retry_.arm(kRetryDelay);
    return false;
  }
  switch (job->step) {
  case Job::Step::rw:
    prepare_rw(job, sqe);
    break;
  case Job::Step::flush:
    io_uring_prep_fsync(sqe, file_, IORING_FSYNC_DATASYNC);
    break;
  case Job::Step::fallocate:
    io_uring_prep_fallocate(sqe, file_, job->mode, static_cast<off_t>(job->req.offset),
                            static_cast<off_t>(job->req.length));
    break;
  case Job::Step::ioctl:
    io_uring_prep_nop(sqe); // never: ioctls go to the worker
    break;
  }
  if (job->step != Job::Step::ioctl)
    io_uring_sqe_set_flags(sqe, sqe_flags_);
  io_uring_sqe_set_data(sqe, job);
  ++kernel_ops_;
  return true;
}

// The rest of a read or write: from the request's own iovecs (all of them the first time, those
// after progress after a short transfer) or one piece through the bounce buffer.
void FileQueue::prepare_rw(Job *job, io_uring_sqe *sqe) noexcept {
  const Request &req = job->req;
  const std::uint64_t remaining = req.length - job->progress;
  const std::uint64_t offset = req.offset + job->progress;
  const iovec *iov = req.iov;
  int iovcnt = req.iovcnt;
  if (job->bounce) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, job->bounce_size));
    if (req.op == Op::write) {
      char *dst = job->bounce;
      for_each_piece(req.iov, req.iovcnt, job->progress, n, [&dst](char *p, std::size_t len) {
        std::memcpy(dst, p, len);
        dst += len;
      });
    }
    job->one = {job->bounce, n};
    iov = &job->one;
    iovcnt = 1;
  } else if (job->progress > 0) {
    iovcnt = 0;
    iovec *rest = job->rest.get();
    for_each_piece(req.iov, req.iovcnt, job->progress, remaining, [rest, &iovcnt](char *p, std::size_t len) {
      rest[iovcnt++] = {p, len};
    });
    iov = rest;
  }
  // One buffer (most requests: a 4k read is one bounce-page run of VDUSE's): READ/WRITE, which
  // need no iovec array copied in.
  if (iovcnt == 1 && iov[0].iov_len <= UINT_MAX) {
    if (req.op == Op::read)
      io_uring_prep_read(sqe, file_, iov[0].iov_base, static_cast<unsigned>(iov[0].iov_len), offset);
    else
      io_uring_prep_write(sqe, file_, iov[0].iov_base, static_cast<unsigned>(iov[0].iov_len), offset);
  } else if (req.op == Op::read) {
    io_uring_prep_readv2(sqe, file_, iov, static_cast<unsigned>(iovcnt), offset, 0);
  } else {
    io_uring_prep_writev2(sqe, file_, iov, static_cast<unsigned>(iovcnt), offset, 0);
  }
}

void FileQueue::submit_ring() noexcept {
  if (io_uring_sq_ready(&ring_) == 0)
    return;
  const int rc = io_uring_submit(&ring_);
  if (rc >= 0 || rc == -EINTR)
    return;
  // EAGAIN / ENOMEM: the kernel could not allocate; what is in the SQ ring stays there.
  VB_LOG_WARN("file backend: io_uring_submit: %s; retrying", errno_text(-rc));
  if (!retry_.pending())
    retry_.arm(kRetryDelay);
}

// The eventfd fired: the worker finished a discard.
void FileQueue::on_worker_event() noexcept { deliver_ioctls(); }

void FileQueue::reap() noexcept {
  io_uring_cqe *cqe = nullptr;
  // One CQE at a time, seen before its job goes on: a completion may submit, fence or cancel.
  while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
    auto *job = static_cast<Job *>(io_uring_cqe_get_data(cqe));
    const int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    --kernel_ops_;
    on_cqe(job, res);
  }
}

void FileQueue::on_cqe(Job *job, int res) noexcept {
  switch (job->step) {
  case Job::Step::rw:
    on_rw_done(job, res);
    return;
  case Job::Step::fallocate:
    on_fallocate_done(job, res);
    return;
  case Job::Step::flush:
  case Job::Step::ioctl:
    finish(job, res < 0 ? -res : 0);
    return;
  }
}

void FileQueue::on_rw_done(Job *job, int res) noexcept {
  const Request &req = job->req;
  if (res == -EAGAIN || res == -EINTR) {
    continue_job(job); // io_uring retries these itself; should one get through, the same piece again
    return;
  }
  if (res < 0) {
    finish(job, -res);
    return;
  }
  const auto n = static_cast<std::uint64_t>(res);
  if (job->bounce && req.op == Op::read) {
    const char *src = job->bounce;
    for_each_piece(req.iov, req.iovcnt, job->progress, n, [&src](char *p, std::size_t len) {
      std::memcpy(p, src, len);
      src += len;
    });
  }
  job->progress += n;
  if (job->progress == req.length) {
    finish(job, 0);
    return;
  }
  // Short. A read that stops at end of file (the file shrank under us, or its last block is a
  // partial one) reads zeros from there; under O_DIRECT the kernel only stops short of a whole
  // block at end of file. A write that makes no progress (or stops mid-block under O_DIRECT)
  // would never finish.
  const bool at_eof = n == 0 || (target_.direct && job->progress % target_.offset_align != 0);
  if (at_eof) {
    if (req.op == Op::write) {
      finish(job, EIO);
      return;
    }
    for_each_piece(req.iov, req.iovcnt, job->progress, req.length - job->progress,
                   [](char *p, std::size_t len) { std::memset(p, 0, len); });
    finish(job, 0);
    return;
  }
  if (!job->bounce && job->rest_capacity < req.iovcnt) {
    job->rest.reset(new (std::nothrow) iovec[static_cast<std::size_t>(req.iovcnt)]);
    job->rest_capacity = job->rest ? req.iovcnt : 0;
    if (!job->rest) {
      finish(job, ENOMEM);
      return;
    }
  }
  continue_job(job);
}

void FileQueue::on_fallocate_done(Job *job, int res) noexcept {
  if (res == -EOPNOTSUPP && job->req.op == Op::write_zeroes) {
    if (job->mode & FALLOC_FL_ZERO_RANGE) {
      if (target_.block_device) {
        finish(job, EOPNOTSUPP);
        return;
      }
      // The filesystem cannot zero in place after all: punch, then allocate again.
      target_.zero_range.store(false, std::memory_order_relaxed);
      job->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      job->allocate_after = true;
      continue_job(job);
      return;
    }
    if (target_.block_device) {
      // The device has no unmapping zero-out: zero it without unmapping.
      job->mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
      continue_job(job);
      return;
    }
  }
  if (res < 0) {
    finish(job, -res);
    return;
  }
  if (job->allocate_after) {
    job->allocate_after = false;
    job->mode = FALLOC_FL_KEEP_SIZE; // allocate the punched range: zeros, and blocks to write to
    continue_job(job);
    return;
  }
  finish(job, 0);
}

// The next step of a job that holds a slot: prepared now, submitted with this iteration's batch.
void FileQueue::continue_job(Job *job) noexcept {
  if (!issue(job))
    push_back(resume_, job);
  kick_.schedule();
}

void FileQueue::deliver_ioctls() noexcept {
  IoctlWorker::Task *task = worker_.take_done();
  while (task) {
    IoctlWorker::Task *next = task->next;
    finish(static_cast<Job *>(task->owner), task->error);
    task = next;
  }
}

FileQueue::Bounce FileQueue::take_bounce(Job *job) noexcept {
  if (bounce_in_use_ != 0 && bounce_in_use_ + job->bounce_size > bounce_limit_)
    return Bounce::wait;
  job->bounce = static_cast<char *>(::operator new (job->bounce_size, std::align_val_t{kBounceAlign}, std::nothrow));
  if (!job->bounce)
    return Bounce::failed;
  bounce_in_use_ += job->bounce_size;
  return Bounce::taken;
}

// Gives back what job holds: its bounce memory and its slot, which held requests may be waiting for.
void FileQueue::release(Job *job) noexcept {
  bool freed = false;
  if (job->bounce) {
    ::operator delete (job->bounce, std::align_val_t{kBounceAlign});
    job->bounce = nullptr;
    bounce_in_use_ -= job->bounce_size;
    freed = true;
  }
  if (job->slot) {
    job->slot = false;
    --in_flight_;
    freed = true;
  }
  if (freed && held_.head)
    kick_.schedule();
}

void FileQueue::finish(Job *job, int error) noexcept {
  release(job);
  const CompletionFn done = job->done;
  void *ctx = job->ctx;
  recycle(job);
  done(ctx, error);
}

// Waits until the kernel has answered every SQE prepared (sending those still in the SQ ring:
// they continue requests already partly sent), and hands their jobs over without going on.
void FileQueue::drain_kernel(JobList &out) noexcept {
  while (kernel_ops_ > 0) {
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // Not reachable with a valid ring; the jobs stay allocated (never completed) rather than
      // be completed while the kernel may still use their buffers.
      VB_LOG_ERROR("file backend: waiting for %u request(s) in the kernel: %s", kernel_ops_, errno_text(-rc));
      return;
    }
    if (rc == -EAGAIN || rc == -EBUSY)
      std::this_thread::sleep_for(kRetryDelay);
    io_uring_cqe *cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
      auto *job = static_cast<Job *>(io_uring_cqe_get_data(cqe));
      io_uring_cqe_seen(&ring_, cqe);
      --kernel_ops_;
      push_back(out, job);
    }
  }
}

// A local file always answers, so the kernel's requests are waited for rather than cancelled
// (IORING_OP_ASYNC_CANCEL cannot stop a read or write already running in an io-wq worker, and
// their buffers are the engine's until the kernel lets go). Completions that submit again are
// cancelled too, until nothing is left.
void FileQueue::cancel_all() noexcept {
  for (;;) {
    JobList cancelled;
    append(cancelled, held_);
    append(cancelled, resume_);
    for (IoctlWorker::Task *t = worker_.take_queued(); t; t = t->next)
      push_back(cancelled, static_cast<Job *>(t->owner));
    worker_.wait_idle();
    for (IoctlWorker::Task *t = worker_.take_done(); t; t = t->next)
      push_back(cancelled, static_cast<Job *>(t->owner));
    drain_kernel(cancelled);
    if (cancelled.size == 0)
      break;
    while (Job *job = pop_front(cancelled))
      finish(job, ECANCELED);
  }
  kick_.cancel();
  retry_.cancel();
}

void FileQueue::fence() noexcept {
  JobList fenced;
  append(fenced, held_);
  for (IoctlWorker::Task *t = worker_.take_queued(); t; t = t->next)
    push_back(fenced, static_cast<Job *>(t->owner));
  while (Job *job = pop_front(fenced))
    finish(job, ECANCELED);
}

} // namespace vb
