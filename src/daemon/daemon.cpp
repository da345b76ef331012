#include "daemon/daemon.h"

#include "backend_factory.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/small_file.h"
#include "common/unique_fd.h"
#include "control/control_server.h"
#include "control/metrics_http_server.h"
#include "daemon/options.h"
#include "daemon/sd_notify.h"
#include "daemon/version.h"
#include "event/event_loop.h"
#include "export/device_runner.h"
#include "metrics/prometheus.h"
#include "metrics/status_text.h"
#include "vduse/vduse_device.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
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
      control_->add_async_command("status",
                                  [this](const std::string &line, const Reply &reply) { status(line, reply); });
      control_->add_async_command("list", [this](const std::string &line, const Reply &reply) { list(line, reply); });
      control_->add_command("metrics", [this](const std::string &, bool &) { return prometheus(); });
      control_->add_async_command("reload", [this](const std::string &, const Reply &reply) { reload(reply); });
      control_->add_async_command("add",
                                  [this](const std::string &line, const Reply &reply) { add_file(line, reply); });
      control_->add_async_command("remove",
                                  [this](const std::string &line, const Reply &reply) { remove_device(line, reply); });
      if (!options_.metrics_listen.empty())
        metrics_http_ = std::make_unique<control::MetricsHttpServer>(loop_, options_.metrics_listen,
                                                                     [this] { return prometheus(); });
    } catch (const std::exception &e) {
      VB_LOG_ERROR("%s", e.what());
      return 1;
    }
    sample_.arm_periodic(std::chrono::seconds(1));
    SignalWatch term(loop_, SIGTERM, [this] { shutdown("SIGTERM", false); });
    SignalWatch intr(loop_, SIGINT, [this] { shutdown("SIGINT", false); });
    SignalWatch usr1(loop_, SIGUSR1, [this] { shutdown("SIGUSR1", true); });
    SignalWatch hup(loop_, SIGHUP, [this] { reload(nullptr); });
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

  using Reply = control::ControlServer::Reply;
  using Status = control::ControlServer::Status;

  std::string prometheus() const {
    return metrics::format_prometheus(statuses(), metrics::BuildInfo{release_version(), git_commit()});
  }

  // "status [NAME] [--json]", "list [--json]": the words after the command.
  struct Query {
    std::string name;
    bool json = false;
  };
  static Query parse_query(const std::string &line, bool takes_name) {
    std::istringstream in(line);
    std::string word;
    in >> word; // the command
    Query q;
    while (in >> word) {
      if (word == "--json")
        q.json = true;
      else if (takes_name && q.name.empty() && word[0] != '-')
        q.name = word;
      else
        throw std::invalid_argument("unexpected argument '" + word.substr(0, 64) + "'");
    }
    return q;
  }
  static Status health_of(const std::vector<metrics::DeviceStatus> &devices) {
    const bool all = std::all_of(devices.begin(), devices.end(), [](const auto &d) { return d.healthy(); });
    return all ? Status::ok : Status::unhealthy;
  }

  void status(const std::string &line, const Reply &reply) {
    const Query q = parse_query(line, true);
    auto now = statuses();
    metrics::fill_rates(now, last_sample_,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_sample_at_).count());
    if (!q.name.empty()) {
      std::erase_if(now, [&](const auto &d) { return d.name != q.name; });
      if (now.empty()) {
        reply(Status::error, "no device named '" + q.name + "' (vduse-bridge list shows them)");
        return;
      }
    }
    const auto t = std::chrono::system_clock::now();
    reply(health_of(now), q.json ? metrics::format_status_json(now, t) : metrics::format_status_text(now, t));
  }

  void list(const std::string &line, const Reply &reply) {
    const Query q = parse_query(line, false);
    const auto now = statuses();
    reply(health_of(now), metrics::format_device_list(now, q.json));
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
      // Until its first report (or its removal) the device counts as not started for READY=1.
      const unsigned id = ++last_id_;
      ids_[raw] = id;
      unreported_.insert(id);
      raw->start([this, id](metrics::DeviceState, const std::string &) {
        unreported_.erase(id);
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
    for (auto &w : waiters_)
      w.reply(Status::error, "the daemon is stopping");
    waiters_.clear();
    stopping_ = true;
    leaving_ = leave;
    removals_.clear();
    for (const auto &e : exports_)
      removals_.push_back(e->name());
    step();
  }

  // SIGHUP, or `reload` (reply set: answered once every device added has started or is
  // waiting and every device removed is gone): read the file and its drop-ins again. Devices
  // added are created, devices removed are drained and destroyed, devices whose settings are
  // unchanged are not touched at all. A file that does not parse changes nothing.
  void reload(const Reply &reply) {
    if (stopping_) {
      if (reply)
        reply(Status::error, "the daemon is stopping");
      return;
    }
    Config fresh;
    try {
      fresh = load_config(config_.path);
    } catch (const std::exception &e) {
      VB_LOG_ERROR("reload: %s; nothing changed", e.what());
      if (reply)
        reply(Status::error, std::string(e.what()) + "\nnothing changed");
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
    Waiter w;
    w.reply = reply;
    std::erase_if(additions_, [&](const DeviceConfig &d) { return !wanted(d.name); });
    std::size_t kept = 0;
    for (const auto &e : exports_) {
      const auto it = std::find_if(fresh.devices.begin(), fresh.devices.end(),
                                   [&](const DeviceConfig &d) { return d.name == e->name(); });
      if (it == fresh.devices.end()) {
        if (!queued_removal(e->name())) {
          removals_.push_back(e->name());
          w.removed.emplace_back(e->name(), e.get());
        }
      } else {
        ++kept;
        if (!it->same_settings(e->config())) {
          w.problems.push_back(e->name() + ": changed settings are not applied to a running device (remove it, " +
                               "reload, add it back)");
          VB_LOG_WARN("reload: %s", w.problems.back().c_str());
        }
      }
    }
    for (const auto &d : fresh.devices) {
      const bool exists = runner(d.name) != nullptr;
      const bool queued =
          std::any_of(additions_.begin(), additions_.end(), [&](const auto &a) { return a.name == d.name; });
      // A device still being removed (an earlier reload) comes back once that is done.
      if (!queued && (!exists || queued_removal(d.name))) {
        additions_.push_back(d);
        w.added.push_back(d.name);
      }
    }
    w.summary = fresh.path + ": " + std::to_string(w.added.size()) + " device(s) to add, " +
                std::to_string(w.removed.size()) + " to remove, " + std::to_string(kept) + " unchanged";
    VB_LOG_INFO("reload: %s", w.summary.c_str());
    config_ = std::move(fresh);
    announced_ = false;
    ready_sent_ = false; // RELOADING=1 is answered by READY=1
    last_status_.clear();
    if (w.reply)
      waiters_.push_back(std::move(w));
    step();
  }

  // A `reload`, `add` or `remove` waiting for its devices.
  struct Waiter {
    std::vector<std::string> added, problems;
    std::vector<std::pair<std::string, const DeviceRunner *>> removed; // by runner: a name may come back
    std::string summary;
    Reply reply;
  };

  DeviceRunner *runner(const std::string &name) const {
    const auto it = std::find_if(exports_.begin(), exports_.end(), [&](const auto &e) { return e->name() == name; });
    return it == exports_.end() ? nullptr : it->get();
  }

  // Answers the waiters whose devices have all settled: started (serving or waiting for their
  // backend) or gone.
  void answer_waiters() {
    auto queued = [&](const std::string &name) {
      return std::any_of(additions_.begin(), additions_.end(), [&](const auto &a) { return a.name == name; }) ||
             std::find(removals_.begin(), removals_.end(), name) != removals_.end();
    };
    std::erase_if(waiters_, [&](const Waiter &w) {
      std::string text = w.summary + "\n";
      bool waiting = false;
      for (const auto &name : w.added) {
        if (queued(name))
          return false;
        const DeviceRunner *r = runner(name);
        if (!r) {
          text += name + ": removed again meanwhile\n";
          continue;
        }
        const auto d = r->status(); // once: it snapshots every queue
        if (d.state == metrics::DeviceState::starting)
          return false;
        waiting = waiting || d.state != metrics::DeviceState::serving;
        text += name + ": " + metrics::to_string(d.state) + (d.last_error.empty() ? "" : ": " + d.last_error) + "\n";
      }
      for (const auto &removal : w.removed) {
        const DeviceRunner *gone = removal.second;
        if (std::any_of(exports_.begin(), exports_.end(), [&](const auto &e) { return e.get() == gone; }))
          return false;
        text += removal.first + ": removed\n";
      }
      for (const auto &p : w.problems)
        text += p + "\n";
      w.reply(!w.problems.empty() ? Status::error : waiting ? Status::unhealthy : Status::ok, text);
      return true;
    });
  }

  // `add FILE`: FILE holds one device, which is written to the drop-in directory as NAME.yaml
  // and started as by reload. It survives restarts; `remove NAME` undoes it.
  void add_file(const std::string &line, const Reply &reply) {
    const auto space = line.find(' ');
    const std::string path = space == std::string::npos ? std::string() : line.substr(space + 1);
    if (stopping_) {
      reply(Status::error, "the daemon is stopping");
      return;
    }
    if (path.empty() || path[0] != '/') {
      reply(Status::error, "add needs an absolute file name");
      return;
    }
    // Read once: what is checked is what is written.
    std::string text;
    {
      SmallFile f = read_small_file(path, 1 << 20);
      if (f.error != 0 || f.too_large(1 << 20)) {
        reply(Status::error, f.error != 0 ? f.problem() : path + ": more than 1 MiB");
        return;
      }
      text = std::move(f.text);
    }
    ConfigCheck checked = check_config_text(text, path);
    if (!checked.config) {
      std::string errors;
      for (const auto &e : checked.errors)
        errors += std::string(e.what()) + "\n";
      reply(Status::error, errors + "nothing added");
      return;
    }
    if (checked.config->devices.size() != 1) {
      reply(Status::error,
            path + ": expected exactly one device to add, got " + std::to_string(checked.config->devices.size()));
      return;
    }
    const DeviceConfig &d = checked.config->devices.front();
    const auto twin = std::find_if(config_.devices.begin(), config_.devices.end(),
                                   [&](const DeviceConfig &o) { return o.name == d.name; });
    if (twin != config_.devices.end()) {
      reply(Status::error,
            "a device named '" + d.name + "' exists already (" + twin->file + ":" + std::to_string(twin->line) + ")");
      return;
    }
    const std::string dir = dropin_dir(config_.path);
    const std::string target = dir + "/" + d.name + ".yaml";
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      reply(Status::error, errno_message("mkdir " + dir, errno));
      return;
    }
    // Whole or not at all: written beside it, then renamed over nothing (link fails if it exists).
    const std::string temp = dir + "/." + d.name + ".yaml.tmp";
    {
      UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
      if (fd.get() < 0 || ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
          ::fsync(fd.get()) != 0) {
        reply(Status::error, errno_message("write " + temp, errno));
        ::unlink(temp.c_str());
        return;
      }
    }
    if (::link(temp.c_str(), target.c_str()) != 0) {
      const int err = errno;
      ::unlink(temp.c_str());
      reply(Status::error, err == EEXIST
                               ? target + " exists already (remove it, or `vduse-bridge remove " + d.name + "`)"
                               : errno_message("link " + target, err));
      return;
    }
    ::unlink(temp.c_str());
    // The whole configuration must still load with it (another drop-in may define the name, or be
    // broken): else it goes again, and nothing changed.
    if (ConfigCheck all = check_config(config_.path); !all.config) {
      ::unlink(target.c_str());
      std::string errors;
      for (const auto &e : all.errors)
        errors += std::string(e.what()) + "\n";
      reply(Status::error, errors + target + " not added: the configuration would not load with it");
      return;
    }
    VB_LOG_INFO("add: %s written from %s", target.c_str(), path.c_str());
    reload(reply);
  }

  // `remove NAME`: a device added with `add` (a drop-in file) is removed for good.
  void remove_device(const std::string &line, const Reply &reply) {
    const Query q = parse_query(line, true);
    if (q.name.empty()) {
      reply(Status::error, "remove needs a device name");
      return;
    }
    const auto it = std::find_if(config_.devices.begin(), config_.devices.end(),
                                 [&](const DeviceConfig &o) { return o.name == q.name; });
    if (it == config_.devices.end()) {
      reply(Status::error, "no device named '" + q.name + "' (vduse-bridge list shows them)");
      return;
    }
    const auto in_file = std::count_if(config_.devices.begin(), config_.devices.end(),
                                       [&](const DeviceConfig &o) { return o.file == it->file; });
    if (it->file == config_.path || in_file != 1) {
      reply(Status::error, q.name + " is defined in " + it->file + ":" + std::to_string(it->line) +
                               (in_file != 1 ? " with other devices" : "") +
                               ": remove it there and run vduse-bridge reload");
      return;
    }
    if (::unlink(it->file.c_str()) != 0) {
      reply(Status::error, errno_message("unlink " + it->file, errno));
      return;
    }
    VB_LOG_INFO("remove: %s deleted", it->file.c_str());
    reload(reply);
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
      DeviceRunner *found = runner(name);
      if (!found) {
        step();
        return;
      }
      DeviceRunner &e = *found;
      busy_ = true;
      auto done = [this, target = &e] {
        busy_ = false;
        if (const auto id = ids_.find(target); id != ids_.end()) {
          unreported_.erase(id->second);
          ids_.erase(id);
        }
        std::erase_if(exports_, [&](const auto &x) { return x.get() == target; });
        announced_ = false;
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
    answer_waiters();
  }

  // READY=1 once every device has had its first attempt: each is serving or waiting (retried in
  // the background). STATUS= says which, again whenever that changes.
  void announce() {
    if (announced_ || !unreported_.empty())
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
  std::vector<Waiter> waiters_;
  std::map<const DeviceRunner *, unsigned> ids_; // each runner's id, for unreported_
  std::set<unsigned> unreported_;                // runners whose first attempt has not ended yet
  unsigned last_id_ = 0;
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
