#include "event/event_loop.h"

#include "common/errors.h"

#include <event2/event.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <sys/eventfd.h>
#include <unistd.h>

namespace vb {
namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  if (ms.count() < 0)
    ms = std::chrono::milliseconds(0);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

[[noreturn]] void fail(const char *what) { throw std::runtime_error(errno_message(what, errno)); }

} // namespace

EventLoop::EventLoop() {
  event_config *cfg = event_config_new();
  if (!cfg)
    fail("event_config_new");
  // Each loop is confined to one thread; libevent's own locking would only cost.
  event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
  base_ = event_base_new_with_config(cfg);
  event_config_free(cfg);
  if (!base_)
    fail("event_base_new");
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    event_base_free(base_);
    fail("eventfd");
  }
  wake_event_ = event_new(base_, wake_fd_, EV_READ | EV_PERSIST, &EventLoop::on_wakeup, this);
  if (!wake_event_ || event_add(wake_event_, nullptr) != 0) {
    if (wake_event_)
      event_free(wake_event_);
    ::close(wake_fd_);
    event_base_free(base_);
    fail("event_add(eventfd)");
  }
}

EventLoop::~EventLoop() {
  event_free(wake_event_);
  ::close(wake_fd_);
  event_base_free(base_);
}

void EventLoop::run() {
  // The wake-up event is always pending, so EVLOOP_NO_EXIT_ON_EMPTY is implied; run until stop().
  event_base_dispatch(base_);
}

void EventLoop::run_once(bool block) { event_base_loop(base_, block ? EVLOOP_ONCE : EVLOOP_NONBLOCK); }

void EventLoop::run_polling(const std::function<bool()> &poll, const std::function<bool()> &before_sleep,
                            std::chrono::nanoseconds window) {
  using Clock = std::chrono::steady_clock;
  // Ring checks (memory reads) per pass over the events (one epoll_wait system call).
  constexpr int kPollsPerPass = 16;
  auto last = Clock::now();
  for (;;) {
    if (Clock::now() - last < window) {
      for (int i = 0; i < kPollsPerPass; ++i) {
        if (poll()) {
          last = Clock::now();
          break;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause(); // a spinning hyperthread yields its core's resources
#endif
      }
      event_base_loop(base_, EVLOOP_NONBLOCK);
    } else if (before_sleep()) {
      last = Clock::now();
      continue;
    } else {
      event_base_loop(base_, EVLOOP_ONCE);
      last = Clock::now();
    }
    if (event_base_got_break(base_))
      return;
  }
}

void EventLoop::stop() noexcept { event_base_loopbreak(base_); }

void EventLoop::stop_from_any_thread() noexcept {
  {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
  }
  wake();
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    posted_.push_back(std::move(fn));
  }
  wake();
}

void EventLoop::wake() noexcept {
  const std::uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the loop will wake anyway.
  [[maybe_unused]] ssize_t rc = ::write(wake_fd_, &one, sizeof one);
}

void EventLoop::on_wakeup(int fd, short, void *arg) noexcept {
  auto *self = static_cast<EventLoop *>(arg);
  std::uint64_t count = 0;
  [[maybe_unused]] ssize_t rc = ::read(fd, &count, sizeof count);
  std::vector<std::function<void()>> batch;
  bool stop = false;
  {
    std::lock_guard lock(self->mutex_);
    batch.swap(self->posted_);
    stop = self->stop_requested_;
    self->stop_requested_ = false;
  }
  for (auto &fn : batch)
    fn();
  if (stop)
    self->stop();
}

IoWatch::IoWatch(EventLoop &loop, int fd, Callback cb) : loop_(loop), fd_(fd), cb_(std::move(cb)) {
  // Allocated once; set_events() re-assigns it in place so the data path never allocates.
  event_ = event_new(loop_.base(), fd_, 0, &IoWatch::on_event, this);
  if (!event_)
    fail("event_new(fd)");
}

IoWatch::~IoWatch() { event_free(event_); } // event_free also deletes a pending event

void IoWatch::set_events(short events) {
  events = static_cast<short>(events & (EV_READ | EV_WRITE | EV_ET));
  if (events == events_)
    return;
  event_del(event_);
  events_ = events;
  if (events == 0)
    return;
  event_assign(event_, loop_.base(), fd_, static_cast<short>(events | EV_PERSIST), &IoWatch::on_event, this);
  if (event_add(event_, nullptr) != 0)
    fail("event_add(fd)");
}

void IoWatch::on_event(int, short what, void *arg) noexcept {
  auto *self = static_cast<IoWatch *>(arg);
  self->cb_(static_cast<short>(what & (EV_READ | EV_WRITE)));
}

Timer::Timer(EventLoop &loop, std::function<void()> cb) : loop_(loop), cb_(std::move(cb)) {
  event_ = event_new(loop_.base(), -1, 0, &Timer::on_timer, this);
  if (!event_)
    fail("event_new(timer)");
}

Timer::~Timer() { event_free(event_); }

void Timer::add(std::chrono::milliseconds after, bool periodic) {
  event_del(event_);
  event_assign(event_, loop_.base(), -1, periodic ? EV_PERSIST : 0, &Timer::on_timer, this);
  const timeval tv = to_timeval(after);
  if (event_add(event_, &tv) != 0)
    fail("event_add(timer)");
}

void Timer::arm(std::chrono::milliseconds after) { add(after, false); }

void Timer::arm_periodic(std::chrono::milliseconds every) { add(every, true); }

void Timer::cancel() noexcept { event_del(event_); }

bool Timer::pending() const noexcept { return event_pending(event_, EV_TIMEOUT, nullptr) != 0; }

void Timer::on_timer(int, short, void *arg) noexcept { static_cast<Timer *>(arg)->cb_(); }

Deferred::Deferred(EventLoop &loop, std::function<void()> cb) : cb_(std::move(cb)) {
  event_ = event_new(loop.base(), -1, 0, &Deferred::on_run, this);
  if (!event_)
    fail("event_new(deferred)");
}

Deferred::~Deferred() { event_free(event_); }

void Deferred::schedule() noexcept {
  if (scheduled_)
    return;
  scheduled_ = true;
  event_active(event_, EV_TIMEOUT, 0);
}

void Deferred::cancel() noexcept {
  if (!scheduled_)
    return;
  scheduled_ = false;
  event_del(event_);
}

void Deferred::on_run(int, short, void *arg) noexcept {
  auto *self = static_cast<Deferred *>(arg);
  self->scheduled_ = false;
  self->cb_();
}

SignalWatch::SignalWatch(EventLoop &loop, int signo, std::function<void()> cb) : cb_(std::move(cb)) {
  event_ = evsignal_new(loop.base(), signo, &SignalWatch::on_signal, this);
  if (!event_ || event_add(event_, nullptr) != 0) {
    if (event_)
      event_free(event_);
    fail("evsignal_new");
  }
}

SignalWatch::~SignalWatch() { event_free(event_); }

void SignalWatch::on_signal(int, short, void *arg) noexcept { static_cast<SignalWatch *>(arg)->cb_(); }

} // namespace vb
