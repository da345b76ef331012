#include "export/device_runner.h"

namespace vb {

DeviceRunner::DeviceRunner(EventLoop &daemon, const DeviceConfig &config, std::unique_ptr<Backend> backend,
                           std::string state_dir)
    : daemon_(daemon), config_(config) {
  thread_ = std::thread([this] { loop_.run(); });
  try {
    // Constructed here (it only opens the backend); used from the device's thread from now on.
    export_ = std::make_unique<BlockExport>(loop_, config, std::move(backend), std::move(state_dir));
  } catch (...) {
    loop_.stop_from_any_thread();
    thread_.join();
    throw;
  }
}

DeviceRunner::~DeviceRunner() {
  run_sync([this] { export_.reset(); });
  loop_.stop_from_any_thread();
  thread_.join();
}

void DeviceRunner::run_sync(const std::function<void()> &fn) {
  std::promise<void> done;
  loop_.post([&] {
    try {
      fn();
      done.set_value();
    } catch (...) {
      done.set_exception(std::current_exception());
    }
  });
  done.get_future().get();
}

std::function<void()> DeviceRunner::on_daemon(std::function<void()> on_done) {
  return [&daemon = daemon_, on_done = std::move(on_done)] { daemon.post(on_done); };
}

void DeviceRunner::start(std::function<void(const std::string &)> on_ready) {
  run_sync([&] {
    export_->start([&daemon = daemon_, on_ready](const std::string &error) {
      daemon.post([on_ready, error] { on_ready(error); });
    });
    reattached_ = export_->reattached();
  });
}

void DeviceRunner::stop(std::function<void()> on_done) {
  loop_.post([this, done = on_daemon(std::move(on_done))] { export_->stop(done); });
}

void DeviceRunner::leave(std::function<void()> on_done) {
  loop_.post([this, done = on_daemon(std::move(on_done))] { export_->leave(done); });
}

} // namespace vb
