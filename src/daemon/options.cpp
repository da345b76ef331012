#include "daemon/options.h"

#include <stdexcept>

namespace vb {

const char *usage_text() noexcept {
  return "Usage: vduse-bridge --config FILE [--check] [--state-dir DIR] [--control-socket PATH]\n"
         "                   [--metrics-listen ADDR:PORT] [-v]\n"
         "       vduse-bridge status | metrics | reload [--control-socket PATH]\n"
         "       vduse-bridge --discover iscsi://HOST[:PORT]\n"
         "       vduse-bridge --help | --version\n"
         "\n"
         "Serves remote or in-memory block storage as local virtio-blk disks through VDUSE.\n"
         "\n"
         "  -c, --config FILE  the configuration file (see vduse-bridge.yaml(5))\n"
         "      --check        validate the configuration file and exit\n"
         "      --discover URI list the targets and LUNs of an iSCSI portal and exit\n"
         "      --state-dir DIR  recovery state of the devices (default /run/vduse-bridge)\n"
         "      --control-socket PATH  the daemon's command socket (default /run/vduse-bridge/control.sock)\n"
         "      --metrics-listen ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics (loopback only)\n"
         "  status             show each device, its backend, I/O rates and latencies (of a running daemon)\n"
         "  metrics            print the running daemon's metrics (Prometheus text)\n"
         "  reload             make the running daemon read its configuration again (as SIGHUP)\n"
         "  -v, --verbose      log debug messages\n"
         "  -h, --help         show this help and exit\n"
         "  -V, --version      show the version and exit\n"
         "\n"
         "SIGTERM or SIGINT detaches and destroys the devices, then exits. SIGUSR1 is a planned\n"
         "restart: requests in flight complete, the devices stay attached (their I/O waits) and the\n"
         "daemon exits 0; the next one started with the same configuration takes them over.\n";
}

Options parse_options(const std::vector<std::string> &args) {
  Options o;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string &a = args[i];
    auto value = [&](const std::string &name) -> std::string {
      const auto eq = a.find('=');
      if (eq != std::string::npos)
        return a.substr(eq + 1);
      if (i + 1 >= args.size())
        throw std::invalid_argument("option " + name + " needs a value");
      return args[++i];
    };
    if (a == "-c" || a == "--config" || a.rfind("--config=", 0) == 0) {
      o.config_path = value("--config");
      if (o.config_path.empty())
        throw std::invalid_argument("option --config needs a file name");
    } else if (a == "--discover" || a.rfind("--discover=", 0) == 0) {
      o.discover = value("--discover");
      if (o.discover.empty())
        throw std::invalid_argument("option --discover needs an iSCSI portal URI (iscsi://host[:port])");
    } else if (a == "--state-dir" || a.rfind("--state-dir=", 0) == 0) {
      o.state_dir = value("--state-dir");
      if (o.state_dir.empty() || o.state_dir[0] != '/')
        throw std::invalid_argument("option --state-dir needs an absolute directory name");
    } else if (a == "--control-socket" || a.rfind("--control-socket=", 0) == 0) {
      o.control_socket = value("--control-socket");
      if (o.control_socket.empty() || o.control_socket[0] != '/')
        throw std::invalid_argument("option --control-socket needs an absolute path");
    } else if (a == "--metrics-listen" || a.rfind("--metrics-listen=", 0) == 0) {
      o.metrics_listen = value("--metrics-listen");
      if (o.metrics_listen.empty())
        throw std::invalid_argument("option --metrics-listen needs an address such as 127.0.0.1:9437");
    } else if ((a == "status" || a == "metrics" || a == "reload") && o.command.empty() && i == 0) {
      o.command = a;
    } else if (a == "--check") {
      o.check_only = true;
    } else if (a == "-v" || a == "--verbose") {
      ++o.verbosity;
    } else if (a == "-h" || a == "--help") {
      o.help = true;
    } else if (a == "-V" || a == "--version") {
      o.version = true;
    } else {
      throw std::invalid_argument("unknown " + std::string(a.rfind('-', 0) == 0 ? "option" : "argument") + " '" + a +
                                  "' (see --help)");
    }
  }
  if (!o.help && !o.version && o.discover.empty() && o.command.empty() && o.config_path.empty())
    throw std::invalid_argument("missing --config FILE (see --help)");
  return o;
}

} // namespace vb
