// vduse-bridge: serves block storage as local virtio-blk disks through VDUSE. See vduse-bridge(8).
#include "common/log.h"
#include "config/config.h"
#include "control/control_client.h"
#include "daemon/daemon.h"
#include "daemon/options.h"
#include "vduse-bridge/backend_module.h"

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#ifndef VDUSE_BRIDGE_VERSION
#define VDUSE_BRIDGE_VERSION "unknown"
#endif

int main(int argc, char **argv) {
  vb::Options options;
  try {
    options = vb::parse_options(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception &e) {
    (void)std::fprintf(stderr, "vduse-bridge: %s\n", e.what());
    return 2;
  }
  if (options.help) {
    (void)std::fputs(vb::usage_text(), stdout);
    return 0;
  }
  if (options.version) {
    std::printf("vduse-bridge %s\n", VDUSE_BRIDGE_VERSION);
    return 0;
  }
  if (options.verbosity > 0)
    vb::set_log_level(vb::LogLevel::debug);
  if (!options.command.empty()) {
    try {
      (void)std::fputs(vb::control::control_request(options.control_socket, options.command).c_str(), stdout);
      return 0;
    } catch (const std::exception &e) {
      (void)std::fprintf(stderr, "vduse-bridge: %s\n", e.what());
      return 1;
    }
  }
  if (!options.discover.empty()) {
    try {
      (void)std::fputs(vb::discover(options.discover).c_str(), stdout);
      return 0;
    } catch (const std::exception &e) {
      (void)std::fprintf(stderr, "vduse-bridge: %s\n", e.what());
      return 1;
    }
  }
  if (options.check_only) {
    // Every problem of the file (one a line, in file order), then what the devices need from
    // this machine and the host's modules (warnings: the host may be prepared later).
    const vb::ConfigCheck checked = vb::check_config(options.config_path);
    for (const auto &e : checked.errors)
      (void)std::fprintf(stderr, "vduse-bridge: %s\n", e.what());
    if (!checked.config)
      return 1;
    std::vector<vb::PreflightFinding> findings = vb::preflight_config(*checked.config);
    for (auto &f : vb::preflight_host(*checked.config, false))
      findings.push_back(std::move(f));
    bool failed = false;
    for (const auto &f : findings) {
      const bool error = f.severity == vb::PreflightFinding::Severity::error;
      failed = failed || error;
      (void)std::fprintf(stderr, "vduse-bridge: %s%s\n", error ? "" : "warning: ", f.message.c_str());
    }
    if (failed)
      return 1;
    std::printf("%s: OK, %zu device(s)\n", checked.config->path.c_str(), checked.config->devices.size());
    return 0;
  }
  try {
    const vb::Config config = vb::load_config(options.config_path);
    return vb::run_daemon(config, options);
  } catch (const std::exception &e) {
    // Setup errors: one line, already naming the file/line/key or the device.
    (void)std::fprintf(stderr, "vduse-bridge: %s\n", e.what());
    return 1;
  }
}
