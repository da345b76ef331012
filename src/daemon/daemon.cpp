#include "daemon/daemon.h"

#include "backend_factory.h"
#include "common/errors.h"
#include "common/log.h"
#include "event/event_loop.h"
#include "export/block_export.h"
#include "vduse/vduse_device.h"

#include <cerrno>
#include <csignal>
#include <memory>
#include <sys/mman.h>
#include <sys/prctl.h>
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
  Daemon(const Config &config, std::string state_dir) : config_(config), state_dir_(std::move(state_dir)) {}

  int run() {
    SignalWatch term(loop_, SIGTERM, [this] { shutdown("SIGTERM"); });
    SignalWatch intr(loop_, SIGINT, [this] { shutdown("SIGINT"); });
    SignalWatch usr1(loop_, SIGUSR1, [this] { leave_all(); });
    loop_.post([this] { start_all(); });
    loop_.run();
    exports_.clear();
    return status_;
  }

private:
  void start_all() {
    for (const auto &device : config_.devices) {
      bool started = false; // its on_ready is pending: counted in starting_
      try {
        auto e = std::make_unique<BlockExport>(loop_, device, make_backend(device), state_dir_);
        BlockExport *raw = e.get();
        exports_.push_back(std::move(e));
        ++starting_;
        started = true;
        raw->start([this, raw](const std::string &error) {
          --starting_;
          if (!error.empty()) {
            VB_LOG_ERROR("%s: %s", raw->name().c_str(), error.c_str());
            fail();
          } else if (starting_ == 0 && !stopping_) {
            VB_LOG_INFO("serving %zu device(s)", exports_.size());
          }
        });
      } catch (const std::exception &ex) {
        if (started)
          --starting_; // start() threw: its on_ready never runs
        VB_LOG_ERROR("%s: %s", device.name.c_str(), ex.what());
        fail();
        return;
      }
    }
  }

  void fail() {
    status_ = 1;
    shutdown(nullptr);
  }

  // Planned restart: every device stays attached for the next daemon.
  void leave_all() {
    if (stopping_)
      return;
    VB_LOG_INFO("SIGUSR1: leaving %zu device(s) attached for the next daemon", exports_.size());
    leaving_ = true;
    stopping_ = true;
    stop_next();
  }

  void shutdown(const char *why) {
    if (why)
      VB_LOG_INFO("%s: detaching and destroying %zu device(s)", why, exports_.size());
    if (stopping_)
      return;
    stopping_ = true;
    stop_next();
  }

  // One device at a time: each detach is a synchronous kernel operation on a helper thread.
  void stop_next() {
    if (starting_ > 0) {
      // An attach is still in progress; its completion will come back here.
      loop_.post([this] { stop_next(); });
      return;
    }
    if (next_stop_ >= exports_.size()) {
      loop_.stop();
      return;
    }
    BlockExport &e = *exports_[next_stop_++];
    // A device this daemon took over from a predecessor is left attached when starting failed:
    // the disks that were fine must not vanish because another device's configuration is wrong.
    if (leaving_ || (status_ != 0 && e.reattached()))
      e.leave([this] { stop_next(); });
    else
      e.stop([this] { stop_next(); });
  }

  const Config &config_;
  std::string state_dir_;
  EventLoop loop_;
  std::vector<std::unique_ptr<BlockExport>> exports_;
  std::size_t next_stop_ = 0;
  int starting_ = 0;
  bool stopping_ = false;
  bool leaving_ = false;
  int status_ = 0;
};

} // namespace

int run_daemon(const Config &config, const std::string &state_dir) {
  if (!vduse::VduseDevice::available()) {
    VB_LOG_ERROR("/dev/vduse/control is missing: this kernel has no VDUSE (modprobe vduse; needs Linux >= 5.15 "
                 "built with CONFIG_VDPA_USER)");
    return 1;
  }
  harden_process();
  return Daemon(config, state_dir).run();
}

} // namespace vb
