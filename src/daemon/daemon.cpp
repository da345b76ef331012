#include "daemon/daemon.h"

#include "backend_factory.h"
#include "common/errors.h"
#include "common/log.h"
#include "control/control_server.h"
#include "control/metrics_http_server.h"
#include "daemon/options.h"
#include "daemon/sd_notify.h"
#include "event/event_loop.h"
#include "export/device_runner.h"
#include "metrics/prometheus.h"
#include "metrics/status_text.h"
#include "vduse/vduse_device.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <memory>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <vector>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace vb {
namespace {

// The daemon serves the disks the kernel may be writing back to free memory: it must not wait
// on that same writeback (PR_SET_IO_FLUSHER) or be paged out (mlockall), or it can deadlock.
void harden_process() {
  if (::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0)
    VB_LOG_WARN("PR_SET_IO_FLUSHER: %s (memory pressure could stall the disks)", errno_text(errno));
  // MCL_ONFAULT: lock pages as they are touched, so a large sparse memory disk is not populated.
  if (::mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0)
    VB_LOG_WARN("mlockall: %s (the daemon could be paged out under memory pressure)", errno_text(errno));
  (void)::signal(SIGPIPE, SIG_IGN); // a dead server's socket must give EPIPE, not kill us
}

class Daemon {
public:
  Daemon(Config config, const Options &options)
      : config_(std::move(config)), state_dir_(options.state_dir), options_(options), retry_(loop_, [this] { step(); }),
        sample_(loop_, [this] { take_sample(); }) {}

  int run() {
    // The control socket first: a second daemon is refused before it touches any device.
    try {
      make_parent_dir(options_.control_socket);
      control_ = std::make_unique<control::ControlServer>(loop_, options_.control_socket);
      control_->add_command("status", [this](const std::string &, bool &) {
        auto now = statuses();
        metrics::fill_rates(now, last_sample_,
                            std::chrono::duration<double>(std::chrono::steady_clock::now() - last_sample_at_).count());
        return metrics::format_status_text(now, std::chrono::system_clock::now());
      });
      control_->add_command("metrics",
                            [this](const std::string &, bool &) { return metrics::format_prometheus(statuses()); });
      control_->add_command("reload", [this](const std::string &, bool &ok) {
        ok = !stopping_;
        loop_.post([this] { reload(); });
        return std::string(ok ? "reloading " + config_.path + " (the daemon log says what changed)" : "stopping");
      });
      if (!options_.metrics_listen.empty())
        metrics_http_ = std::make_unique<control::MetricsHttpServer>(
            loop_, options_.metrics_listen, [this] { return metrics::format_prometheus(statuses()); });
    } catch (const std::exception &e) {
      VB_LOG_ERROR("%s", e.what());
      return 1;
    }
    sample_.arm_periodic(std::chrono::seconds(1));
    SignalWatch term(loop_, SIGTERM, [this] { shutdown("SIGTERM", false); });
    SignalWatch intr(loop_, SIGINT, [this] { shutdown("SIGINT", false); });
    SignalWatch usr1(loop_, SIGUSR1, [this] { shutdown("SIGUSR1", true); });
    SignalWatch hup(loop_, SIGHUP, [this] { reload(); });
    loop_.post([this] {
      for (const auto &device : config_.devices)
        add(device);
      step();
    });
    loop_.run();
    exports_.clear();
    return status_;
  }

private:
  std::vector<metrics::DeviceStatus> statuses() const {
    std::vector<metrics::DeviceStatus> v;
    for (const auto &e : exports_)
      v.push_back(e->status());
    return v;
  }

  // Rates in `status` are over the last second: the sample it is compared with.
  void take_sample() {
    last_sample_ = statuses();
    last_sample_at_ = std::chrono::steady_clock::now();
  }

