// Runs one BlockExport on a control thread of its own. The kernel waits for every control
// message of a device (and breaks the device if the answer is late), and answering one may wait
// for that device's queues (a reset stops them, an IOTLB update moves their rings), which wait
// for their backend. With one thread per device, a device whose queue or backend is slow (a
// worker blocked in name resolution, a long drain) delays only its own messages: never another
// device's, nor the daemon's (status, metrics, reload, signals).
//
// Threading: the methods belong to the daemon's thread. The BlockExport lives on the runner's
// thread; callbacks given to start/stop/leave run on the daemon's loop.
#pragma once

#include "export/block_export.h"

#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

namespace vb {

class DeviceRunner {
public:
  // Opens the backend (may block: start-up and reload only), as BlockExport does.
  DeviceRunner(EventLoop &daemon, const DeviceConfig &config, std::unique_ptr<Backend> backend,
               std::string state_dir = {});
  // Destroys the export on its thread, then stops the thread.
  ~DeviceRunner();
  DeviceRunner(const DeviceRunner &) = delete;
  DeviceRunner &operator=(const DeviceRunner &) = delete;

  // BlockExport::start() on the device's thread, waited for; its exception is rethrown here.
  void start(std::function<void(const std::string &error)> on_ready);
  void stop(std::function<void()> on_done);
  void leave(std::function<void()> on_done);

  const std::string &name() const { return config_.name; }
  const DeviceConfig &config() const { return config_; }
  // The device existed when start() ran (a predecessor's).
  bool reattached() const { return reattached_; }
  // Any thread (BlockExport::status() is).
  metrics::DeviceStatus status() const { return export_->status(); }

private:
  // Runs fn on the device's thread and waits; rethrows what it threw.
  void run_sync(const std::function<void()> &fn);
  // on_done, posted to the daemon's loop.
  std::function<void()> on_daemon(std::function<void()> on_done);

  EventLoop &daemon_;
  DeviceConfig config_;
  EventLoop loop_;
  std::thread thread_;
  std::unique_ptr<BlockExport> export_;
  bool reattached_ = false;
};

} // namespace vb
