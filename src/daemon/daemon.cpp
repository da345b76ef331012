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
        if (!add(device, true))
          return;
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

  // Creates and starts one device. At start-up a failure fails the daemon; on reload it only
  // drops that device. Returns false when start-up failed.
  bool add(const DeviceConfig &device, bool at_startup) {
    bool started = false;            // its on_ready is pending: counted in starting_
    DeviceRunner *created = nullptr; // this call's export, the only one a failure may drop
    try {
      auto e = std::make_unique<DeviceRunner>(loop_, device, make_backend(device), state_dir_);
      DeviceRunner *raw = e.get();
      created = raw;
      exports_.push_back(std::move(e));
      ++starting_;
      started = true;
      raw->start([this, raw, at_startup](const std::string &error) {
        --starting_;
        if (!error.empty()) {
          VB_LOG_ERROR("%s: %s", raw->name().c_str(), error.c_str());
          if (at_startup)
            fail();
          else
            removals_.push_back(raw->name());
        }
        step();
      });
      return true;
    } catch (const std::exception &ex) {
      if (started)
        --starting_; // start() threw: its on_ready never runs
      VB_LOG_ERROR("%s: %s", device.name.c_str(), ex.what());
      if (at_startup) {
        fail();
        return false;
      }
      // This call's export (if it got that far) never got a device: drop it quietly.
      std::erase_if(exports_, [&](const auto &e) { return e.get() == created; });
      return true;
    }
  }

  void fail() {
    status_ = 1;
    shutdown(nullptr, false);
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
    step();
  }

  // The one place that moves devices along, one at a time (each detach/attach is a synchronous
  // kernel operation on a helper thread): removals first, then additions; when stopping and
  // nothing is left, the loop ends.
  void step() {
    if (busy_)
      return;
    if (starting_ > 0) {
      retry_.arm(std::chrono::milliseconds(10)); // an attach is in progress
      return;
    }
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
      // A device this daemon took over from a predecessor is left attached when starting
      // failed: the disks that were fine must not vanish because another one's configuration
      // is wrong.
      if (leaving_ || (stopping_ && status_ != 0 && e.reattached()))
        e.leave(done);
      else
        e.stop(done);
      return;
    }
    if (stopping_) {
      loop_.stop();
      return;
    }
    if (!additions_.empty()) {
      const DeviceConfig device = additions_.front();
      additions_.erase(additions_.begin());
      add(device, false);
      step();
      return;
    }
    if (announced_)
      return;
    announced_ = true;
    const std::string status = "STATUS=serving " + std::to_string(exports_.size()) + " device(s)";
    VB_LOG_INFO("serving %zu device(s)", exports_.size());
    if (!notify_service_manager("READY=1\n" + status) && !notify_failed_) {
      notify_failed_ = true;
      VB_LOG_WARN("cannot notify the service manager ($NOTIFY_SOCKET)");
    }
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
  bool announced_ = false; // "serving" said for the current set of devices
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
