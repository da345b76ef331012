// Thin RAII wrappers over libevent: one explicit event_base per loop thread.
//
// Threading rules: an EventLoop and every watch created on it belong to the thread that
// runs the loop. The only exceptions are EventLoop::post() and EventLoop::stop_from_any_thread(),
// which any thread may call; they wake the loop through an eventfd.
// Callbacks run on the loop thread and must not throw (they are invoked from C code).
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <vector>

struct event_base;
struct event;

namespace vb {

class EventLoop {
public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop &) = delete;
  EventLoop &operator=(const EventLoop &) = delete;

  event_base *base() const noexcept { return base_; }

  // Runs callbacks until stop() is called or nothing is left to wait for.
  void run();
  // Runs one iteration; with block == false it only handles what is ready now.
  void run_once(bool block);
  // run() with busy polling: for window after the last activity the thread does not sleep; it
  // calls poll() (true: it found work) between non-blocking passes over the events. When the
  // window has passed without activity, before_sleep() (true: it found work, keep polling),
  // then one blocking iteration; whatever wakes it starts a new window. Until stop().
  void run_polling(const std::function<bool()> &poll, const std::function<bool()> &before_sleep,
                   std::chrono::nanoseconds window);
  // Loop thread only: makes run() return after the current callback.
  void stop() noexcept;
  // Any thread: same as stop(), through the wake-up eventfd.
  void stop_from_any_thread() noexcept;
  // Any thread: runs fn on the loop thread, in posting order. fn must not throw.
  void post(std::function<void()> fn);

private:
  static void on_wakeup(int fd, short what, void *arg) noexcept;
  void wake() noexcept;

  event_base *base_ = nullptr;
  int wake_fd_ = -1;
  event *wake_event_ = nullptr;
  std::mutex mutex_;
  std::vector<std::function<void()>> posted_;
  bool stop_requested_ = false;
};

// Watches one file descriptor; persistent until disabled or destroyed. Does not own the fd.
class IoWatch {
public:
  using Callback = std::function<void(short events)>; // EV_READ / EV_WRITE bits that fired

  IoWatch(EventLoop &loop, int fd, Callback cb);
  ~IoWatch();
  IoWatch(const IoWatch &) = delete;
  IoWatch &operator=(const IoWatch &) = delete;

  // Watch for EV_READ and/or EV_WRITE, with EV_ET for edge-triggered; 0 disables. Cheap when
  // the set does not change.
  void set_events(short events);
  short events() const noexcept { return events_; }

private:
  static void on_event(int fd, short what, void *arg) noexcept;

  EventLoop &loop_;
  int fd_;
  Callback cb_;
  event *event_ = nullptr;
  short events_ = 0;
};

// A one-shot or periodic timer.
class Timer {
public:
  Timer(EventLoop &loop, std::function<void()> cb);
  ~Timer();
  Timer(const Timer &) = delete;
  Timer &operator=(const Timer &) = delete;

  void arm(std::chrono::milliseconds after); // fires once (re-arming replaces)
  void arm_periodic(std::chrono::milliseconds every);
  void cancel() noexcept;
  bool pending() const noexcept;

private:
  static void on_timer(int fd, short what, void *arg) noexcept;
  void add(std::chrono::milliseconds after, bool periodic);

  EventLoop &loop_;
  std::function<void()> cb_;
  event *event_ = nullptr;
};

// Runs a callback once later in the current (or next) loop iteration, after the callbacks that
// are already active: a way to batch work (one interrupt for many completions). Scheduling
// twice before it runs still runs it once.
class Deferred {
public:
  Deferred(EventLoop &loop, std::function<void()> cb);
  ~Deferred();
  Deferred(const Deferred &) = delete;
  Deferred &operator=(const Deferred &) = delete;

  void schedule() noexcept;
  void cancel() noexcept;

private:
  static void on_run(int fd, short what, void *arg) noexcept;

  std::function<void()> cb_;
  event *event_ = nullptr;
  bool scheduled_ = false;
};

// Delivers a signal as an ordinary loop callback (libevent's self-pipe), so handlers can
// do anything a callback can. Only one loop per process should watch a given signal.
class SignalWatch {
public:
  SignalWatch(EventLoop &loop, int signo, std::function<void()> cb);
  ~SignalWatch();
  SignalWatch(const SignalWatch &) = delete;
  SignalWatch &operator=(const SignalWatch &) = delete;

private:
  static void on_signal(int fd, short what, void *arg) noexcept;

  std::function<void()> cb_;
  event *event_ = nullptr;
};

} // namespace vb