  static void make_parent_dir(const std::string &path) {
    const std::string dir = path.substr(0, path.rfind('/'));
    if (!dir.empty() && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
      throw std::runtime_error(errno_message("mkdir " + dir, errno));
  }

  // Creates one device's runner and starts its first attempt (on the device's own thread: this
  // never blocks). A device whose backend cannot be reached, or whose device cannot be created,
  // is retried by its runner in the background; the others are not affected.
  void add(const DeviceConfig &device) {
    try {
      auto e = std::make_unique<DeviceRunner>(
          loop_, device, [device] { return make_backend(device); }, state_dir_);
      DeviceRunner *raw = e.get();
      exports_.push_back(std::move(e));
      ++starting_;
      raw->start([this, first = true](metrics::DeviceState, const std::string &) mutable {
        if (first) {
          first = false;
          --starting_;
        }
        announced_ = false;
        step();
      });
    } catch (const std::exception &ex) {
      VB_LOG_ERROR("%s: %s", device.name.c_str(), ex.what()); // out of threads or memory
    }
  }

  // SIGTERM/SIGINT: detach and destroy every device. SIGUSR1 (leave): a planned restart, every
  // device stays attached for the next daemon.
  void shutdown(const char *why, bool leave) {
    if (stopping_)
      return;
    if (why)
      VB_LOG_INFO("%s: %s %zu device(s)", why,
                  leave ? "leaving attached for the next daemon" : "detaching and destroying", exports_.size());
    (void)notify_service_manager("STOPPING=1");
    stopping_ = true;
    leaving_ = leave;
    removals_.clear();
    for (const auto &e : exports_)
      removals_.push_back(e->name());
    step();
  }

  // SIGHUP: read the file again. Devices added are created, devices removed are drained and
  // destroyed, devices whose settings are unchanged are not touched at all. A file that does
  // not parse changes nothing.
  void reload() {
    if (stopping_)
      return;
    Config fresh;
    try {
      fresh = load_config(config_.path);
    } catch (const std::exception &e) {
      VB_LOG_ERROR("SIGHUP: %s; nothing changed", e.what());
      return;
    }
    (void)notify_service_manager("RELOADING=1");
    // Against what is already queued (an earlier reload may still be in progress): the new file
    // decides what will exist once the queue is done.
    auto wanted = [&](const std::string &name) {
      return std::any_of(fresh.devices.begin(), fresh.devices.end(), [&](const auto &d) { return d.name == name; });
    };
    auto queued_removal = [&](const std::string &name) {
      return std::find(removals_.begin(), removals_.end(), name) != removals_.end();
    };
    std::erase_if(additions_, [&](const DeviceConfig &d) { return !wanted(d.name); });
    std::size_t added = 0, removed = 0, kept = 0;
    for (const auto &e : exports_) {
      const auto it = std::find_if(fresh.devices.begin(), fresh.devices.end(),
                                   [&](const DeviceConfig &d) { return d.name == e->name(); });
      if (it == fresh.devices.end()) {
        if (!queued_removal(e->name())) {
          removals_.push_back(e->name());
          ++removed;
        }
      } else {
        ++kept;
        if (!it->same_settings(e->config()))
          VB_LOG_WARN("SIGHUP: %s: changed settings are not applied to a running device (remove it, reload, add it "
                      "back)",
                      e->name().c_str());
      }
    }
    for (const auto &d : fresh.devices) {
      const bool exists =
          std::any_of(exports_.begin(), exports_.end(), [&](const auto &e) { return e->name() == d.name; });
      const bool queued =
          std::any_of(additions_.begin(), additions_.end(), [&](const auto &a) { return a.name == d.name; });
      // A device still being removed (an earlier reload) comes back once that is done.
      if (!queued && (!exists || queued_removal(d.name))) {
        additions_.push_back(d);
        ++added;
      }
    }
    VB_LOG_INFO("SIGHUP: %s: %zu device(s) to add, %zu to remove, %zu unchanged", fresh.path.c_str(), added, removed,
                kept);
    config_ = std::move(fresh);
    announced_ = false;
    ready_sent_ = false; // RELOADING=1 is answered by READY=1
    last_status_.clear();
    step();
  }

  // The one place that moves devices along: removals first, one at a time (each detach is a
  // synchronous kernel operation on a helper thread), then additions (each starts on its own
  // thread). When stopping and nothing is left, the loop ends.
  void step() {
    if (busy_)
      return;
    if (!removals_.empty()) {
      const std::string name = removals_.front();
      removals_.erase(removals_.begin());
      const auto it = std::find_if(exports_.begin(), exports_.end(), [&](const auto &e) { return e->name() == name; });
      if (it == exports_.end()) {
        step();
        return;
      }
      DeviceRunner &e = **it;
      busy_ = true;
      auto done = [this, target = &e] {
        busy_ = false;
        std::erase_if(exports_, [&](const auto &x) { return x.get() == target; });
        step();
      };
      if (leaving_)
        e.leave(done);
      else
        e.stop(done);
      return;
    }
    if (stopping_) {
      loop_.stop();
      return;
    }
    while (!additions_.empty()) {
      const DeviceConfig device = additions_.front();
      additions_.erase(additions_.begin());
      add(device);
    }
    announce();
  }

  // READY=1 once every device has had its first attempt: each is serving or waiting (retried in
  // the background). STATUS= says which, again whenever that changes.
  void announce() {
    if (announced_ || starting_ > 0)
      return;
    announced_ = true;
    std::size_t serving = 0;
    std::string waiting;
    for (const auto &e : exports_) {
      const auto d = e->status();
      if (d.state == metrics::DeviceState::serving)
        ++serving;
      else
        waiting += (waiting.empty() ? "" : ", ") + d.name;
    }
    std::string status = "serving " + std::to_string(serving) + " device(s)";
    if (!waiting.empty())
      status += "; waiting for " + waiting;
    if (status == last_status_)
      return;
    last_status_ = status;
    VB_LOG_INFO("%s", status.c_str());
    if (!notify_service_manager((ready_sent_ ? "" : "READY=1\n") + std::string("STATUS=") + status) &&
        !notify_failed_) {
      notify_failed_ = true;
      VB_LOG_WARN("cannot notify the service manager ($NOTIFY_SOCKET)");
    }
    ready_sent_ = true;
  }

  Config config_;
  std::string state_dir_;
  const Options &options_;
  EventLoop loop_;
  Timer retry_;
  Timer sample_;
  std::unique_ptr<control::ControlServer> control_;
  std::unique_ptr<control::MetricsHttpServer> metrics_http_;
  std::vector<metrics::DeviceStatus> last_sample_;
  std::chrono::steady_clock::time_point last_sample_at_ = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<DeviceRunner>> exports_; // each device on its own control thread
  std::vector<std::string> removals_;                  // devices to stop, in order
  std::vector<DeviceConfig> additions_;                // devices to create, in order
  int starting_ = 0;
  bool busy_ = false; // a stop or leave is in progress
  bool stopping_ = false;
  bool leaving_ = false;
  bool notify_failed_ = false;
  bool announced_ = false; // STATUS= is up to date with the devices' states
  bool ready_sent_ = false;
  std::string last_status_; // the STATUS= last sent
  int status_ = 0;
};

} // namespace

int run_daemon(const Config &config, const Options &options) {
  if (!vduse::VduseDevice::available()) {
    VB_LOG_ERROR("/dev/vduse/control is missing: this kernel has no VDUSE (modprobe vduse; needs Linux >= 5.15 "
                 "built with CONFIG_VDPA_USER)");
    return 1;
  }
  harden_process();
  return Daemon(config, options).run();
}

} // namespace vb
