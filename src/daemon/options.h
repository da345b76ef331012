// Command-line options of vduse-bridge(8).
#pragma once

#include "common/log.h"

#include <chrono>
#include <optional>
#include <string>
#include <vector>

// The configuration file read without --config: SYSCONFDIR/vduse-bridge/vduse-bridge.yaml as
// CMake installs it (/etc/... for the /usr prefix).
#ifndef VDUSE_BRIDGE_DEFAULT_CONFIG
#define VDUSE_BRIDGE_DEFAULT_CONFIG "/etc/vduse-bridge/vduse-bridge.yaml"
#endif

namespace vb {

struct Options {
  std::string config_path = VDUSE_BRIDGE_DEFAULT_CONFIG;
  bool check_only = false; // --check: validate the configuration and exit
  bool check_host = false; // --host (with --check): the host's problems are errors, not warnings
  std::string discover;    // --discover URI: list an iSCSI portal's targets and LUNs and exit
  // With --discover: log in as --initiator-name (else the host's default), with CHAP.
  std::string discover_initiator_name;
  std::string discover_chap_user;
  std::string discover_chap_secret_file;
  bool help = false;
  bool version = false;
  int verbosity = 0; // -v: debug logging
  // --log-level error|warning|info|debug; unset: info, or debug with -v.
  std::optional<LogLevel> log_level;
  // --state-dir: where each device's recovery state lives (a tmpfs: it must outlive the daemon,
  // not the machine).
  std::string state_dir = "/run/vduse-bridge";
  // --control-socket: where `vduse-bridge status|reload` reach the daemon (mode 0600).
  std::string control_socket = "/run/vduse-bridge/control.sock";
  // --metrics-listen: a loopback address for a Prometheus /metrics endpoint; empty = none.
  std::string metrics_listen;
  // `vduse-bridge list|status|metrics|reload|add|remove`: ask the running daemon and exit.
  std::string command;                   // the command word; empty: none
  std::vector<std::string> command_args; // its arguments (status NAME, add FILE, remove NAME)
  bool json = false;                     // --json (list, status)
  // --timeout: how long the command waits for the daemon's answer; unset: command_timeout().
  std::optional<std::chrono::milliseconds> timeout;
};

// Throws std::invalid_argument with a one-line message naming the bad option (exit code 2).
Options parse_options(const std::vector<std::string> &args);

// The request line for options.command, as the control socket takes it ("status disk0 --json",
// "add /etc/vduse-bridge/new.yaml"). add's FILE is made absolute (the daemon reads it, from its
// own working directory) and must be a readable regular file: throws std::runtime_error naming
// it otherwise (exit code 1).
std::string command_request(const Options &options);

// --timeout, else 90 s for the commands that wait for devices to start or stop (reload, add,
// remove) and 10 s for the rest.
std::chrono::milliseconds command_timeout(const Options &options);

const char *usage_text() noexcept;

} // namespace vb
