// vduse-bridge-csi's command line.
#pragma once

#include <chrono>
#include <set>
#include <string>
#include <vector>

namespace vb::csi {

struct CsiOptions {
  std::string endpoint_path; // from --endpoint unix:///PATH
  std::string node_id;
  std::string control_socket = "/run/vduse-bridge/control.sock";
  std::string state_dir = "/run/vduse-bridge/csi";
  std::chrono::milliseconds stage_timeout = std::chrono::seconds(60);
  // The backend types a volume may name: file and memory reach the host's files and memory, so
  // they are for nodes whose PersistentVolumes are written by the node's own operator.
  std::set<std::string, std::less<>> backends = {"nbd", "iscsi"};
  bool help = false;
  bool version = false;
};

// Throws std::invalid_argument naming the option.
CsiOptions parse_csi_options(const std::vector<std::string> &args);
const char *csi_usage();

} // namespace vb::csi
