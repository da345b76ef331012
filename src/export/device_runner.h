// Runs one device on a control thread of its own, from its first attempt to its removal.
//
// The kernel waits for every control message of a device (and breaks the device if the answer
// is late), and answering one may wait for that device's queues (a reset stops them, an IOTLB
// update moves their rings), which wait for their backend. With one thread per device, a device
// whose queue or backend is slow (a worker blocked in name resolution, a long drain) delays only
// its own messages: never another device's, nor the daemon's (status, metrics, reload, signals).
//
// Start-up is on that thread too, and it does not give up: opening the backend (which may wait
// for a server, bounded by the backend's handshake timeout) and creating the device are tried
// until they succeed, 1 s after the first failure, doubling to every 30 s. Meanwhile the device
// is "waiting", with the reason, and the daemon serves the others. A device that is taken over
// from a predecessor stays as the predecessor left it (its I/O paused) until then.
//
// Threading: the public methods belong to the daemon's thread, except status() (any thread).
// The BlockExport lives on the runner's thread; callbacks given to start/stop/leave run on the
// daemon's loop.
#pragma once

#include "export/block_export.h"
#include "metrics/device_status.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace vb {

class DeviceRunner {
public:
  // A new, unopened backend for each attempt (a backend whose open() failed is not reused).
  using BackendMaker = std::function<std::unique_ptr<Backend>()>;
  // The device's state changed: waiting (error says why), serving (error empty). Runs on the
  // daemon's loop. The first call is the outcome of the first attempt.
  using StateFn = std::function<void(metrics::DeviceState state, const std::string &error)>;

  DeviceRunner(EventLoop &daemon, const DeviceConfig &config, BackendMaker make_backend, std::string state_dir = {});
  // Destroys the export on its thread, then stops the thread. Call after stop() or leave()
  // reported done (or before start()), so that nothing is in progress.
  ~DeviceRunner();
  DeviceRunner(const DeviceRunner &) = delete;
  DeviceRunner &operator=(const DeviceRunner &) = delete;

  // Begins the first attempt on the device's thread; returns at once.
  void start(StateFn on_state);
  // Detaches and destroys the device (a waiting one: gives up trying; an attempt in progress is
  // cancelled or, once the device exists, finished first). on_done on the daemon's loop.
  void stop(std::function<void()> on_done);
  // Leaves the device attached for the next daemon (a waiting one: as it is). on_done as stop's.
  void leave(std::function<void()> on_done);

  const std::string &name() const { return config_.name; }
  const DeviceConfig &config() const { return config_; }
  // The device existed when this daemon first created it (a predecessor's).
  bool reattached() const { return reattached_.load(); }
  // Any thread.
  metrics::DeviceStatus status() const;

private:
  enum class Ending { none, stop, leave };

  void attempt();                                   // runner thread
  void on_started(const std::string &error);        // runner thread: BlockExport::start's outcome
  void wait_and_retry(const std::string &error);    // runner thread
  void end(Ending how, std::function<void()> done); // runner thread
  void finish_pending();                            // runner thread
  void set_state(metrics::DeviceState state, const std::string &error);
  std::unique_ptr<BlockExport> take_export();

  EventLoop &daemon_;
  DeviceConfig config_;
  BackendMaker make_backend_;
  std::string state_dir_;
  StateFn on_state_;
  EventLoop loop_;
  std::thread thread_;
  std::unique_ptr<Timer> retry_;       // runner thread
  std::atomic<bool> cancelled_{false}; // stop()/leave() called: an open in progress gives up
  std::atomic<bool> reattached_{false};
  bool attaching_ = false;             // runner thread: start() ran, on_started not yet
  Ending pending_ = Ending::none;      // runner thread: asked to end while attaching
  std::function<void()> pending_done_; // runner thread
  std::string last_logged_;            // runner thread: the last error logged, to log changes only

  mutable std::mutex mu_; // what status() reads from other threads
  std::unique_ptr<BlockExport> export_;
  metrics::DeviceState state_ = metrics::DeviceState::starting;
  std::chrono::system_clock::time_point state_since_ = std::chrono::system_clock::now();
  std::string error_;
  unsigned attempts_ = 0;
  std::chrono::system_clock::time_point next_attempt_{};
};

} // namespace vb
