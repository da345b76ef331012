// One configured device: a VDUSE virtio-blk device, its backend and one QueueWorker per
// virtqueue, plus the vDPA attachment. Answers the device's control messages on the control
// loop and starts/stops the queues as the driver asks. It never waits for backend I/O except,
// bounded by reset_budget(), for the old driver's requests before a reset is answered.
//
// Threading: everything here runs on the device's control thread (its own, see
// device_runner.h), except status(), which any thread may call, and the vDPA attach/detach,
// which run on a short-lived helper thread because the kernel sends us control messages while
// they are in progress (see vdpa/vdpa_bus.h).
#pragma once

#include "config/config.h"
#include "event/event_loop.h"
#include "export/queue_worker.h"
#include "metrics/device_status.h"
#include "recovery/recovery_state.h"
#include "vduse-bridge/backend.h"
#include "vduse/iotlb_cache.h"
#include "vduse/vduse_device.h"
#include "virtio_blk/blk_device.h"

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace vb {

// How long a reset waits for the old driver's requests before they are abandoned: 5 s, or a
// third of control-timeout when that is shorter (the kernel breaks the device for good when
// its wait for the answer runs out).
std::chrono::milliseconds reset_budget(std::chrono::seconds control_timeout) noexcept;

class BlockExport final : private vduse::ControlHandler {
public:
  // Opens the backend (may block: start-up only; gives up once *cancelled is true, see
  // Backend::open) and computes the device parameters.
  // state_dir: where the device's recovery state lives (recovery/recovery_state.h), so that a
  // daemon that dies can be replaced without losing or repeating a request; empty = none.
  BlockExport(EventLoop &control, const DeviceConfig &config, std::unique_ptr<Backend> backend,
              std::string state_dir = {}, const std::atomic<bool> *cancelled = nullptr);
  ~BlockExport() override;
  BlockExport(const BlockExport &) = delete;
  BlockExport &operator=(const BlockExport &) = delete;

  // Creates (or reattaches to) the VDUSE device, starts serving its control channel and, unless
  // attach is none, attaches it on the vDPA bus in the background. on_ready(error) runs on the
  // control loop when that is done; error is empty on success. Throws if the device cannot be
  // created, or if it exists and its recovery state does not match this configuration (the
  // device is not touched then).
  //
  // Reattaching (a predecessor died or left): answers the control messages the kernel replays,
  // then resumes every ready queue from the recovery state: what was in flight is resubmitted
  // oldest first, nothing published is repeated.
  void start(const std::function<void(const std::string &error)> &on_ready);
  // Detaches from the vDPA bus (in the background), stops the queues, destroys the device and
  // removes its recovery state. on_done runs on the control loop afterwards.
  void stop(const std::function<void()> &on_done) { stop(on_done, true); }
  // Planned restart: stops taking requests, lets those in flight complete (bounded), and closes
  // the device leaving it attached, with its recovery state, for the next daemon. I/O pauses
  // until then. on_done runs on the control loop afterwards.
  void leave(const std::function<void()> &on_done);
  // The device existed when start() ran (a predecessor's).
  bool reattached() const { return device_ && device_->reattached(); }

  const std::string &name() const { return config_.name; }
  const DeviceConfig &config() const { return config_; }
  const blk::DeviceParams &params() const { return params_; }

  // The host block device ("vda") when attached with virtio-vdpa, else empty.
  std::string block_device() const;
  // What the status command and the metrics show: identity, backend health, counters. Any thread.
  metrics::DeviceStatus status() const;

private:
  bool on_set_status(std::uint8_t status) noexcept override;
  std::uint16_t on_get_vq_state(std::uint32_t index) noexcept override;
  void on_update_iotlb(std::uint64_t start, std::uint64_t last) noexcept override;
  void after_set_status(std::uint8_t status) noexcept override;

  void on_device_readable() noexcept;
  // for_good: the backend drops what it kept for a successor (false when recreating).
  void stop(const std::function<void()> &on_done, bool for_good);
  void recreate() noexcept;
  void on_device_broken() noexcept;
  void on_backend_resized(std::uint64_t size) noexcept;
  void push_capacity() noexcept;
  void start_queues() noexcept;
  void resume_queues() noexcept;
  void open_state(std::uint64_t features);
  void stop_queues() noexcept;
  void destroy_queues() noexcept;
  void run_in_background(std::function<std::string()> work, std::function<void(const std::string &)> then);
  std::uint64_t bounce_size() const;

  EventLoop &control_;
  DeviceConfig config_;
  // Before backend_: it outlives the backend, which may report until it is gone.
  RecordingBackendEvents backend_events_;
  std::unique_ptr<Backend> backend_;
  std::string state_dir_;
  std::unique_ptr<recovery::RecoveryState> state_;
  blk::DeviceParams params_;
  std::unique_ptr<vduse::VduseDevice> device_;
  std::unique_ptr<vduse::IotlbCache> iotlb_;
  std::unique_ptr<IoWatch> device_watch_;
  // With a control-timeout the kernel can break the device without waking a poller: checked
  // every second (device ioctls fail with EPERM once it is broken).
  std::unique_ptr<Timer> health_check_;
  std::vector<std::unique_ptr<QueueWorker>> queues_; // changed under status_mu_
  mutable std::mutex status_mu_;                     // queues_ and params_.capacity, for status() on other threads
  std::uint8_t status_ = 0;
  bool queues_running_ = false;
  bool log_trusted_ = true; // false: the recovery state was created after the device (item 6)
  bool broken_ = false;
  bool recreating_ = false;
  bool stopping_ = false;        // stop() or leave() began: nothing starts the device again
  unsigned status_messages_ = 0; // SET_STATUS messages answered, to notice replayed ones
  std::thread background_;
  // Work posted to the control loop from other threads holds a weak reference to this, so it
  // does nothing once the export is gone.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::chrono::system_clock::time_point started_ = std::chrono::system_clock::now();
};

} // namespace vb
