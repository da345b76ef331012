#include "export/device_runner.h"

#include "common/log.h"

#include <algorithm>
#include <future>

namespace vb {
namespace {

constexpr std::chrono::seconds kFirstRetry{1};
constexpr std::chrono::seconds kMaxRetry{30};

} // namespace

DeviceRunner::DeviceRunner(EventLoop &daemon, const DeviceConfig &config, BackendMaker make_backend,
                           std::string state_dir)
    : daemon_(daemon), config_(config), make_backend_(std::move(make_backend)), state_dir_(std::move(state_dir)) {
  retry_ = std::make_unique<Timer>(loop_, [this] { attempt(); });
  thread_ = std::thread([this] { loop_.run(); });
}

DeviceRunner::~DeviceRunner() {
  cancelled_ = true;
  std::promise<void> done;
  loop_.post([&] {
    retry_.reset();
    take_export().reset();
    done.set_value();
  });
  done.get_future().wait();
  loop_.stop_from_any_thread();
  thread_.join();
}

std::unique_ptr<BlockExport> DeviceRunner::take_export() {
  std::lock_guard lock(mu_);
  return std::move(export_);
}

void DeviceRunner::set_state(metrics::DeviceState state, const std::string &error) {
  {
    std::lock_guard lock(mu_);
    if (state != state_)
      state_since_ = std::chrono::system_clock::now();
    state_ = state;
    if (!error.empty())
      error_ = error;
  }
  if (on_state_ && (state == metrics::DeviceState::waiting || state == metrics::DeviceState::serving))
    daemon_.post([fn = on_state_, state, error] { fn(state, error); });
}

void DeviceRunner::start(StateFn on_state) {
  on_state_ = std::move(on_state);
  loop_.post([this] { attempt(); });
}

void DeviceRunner::attempt() {
  if (cancelled_ || pending_ != Ending::none)
    return;
  set_state(metrics::DeviceState::starting, {});
  {
    std::lock_guard lock(mu_);
    ++attempts_;
  }
  std::unique_ptr<BlockExport> created;
  try {
    // May block while the backend reaches its server: bounded, and cancelled by stop().
    created = std::make_unique<BlockExport>(loop_, config_, make_backend_(), state_dir_, &cancelled_);
    BlockExport *raw = created.get();
    {
      std::lock_guard lock(mu_);
      export_ = std::move(created);
    }
    attaching_ = true;
    raw->start([this](const std::string &error) { on_started(error); });
    reattached_ = reattached_ || raw->reattached();
  } catch (const std::exception &e) {
    attaching_ = false;
    created.reset();
    take_export().reset(); // start() threw: nothing of it is running
    wait_and_retry(e.what());
  }
}

void DeviceRunner::on_started(const std::string &error) {
  if (error.empty()) {
    attaching_ = false;
    {
      std::lock_guard lock(mu_);
      attempts_ = 0;
      error_.clear();
    }
    if (!last_logged_.empty())
      VB_LOG_INFO("%s: serving (after waiting for: %s)", config_.name.c_str(), last_logged_.c_str());
    last_logged_.clear();
    set_state(metrics::DeviceState::serving, {});
    finish_pending();
    return;
  }
  // Attaching failed (the vDPA bus, a driver missing): the device goes, and comes back later.
  // attaching_ stays set until the export is gone, so that a stop or leave meanwhile waits.
  BlockExport *e = nullptr;
  {
    std::lock_guard lock(mu_);
    e = export_.get();
  }
  e->stop([this, error] {
    // Not from inside the export's own callback.
    loop_.post([this, error] {
      take_export().reset();
      attaching_ = false;
      if (pending_ != Ending::none)
        finish_pending();
      else
        wait_and_retry(error);
    });
  });
}

// A stop or leave that came while the device was attaching: done now.
void DeviceRunner::finish_pending() {
  if (pending_ == Ending::none)
    return;
  const Ending how = pending_;
  pending_ = Ending::none;
  end(how, std::move(pending_done_));
}

void DeviceRunner::wait_and_retry(const std::string &error) {
  if (cancelled_ || pending_ != Ending::none)
    return;
  unsigned attempts = 0;
  {
    std::lock_guard lock(mu_);
    attempts = attempts_;
  }
  const unsigned doublings = std::min(attempts - 1, 5u);
  const auto delay = std::min<std::chrono::seconds>(kFirstRetry * (1u << doublings), kMaxRetry);
  {
    std::lock_guard lock(mu_);
    next_attempt_ = std::chrono::system_clock::now() + delay;
  }
  // The first failure and every new reason are logged; the same reason again only in debug.
  if (last_logged_.empty())
    VB_LOG_ERROR("%s: %s; the other devices are served, this one is tried again in the background (every %llds "
                 "at most)",
                 config_.name.c_str(), error.c_str(), static_cast<long long>(kMaxRetry.count()));
  else if (error != last_logged_)
    VB_LOG_WARN("%s: still waiting: %s", config_.name.c_str(), error.c_str());
  else
    VB_LOG_DEBUG("%s: still waiting (attempt %u): %s", config_.name.c_str(), attempts, error.c_str());
  last_logged_ = error;
  set_state(metrics::DeviceState::waiting, error);
  retry_->arm(delay);
}

void DeviceRunner::stop(std::function<void()> on_done) {
  cancelled_ = true; // an open in progress gives up (within 100 ms for NBD and iSCSI)
  loop_.post([this, done = std::move(on_done)]() mutable { end(Ending::stop, std::move(done)); });
}

void DeviceRunner::leave(std::function<void()> on_done) {
  cancelled_ = true;
  loop_.post([this, done = std::move(on_done)]() mutable { end(Ending::leave, std::move(done)); });
}

void DeviceRunner::end(Ending how, std::function<void()> done) {
  retry_->cancel();
  if (attaching_) {
    // The device exists and is attaching on a helper thread: finish that first.
    pending_ = how;
    pending_done_ = std::move(done);
    return;
  }
  auto finish = [&daemon = daemon_, done = std::move(done)] { daemon.post(done); };
  BlockExport *e = nullptr;
  {
    std::lock_guard lock(mu_);
    e = export_.get();
  }
  if (!e) {
    if (state_ == metrics::DeviceState::waiting && vduse::VduseDevice::exists(config_.name))
      VB_LOG_WARN("%s: never served by this daemon; the device a predecessor left stays as it was",
                  config_.name.c_str());
    finish();
    return;
  }
  set_state(metrics::DeviceState::stopping, {});
  if (how == Ending::leave)
    e->leave(finish);
  else
    e->stop(finish);
}

metrics::DeviceStatus DeviceRunner::status() const {
  std::lock_guard lock(mu_);
  metrics::DeviceStatus d;
  if (export_ && (state_ == metrics::DeviceState::serving || state_ == metrics::DeviceState::stopping)) {
    d = export_->status();
  } else {
    d.name = config_.name;
    d.attach = to_string(config_.attach);
    d.backend = std::string(config_.backend.type());
    d.read_only = config_.read_only;
    d.serial = config_.serial;
    d.last_error = error_;
  }
  d.state = state_;
  d.state_since = state_since_;
  d.start_attempts = attempts_;
  d.next_attempt = next_attempt_;
  return d;
}

} // namespace vb
