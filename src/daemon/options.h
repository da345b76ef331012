// Command-line options of vduse-bridge(8).
#pragma once

#include <string>
#include <vector>

namespace vb {

struct Options {
  std::string config_path;
  bool check_only = false; // --check: validate the configuration and exit
  std::string discover;    // --discover URI: list an iSCSI portal's targets and LUNs and exit
  bool help = false;
  bool version = false;
  int verbosity = 0; // -v: debug logging
  // --state-dir: where each device's recovery state lives (a tmpfs: it must outlive the daemon,
  // not the machine).
  std::string state_dir = "/run/vduse-bridge";
  // --control-socket: where `vduse-bridge status|reload` reach the daemon (mode 0600).
  std::string control_socket = "/run/vduse-bridge/control.sock";
  // --metrics-listen: a loopback address for a Prometheus /metrics endpoint; empty = none.
  std::string metrics_listen;
  // `vduse-bridge status` / `reload` / `metrics`: ask the running daemon and exit.
  std::string command;
};

// Throws std::invalid_argument with a one-line message naming the bad option.
Options parse_options(const std::vector<std::string> &args);

const char *usage_text() noexcept;

} // namespace vb
