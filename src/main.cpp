// vduse-bridge: serves block storage as local virtio-blk disks through VDUSE. See vduse-bridge(8).
#include "common/log.h"
#include "config/config.h"
#include "control/control_client.h"
#include "daemon/daemon.h"
#include "daemon/options.h"
#include "daemon/version.h"
#include "iscsi/iscsi_discovery.h"
#include "iscsi/iscsi_options.h"
#include "vduse-bridge/backend_module.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

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
    (void)std::fputs(vb::version_text().c_str(), stdout);
    return 0;
  }
  if (options.log_level)
    vb::set_log_level(*options.log_level);
  else if (options.verbosity > 0)
    vb::set_log_level(vb::LogLevel::debug);
  if (!options.command.empty()) {
    std::string request;
    try {
      request = vb::command_request(options);
    } catch (const std::exception &e) {
      (void)std::fprintf(stderr, "vduse-bridge: %s\n", e.what());
      return vb::control::kExitFailed;
    }
    const vb::control::CommandOutcome outcome =
        vb::control::run_control_command(options.control_socket, request, vb::command_timeout(options));
    (void)std::fputs(outcome.out.c_str(), stdout);
    (void)std::fputs(outcome.err.c_str(), stderr);
    return outcome.exit_code;
  }
  if (!options.discover.empty()) {
    try {
      std::string text;
      if (options.discover.starts_with("iscsi://")) {
        vb::IscsiOptions login;
        login.initiator_name = options.discover_initiator_name;
        login.chap_username = options.discover_chap_user;
        login.chap_password_file = options.discover_chap_secret_file;
        text = vb::discover_iscsi_text(options.discover, login);
      } else {
        text = vb::discover(options.discover);
      }
      (void)std::fputs(text.c_str(), stdout);
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
    for (auto &f : vb::preflight_host(*checked.config, options.check_host))
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
    // What --check would find on this machine: warnings, as the host may still be preparing
    // (the devices that need it wait and are retried).
    for (const auto &f : vb::preflight_config(config))
      VB_LOG_WARN("%s", f.message.c_str());
    return vb::run_daemon(config, options);
  } catch (const std::exception &e) {
    // Setup errors, already naming the file/line/key: one a line, each with the prefix.
    std::string text = e.what();
    for (std::size_t at = 0; at <= text.size();) {
      const std::size_t end = std::min(text.find('\n', at), text.size());
      (void)std::fprintf(stderr, "vduse-bridge: %s\n", text.substr(at, end - at).c_str());
      at = end + 1;
    }
    return 1;
  }
}
