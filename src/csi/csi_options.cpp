#include "csi/csi_options.h"

#include "common/log.h"
#include "common/units.h"
#include "csi/host_mounts.h"

#include <algorithm>
#include <stdexcept>

namespace vb::csi {

const char *csi_usage() {
  return "usage: vduse-bridge-csi --endpoint unix:///PATH --nodeid NAME [--control-socket PATH]\n"
         "                        [--state-dir DIR] [--stage-timeout DURATION] [--backends LIST]\n"
         "                        [--log-level LEVEL]\n"
         "       vduse-bridge-csi --help | --version\n"
         "\n"
         "A CSI node plugin: kubelet's stage/publish calls become vduse-bridge devices (asked of the\n"
         "daemon over its control socket), filesystems and bind mounts.\n"
         "\n"
         "  --endpoint unix:///PATH   the unix socket to serve CSI on (kubelet's csi.sock)\n"
         "  --nodeid NAME             this node's name (NodeGetInfo)\n"
         "  --control-socket PATH     the daemon's control socket (default /run/vduse-bridge/control.sock)\n"
         "  --state-dir DIR           staged volumes and their secrets (default /run/vduse-bridge/csi)\n"
         "  --stage-timeout DURATION  how long NodeStageVolume waits for the device to serve (default 60s)\n"
         "  --backends LIST           the backend types volumes may name (default nbd,iscsi; file and\n"
         "                            memory give whoever writes PersistentVolumes the host's files and memory)\n"
         "  --log-level LEVEL         error, warning, info (the default) or debug\n";
}

CsiOptions parse_csi_options(const std::vector<std::string> &args) {
  CsiOptions o;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string &a = args[i];
    std::string name = a, value;
    bool has_value = false;
    if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    auto take = [&]() -> std::string {
      if (has_value)
        return value;
      if (i + 1 >= args.size())
        throw std::invalid_argument("option " + name + " needs a value");
      return args[++i];
    };
    if (name == "-h" || name == "--help") {
      o.help = true;
    } else if (name == "--version") {
      o.version = true;
    } else if (name == "--endpoint") {
      std::string v = take();
      if (v.rfind("unix://", 0) == 0)
        v = v.substr(7);
      else if (v.rfind("unix:", 0) == 0)
        v = v.substr(5);
      if (auto p = path_problem(v); !p.empty())
        throw std::invalid_argument("option --endpoint needs unix:///PATH with an absolute PATH (" + p + ")");
      if (v.size() > 107)
        throw std::invalid_argument("option --endpoint: a unix socket path holds at most 107 bytes");
      o.endpoint_path = v;
    } else if (name == "--nodeid") {
      o.node_id = take();
      if (o.node_id.empty() || o.node_id.size() > 256)
        throw std::invalid_argument("option --nodeid needs a name of 1 to 256 bytes");
    } else if (name == "--control-socket") {
      o.control_socket = take();
      if (auto p = path_problem(o.control_socket); !p.empty())
        throw std::invalid_argument("option --control-socket: " + p);
    } else if (name == "--state-dir") {
      o.state_dir = take();
      while (o.state_dir.size() > 1 && o.state_dir.back() == '/')
        o.state_dir.pop_back();
      if (auto p = path_problem(o.state_dir); !p.empty())
        throw std::invalid_argument("option --state-dir: " + p);
    } else if (name == "--stage-timeout") {
      const std::string v = take();
      auto d = parse_duration(v);
      if (!d || d.value->count() <= 0)
        throw std::invalid_argument("option --stage-timeout needs a positive duration such as 60s (" +
                                    (d ? std::string("got 0") : d.error) + ")");
      o.stage_timeout = *d.value;
    } else if (name == "--backends") {
      const std::string v = take();
      o.backends.clear();
      std::size_t at = 0;
      while (at <= v.size()) {
        const std::size_t comma = std::min(v.find(',', at), v.size());
        const std::string t = v.substr(at, comma - at);
        if (t != "nbd" && t != "iscsi" && t != "file" && t != "memory")
          throw std::invalid_argument("option --backends needs a comma-separated list of nbd, iscsi, file and "
                                      "memory (not '" +
                                      t + "')");
        o.backends.insert(t);
        at = comma + 1;
      }
    } else if (name == "--log-level") {
      const std::string v = take();
      LogLevel level;
      if (!parse_log_level(v, level))
        throw std::invalid_argument("option --log-level needs error, warning, info or debug (not '" + v + "')");
      set_log_level(level);
    } else {
      throw std::invalid_argument("unknown option '" + a + "' (vduse-bridge-csi --help lists them)");
    }
  }
  if (!o.help && !o.version) {
    if (o.endpoint_path.empty())
      throw std::invalid_argument("option --endpoint unix:///PATH is required");
    if (o.node_id.empty())
      throw std::invalid_argument("option --nodeid NAME is required");
  }
  return o;
}

} // namespace vb::csi
