#include "export/block_export.h"

#include "common/log.h"
#include "common/units.h"
#include "vdpa/vdpa_bus.h"
#include "virtio/ring.h"

#include <algorithm>
#include <event2/event.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <stdexcept>

namespace vb {
namespace {

// The driver may use up to seg_max segments of at most a page each per request, but Linux
// caps requests at max_sectors_kb (1280 KiB by default); 128 KiB per slot covers the usual
// request sizes without reserving gigabytes for the worst case. Clamped to what VDUSE accepts.
constexpr std::uint64_t kBouncePerSlot = 128ULL * 1024;
constexpr std::uint64_t kBounceMin = 64ULL << 20;
constexpr std::uint64_t kBounceMax = 1ULL << 30;

} // namespace

BlockExport::BlockExport(EventLoop &control, const DeviceConfig &config, std::unique_ptr<Backend> backend,
                         std::string state_dir, const std::atomic<bool> *cancelled)
    : control_(control), config_(config), backend_(std::move(backend)), state_dir_(std::move(state_dir)) {
  // No device of that name: whatever an earlier one kept for a successor (a memory disk's
  // contents) belongs to a disk that is gone.
  if (!vduse::VduseDevice::exists(config_.name))
    backend_->device_destroyed();
  backend_->open(backend_events_, cancelled);
  blk::DeviceSettings settings;
  settings.queues = config_.queues;
  settings.queue_size = config_.queue_size;
  settings.logical_block_size = config_.logical_block_size;
  settings.read_only = config_.read_only;
  settings.serial = config_.serial;
  params_ = blk::make_device_params(backend_->capabilities(), settings);
}

BlockExport::~BlockExport() {
  backend_events_.set_resize_handler(nullptr);
  alive_.reset();
  if (background_.joinable())
    background_.join();
  destroy_queues();
}

// Last first: a backend queue may forward to a lower-numbered queue's connection (NBD without
// multi-conn), so the forwarders go while their target still exists.
void BlockExport::destroy_queues() noexcept {
  while (!queues_.empty()) {
    std::unique_ptr<QueueWorker> last;
    {
      std::lock_guard lock(status_mu_);
      last = std::move(queues_.back());
      queues_.pop_back();
    }
  }
}

std::uint64_t BlockExport::bounce_size() const {
  const std::uint64_t want = std::uint64_t{config_.queues} * config_.queue_size * kBouncePerSlot;
  return std::clamp(want, kBounceMin, kBounceMax);
}

void BlockExport::start(const std::function<void(const std::string &)> &on_ready) {
  vduse::DeviceSpec spec;
  spec.name = config_.name;
  spec.device_id = VIRTIO_ID_BLOCK;
  spec.features = blk::device_features(params_);
  spec.num_queues = config_.queues;
  spec.queue_size_max = static_cast<std::uint16_t>(config_.queue_size);
  spec.config = blk::config_space(params_);
  // The state first: a device that exists with another configuration is left alone.
  open_state(spec.features);
  device_ = std::make_unique<vduse::VduseDevice>(spec);
  iotlb_ = std::make_unique<vduse::IotlbCache>(device_->fd());
  for (unsigned i = 0; i < config_.queues; ++i) {
    auto q = std::make_unique<QueueWorker>(config_.name, i, *device_, *iotlb_, *backend_, params_,
                                           state_ ? &state_->queue(i) : nullptr, config_.busy_poll);
    std::lock_guard lock(status_mu_);
    queues_.push_back(std::move(q));
  }

  const auto &caps = backend_->capabilities();
  VB_LOG_INFO("%s: %s virtio-blk device, %s, %s backend (%s), %u queue(s) of %u, %u-byte blocks%s",
              config_.name.c_str(), device_->reattached() ? "reattached to" : "created",
              format_size(params_.capacity).c_str(), backend_->kind(), caps.identity.c_str(), config_.queues,
              config_.queue_size, params_.logical_block_size, params_.read_only ? ", read-only" : "");
  if (device_->reattached())
    VB_LOG_WARN("%s: the device existed already (left by an earlier run); serving it again", config_.name.c_str());

  device_watch_ = std::make_unique<IoWatch>(control_, device_->fd(), [this](short) { on_device_readable(); });
  backend_events_.set_resize_handler([this, alive = std::weak_ptr<bool>(alive_)](std::uint64_t size) {
    control_.post([this, alive, size] {
      if (alive.lock())
        on_backend_resized(size);
    });
  });
  device_watch_->set_events(EV_READ);

  if (config_.control_timeout.count() > 0) {
    health_check_ = std::make_unique<Timer>(control_, [this] {
      if (broken_ || !device_)
        return;
      try {
        (void)device_->driver_features();
      } catch (const std::exception &e) {
        VB_LOG_DEBUG("%s: health check: %s", config_.name.c_str(), e.what());
        on_device_broken();
      }
    });
    health_check_->arm_periodic(std::chrono::seconds(1));
  }
  if (device_->reattached()) {
    // Messages the kernel replays come first. If one of them changed the driver's status (a
    // reset, or DRIVER_OK that started the queues already), the queues follow that, not the log.
    const unsigned statuses_before = status_messages_;
    on_device_readable();
    if (status_messages_ == statuses_before)
      resume_queues();
    else
      VB_LOG_INFO("%s: the kernel replayed a status change; the queues follow it instead of the recovery state",
                  config_.name.c_str());
    // The storage changed size while no daemon ran: the device still has the old capacity.
    if (state_ && state_->identity().capacity != params_.capacity) {
      VB_LOG_WARN("%s: the %s backend's size changed from %s to %s while no daemon ran; resizing the disk",
                  config_.name.c_str(), backend_->kind(), format_size(state_->identity().capacity).c_str(),
                  format_size(params_.capacity).c_str());
      push_capacity();
    }
  }
  if (config_.attach == DeviceConfig::Attach::none || (device_->reattached() && vdpa::device_exists(config_.name))) {
    control_.post([on_ready] { on_ready({}); });
    return;
  }
  try {
    // Before attach: the driver's first messages are then under the configured timeout.
    device_->set_msg_timeout(static_cast<unsigned>(config_.control_timeout.count()));
  } catch (const std::exception &e) {
    VB_LOG_WARN("%s: %s (keeping the kernel's control-message timeout)", config_.name.c_str(), e.what());
  }
  try {
    // Sized before the IOVA domain exists, i.e. before attach; ignored by the kernel afterwards.
    device_->set_bounce_size(bounce_size());
  } catch (const std::exception &e) {
    VB_LOG_WARN("%s: %s (keeping the kernel's default bounce buffer)", config_.name.c_str(), e.what());
  }
  const std::string name = config_.name;
  const auto driver =
      config_.attach == DeviceConfig::Attach::vhost_vdpa ? vdpa::Driver::vhost_vdpa : vdpa::Driver::virtio_vdpa;
  run_in_background(
      [name, driver]() -> std::string {
        try {
          vdpa::add_device(name);
          vdpa::bind_driver(name, driver);
          return {};
        } catch (const std::exception &e) {
          return e.what();
        }
      },
      [this, on_ready](const std::string &error) {
        if (error.empty()) {
          if (auto blk = vdpa::block_device(config_.name))
            VB_LOG_INFO("%s: attached, host disk /dev/%s", config_.name.c_str(), blk->c_str());
          else if (auto vhost = vdpa::vhost_device(config_.name))
            VB_LOG_INFO("%s: attached, /dev/%s for a VMM", config_.name.c_str(), vhost->c_str());
          else
            VB_LOG_INFO("%s: attached on the vDPA bus", config_.name.c_str());
        }
        on_ready(error);
      });
}

void BlockExport::stop(const std::function<void()> &on_done, bool for_good) {
  if (for_good)
    stopping_ = true; // a recreate in progress must not start the device again
  const std::string name = config_.name;
  const bool detach = device_ && config_.attach != DeviceConfig::Attach::none && vdpa::device_exists(name);
  run_in_background(
      [name, detach]() -> std::string {
        if (!detach)
          return {};
        try {
          vdpa::del_device(name);
          return {};
        } catch (const std::exception &e) {
          return e.what();
        }
      },
      [this, on_done, for_good](const std::string &error) {
        if (!error.empty())
          VB_LOG_ERROR("%s: %s", config_.name.c_str(), error.c_str());
        stop_queues();
        for (auto &q : queues_)
          if (!q->drain_sync(5000))
            VB_LOG_WARN("%s: backend requests still in flight at shutdown", config_.name.c_str());
        device_watch_.reset();
        health_check_.reset();
        destroy_queues();
        iotlb_.reset();
        if (device_ && device_->destroy()) {
          VB_LOG_INFO("%s: device destroyed", config_.name.c_str());
          if (for_good)
            backend_->device_destroyed();
        }
        device_.reset();
        if (state_) {
          try {
            state_->remove();
          } catch (const std::exception &e) {
            VB_LOG_WARN("%s: %s", config_.name.c_str(), e.what());
          }
          state_.reset();
        }
        on_done();
      });
}

void BlockExport::leave(const std::function<void()> &on_done) {
  stopping_ = true;
  for (auto &q : queues_)
    q->pause_sync();
  // Requests in flight complete (and are published) normally; whatever does not finish in time
  // stays in the recovery state and the successor resubmits it.
  for (auto &q : queues_)
    if (!q->drain_sync(10000))
      VB_LOG_WARN("%s: requests still in flight after 10s; the next daemon resubmits them", config_.name.c_str());
  for (auto &q : queues_)
    q->abandon_sync();
  device_watch_.reset();
  health_check_.reset();
  destroy_queues();
  iotlb_.reset();
  device_.reset(); // closes /dev/vduse/NAME: the kernel keeps the device and holds its I/O
  state_.reset();  // unmapped, the file stays
  VB_LOG_INFO("%s: left attached for the next daemon", config_.name.c_str());
  control_.post(on_done);
}

void BlockExport::open_state(std::uint64_t features) {
  log_trusted_ = true;
  if (state_dir_.empty())
    return;
  recovery::DeviceIdentity id;
  id.name = config_.name;
  id.num_queues = config_.queues;
  id.queue_size = static_cast<std::uint16_t>(config_.queue_size);
  id.capacity = params_.capacity;
  id.logical_block_size = params_.logical_block_size;
  id.features = features;
  id.backend_kind = backend_->kind();
  id.backend_identity = backend_->capabilities().identity.substr(0, 255);
  const bool exists = vduse::VduseDevice::exists(config_.name);
  if (!exists && recovery::RecoveryState::remove_file(state_dir_, config_.name))
    VB_LOG_DEBUG("%s: removed the recovery state of a device that no longer exists", config_.name.c_str());
  try {
    state_ = recovery::RecoveryState::open_or_create(state_dir_, id);
  } catch (const std::exception &e) {
    if (exists)
      throw std::runtime_error(std::string(e.what()) +
                               "; the existing device is left as it is (restore the configuration it was created "
                               "with, or tear it down with `vdpa dev del` and remove the state file)");
    throw;
  }
  if (exists && state_->created()) {
    // A log made just now never saw the rings: what it would replay is not what was in flight.
    log_trusted_ = false;
    VB_LOG_WARN("%s: the device exists but has no recovery state in %s: requests in flight when the previous daemon "
                "died cannot be replayed; queues with requests outstanding are not served",
                config_.name.c_str(), state_dir_.c_str());
  }
}

namespace {

// Where the driver put a queue's rings (the size was checked against the configuration first).
virtio::RingLayout ring_layout_of(const vduse::VqInfo &info) {
  virtio::RingLayout layout;
  layout.desc = info.desc;
  layout.avail = info.driver;
  layout.used = info.device;
  layout.num = static_cast<std::uint16_t>(info.num);
  return layout;
}

} // namespace

void BlockExport::resume_queues() noexcept {
  if (broken_)
    return;
  try {
    const std::uint64_t features = device_->driver_features();
    const bool event_idx = (features & (1ULL << virtio::kFeatureEventIdx)) != 0;
    unsigned resumed = 0;
    for (unsigned i = 0; i < queues_.size(); ++i) {
      const vduse::VqInfo info = device_->vq_info(i);
      if (!info.ready || info.num == 0 || info.num > config_.queue_size)
        continue;
      if (queues_[i]->resume_sync(ring_layout_of(info), event_idx, info.avail_index, log_trusted_))
        ++resumed;
    }
    if (resumed > 0) {
      // The driver is live (its queues are ready): the status it last set included DRIVER_OK.
      status_ = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK |
                VIRTIO_CONFIG_S_DRIVER_OK;
      queues_running_ = true;
      VB_LOG_INFO("%s: resumed %u queue(s) of the running device", config_.name.c_str(), resumed);
    }
  } catch (const std::exception &e) {
    VB_LOG_ERROR("%s: resuming queues: %s", config_.name.c_str(), e.what());
  }
}

void BlockExport::run_in_background(std::function<std::string()> work, std::function<void(const std::string &)> then) {
  if (background_.joinable())
    background_.join();
  background_ = std::thread(
      [this, alive = std::weak_ptr<bool>(alive_), work = std::move(work), then = std::move(then)]() mutable {
        std::string error = work();
        control_.post([this, alive, then = std::move(then), error = std::move(error)] {
          if (!alive.lock())
            return; // the export is gone (its destructor joined this thread)
          if (background_.joinable())
            background_.join();
          then(error);
        });
      });
}

std::string BlockExport::block_device() const { return vdpa::block_device(config_.name).value_or(""); }

metrics::DeviceStatus BlockExport::status() const {
  metrics::DeviceStatus d;
  d.name = config_.name;
  if (config_.attach == DeviceConfig::Attach::virtio_vdpa)
    d.disk = block_device();
  else if (config_.attach == DeviceConfig::Attach::vhost_vdpa)
    d.disk = vdpa::vhost_device(config_.name).value_or("");
  d.attach = to_string(config_.attach);
  d.backend = backend_->kind();
  d.serial = config_.serial;
  d.backend_identity = backend_->capabilities().identity;
  for (BackendPathStatus &p : backend_->paths())
    d.paths.push_back(
        {std::move(p.name), p.sessions, p.sessions_up, p.failovers, std::move(p.last_error), std::move(p.alua)});
  const RecordingBackendEvents::Health h = backend_events_.health();
  d.backend_state = h.state == Backend::State::connected      ? metrics::BackendState::connected
                    : h.state == Backend::State::reconnecting ? metrics::BackendState::reconnecting
                                                              : metrics::BackendState::failing;
  d.backend_state_since = h.since;
  d.last_error = h.last_error;
  std::lock_guard lock(status_mu_); // the device's thread changes the queues and the capacity
  d.capacity_bytes = params_.capacity;
  d.read_only = params_.read_only;
  d.started = started_;
  for (const auto &q : queues_)
    d.queues.push_back(q->counters().snapshot());
  d.reconnects = h.recoveries;
  // While the storage is away, every request in the backend waits for it (held, or to be sent
  // again): none is failed before reconnect-timeout.
  if (d.backend_state == metrics::BackendState::reconnecting)
    for (const auto &q : d.queues)
      d.held_requests += q.in_flight;
  return d;
}

void BlockExport::on_device_readable() noexcept {
  if (broken_ || !device_)
    return;
  bool ok = false;
  try {
    ok = device_->handle_messages(*this);
  } catch (const std::exception &e) {
    VB_LOG_ERROR("%s: %s", config_.name.c_str(), e.what());
  }
  if (!ok) {
    // The kernel timed out a control message (or the fd failed): the device is unusable until
    // it is deleted and created again.
    on_device_broken();
  }
}

void BlockExport::on_device_broken() noexcept {
  if (broken_ || stopping_)
    return;
  broken_ = true;
  if (device_watch_)
    device_watch_->set_events(0);
  control_.post([this, alive = std::weak_ptr<bool>(alive_)] {
    if (alive.lock())
      recreate();
  });
}

// The kernel marks a device broken for good when a control message goes unanswered for
// control-timeout: its I/O fails from then on. The only way back is a new device: delete it
// and create it again (the disk goes away and comes back; the backend and its data stay).
void BlockExport::recreate() noexcept {
  if (recreating_ || stopping_)
    return;
  recreating_ = true;
  VB_LOG_ERROR("%s: the kernel broke the VDUSE device (a control message went unanswered for control-timeout, or "
               "its fd failed); its I/O fails: deleting it and creating it again",
               config_.name.c_str());
  stop(
      [this] {
        broken_ = false;
        status_ = 0;
        queues_running_ = false;
        if (stopping_) {
          recreating_ = false; // the daemon stopped or left the device meanwhile
          return;
        }
        try {
          start([this](const std::string &error) {
            recreating_ = false;
            if (!error.empty())
              VB_LOG_ERROR("%s: creating the device again: %s", config_.name.c_str(), error.c_str());
            else
              VB_LOG_INFO("%s: created again after it broke", config_.name.c_str());
          });
        } catch (const std::exception &e) {
          recreating_ = false;
          VB_LOG_ERROR("%s: cannot create the device again: %s", config_.name.c_str(), e.what());
        }
      },
      false);
}

// The backend's storage changed size: new requests are checked against the new capacity, then
// the driver learns it from the config space (VDUSE_DEV_SET_CONFIG + config interrupt), so it
// never sees a capacity the queues would refuse when the disk grows.
void BlockExport::on_backend_resized(std::uint64_t size) noexcept {
  const std::uint64_t capacity = size / params_.logical_block_size * params_.logical_block_size;
  if (capacity == params_.capacity || !device_)
    return;
  VB_LOG_WARN("%s: the %s backend's size changed from %s to %s; resizing the disk", config_.name.c_str(),
              backend_->kind(), format_size(params_.capacity).c_str(), format_size(capacity).c_str());
  {
    std::lock_guard lock(status_mu_);
    params_.capacity = capacity;
  }
  for (auto &q : queues_)
    q->set_capacity(capacity);
  push_capacity();
}

// The device's config space (and the recovery state) get params_.capacity, and a driver that is
// running hears of it. The queues already check requests against it.
void BlockExport::push_capacity() noexcept {
  if (state_)
    state_->set_capacity(params_.capacity);
  try {
    const auto le = blk::capacity_le(params_.capacity);
    device_->set_config(blk::kCapacityOffset, le.data(), static_cast<std::uint32_t>(le.size()));
    if (status_ & VIRTIO_CONFIG_S_DRIVER_OK)
      device_->inject_config_irq();
  } catch (const std::exception &e) {
    VB_LOG_ERROR("%s: resize: %s", config_.name.c_str(), e.what());
  }
}

bool BlockExport::on_set_status(std::uint8_t status) noexcept {
  ++status_messages_;
  if (status == 0) {
    VB_LOG_DEBUG("%s: reset", config_.name.c_str());
    stop_queues();
    iotlb_->reset();
    status_ = 0;
    return true;
  }
  if ((status & VIRTIO_CONFIG_S_FEATURES_OK) && !(status_ & VIRTIO_CONFIG_S_FEATURES_OK)) {
    try {
      const std::uint64_t features = device_->driver_features();
      if (!(features & (1ULL << virtio::kFeatureVersion1))) {
        VB_LOG_ERROR("%s: the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)",
                     config_.name.c_str());
        return false;
      }
    } catch (const std::exception &e) {
      VB_LOG_ERROR("%s: %s", config_.name.c_str(), e.what());
      return false;
    }
  }
  if ((status & VIRTIO_CONFIG_S_DRIVER_OK) == 0 && queues_running_)
    stop_queues(); // DRIVER_OK withdrawn without a reset: stop serving
  return true;
}

void BlockExport::after_set_status(std::uint8_t status) noexcept {
  const std::uint8_t old = status_;
  status_ = status;
  if ((status & VIRTIO_CONFIG_S_DRIVER_OK) && !(old & VIRTIO_CONFIG_S_DRIVER_OK))
    start_queues();
}

void BlockExport::start_queues() noexcept {
  try {
    const std::uint64_t features = device_->driver_features();
    const bool event_idx = (features & (1ULL << virtio::kFeatureEventIdx)) != 0;
    for (unsigned i = 0; i < queues_.size(); ++i) {
      const vduse::VqInfo info = device_->vq_info(i);
      if (!info.ready)
        continue;
      if (info.num == 0 || info.num > config_.queue_size) {
        VB_LOG_ERROR("%s: queue %u has an invalid size %u", config_.name.c_str(), i, info.num);
        continue;
      }
      // A fresh queue starts where the driver's state says (0, or what a VMM restored).
      queues_[i]->start_sync(ring_layout_of(info), info.avail_index, event_idx);
    }
    queues_running_ = true;
    VB_LOG_DEBUG("%s: driver ready, features 0x%llx", config_.name.c_str(), static_cast<unsigned long long>(features));
  } catch (const std::exception &e) {
    VB_LOG_ERROR("%s: starting queues: %s", config_.name.c_str(), e.what());
  }
}

std::chrono::milliseconds reset_budget(std::chrono::seconds control_timeout) noexcept {
  constexpr std::chrono::milliseconds kMostly{5000};
  if (control_timeout.count() <= 0)
    return kMostly;
  return std::min<std::chrono::milliseconds>(kMostly, std::chrono::milliseconds(control_timeout) / 3);
}

void BlockExport::stop_queues() noexcept {
  for (auto &q : queues_)
    q->stop_sync();
  queues_running_ = false;
  // The answer to the reset tells the driver (a VMM's guest, rebooting) that its memory is its
  // own again: first the old requests finish, or are abandoned, within a budget well inside the
  // kernel's wait for that answer (control-timeout).
  const auto budget = reset_budget(config_.control_timeout);
  const auto abandon_at = std::chrono::steady_clock::now() + budget;
  const auto give_up_at = abandon_at + std::min<std::chrono::milliseconds>(budget, std::chrono::seconds(1));
  std::vector<QueueWorker *> all;
  for (auto &q : queues_)
    all.push_back(q.get());
  if (!settle_queues(all, abandon_at, give_up_at))
    VB_LOG_WARN("%s: requests from before the reset are still in the backend (writes sent in full, which no "
                "longer read the driver's memory); the new driver's requests wait for them",
                config_.name.c_str());
}

std::uint16_t BlockExport::on_get_vq_state(std::uint32_t index) noexcept {
  if (index >= queues_.size())
    return 0;
  return queues_[index]->next_avail_sync();
}

// The kernel changed the mappings (with vhost-vdpa: any change of the VMM's memory map, even
// after DRIVER_OK). Before the answer, every queue moves its rings to the new mappings; requests
// in flight keep the old ones (pinned) until they complete, then those are unmapped.
void BlockExport::on_update_iotlb(std::uint64_t start, std::uint64_t last) noexcept {
  iotlb_->invalidate(start, last);
  for (auto &q : queues_)
    q->remap_sync();
}

} // namespace vb
