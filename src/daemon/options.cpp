#include "daemon/options.h"

#include "common/errors.h"
#include "common/units.h"
#include "control/metrics_http_server.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <stdexcept>
#include <string_view>
#include <sys/stat.h>
#include <unistd.h>

namespace vb {
namespace {

struct CommandSpec {
  std::string_view name;
  std::size_t min_args;
  std::size_t max_args;
  bool json;             // takes --json
  std::string_view what; // the argument, for messages
};

constexpr std::array<CommandSpec, 6> kCommands{{
    {"list", 0, 0, true, ""},
    {"status", 0, 1, true, "a device NAME"},
    {"metrics", 0, 0, false, ""},
    {"reload", 0, 0, false, ""},
    {"add", 1, 1, false, "a configuration FILE"},
    {"remove", 1, 1, false, "a device NAME"},
}};

const CommandSpec *find_command(std::string_view word) {
  const auto it =
      std::find_if(kCommands.begin(), kCommands.end(), [&](const CommandSpec &c) { return c.name == word; });
  return it == kCommands.end() ? nullptr : &*it;
}

// One word of a request line: no blanks or control characters (a device name never has them).
bool plain_word(std::string_view s) {
  return !s.empty() &&
         std::none_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == '\x7f'; });
}

} // namespace

const char *usage_text() noexcept {
  return "Usage: vduse-bridge [--config FILE] [--check] [--state-dir DIR] [--control-socket PATH]\n"
         "                   [--metrics-listen ADDR:PORT] [--log-level LEVEL] [-v]\n"
         "       vduse-bridge COMMAND [ARGS] [--control-socket PATH] [--timeout DURATION]\n"
         "       vduse-bridge --discover iscsi://HOST[:PORT] [--initiator-name IQN]\n"
         "                   [--chap-user NAME --chap-secret-file FILE]\n"
         "       vduse-bridge --help | --version\n"
         "\n"
         "Serves remote or in-memory block storage as local virtio-blk disks through VDUSE.\n"
         "\n"
         "  -c, --config FILE  the configuration file (see vduse-bridge.yaml(5); default\n"
         "                     " VDUSE_BRIDGE_DEFAULT_CONFIG ")\n"
         "      --check        validate the configuration file (and what it names: secret files,\n"
         "                     sockets' directories) and exit\n"
         "      --host         with --check: a host without VDUSE or its modules is an error, not a warning\n"
         "      --discover URI list the targets and LUNs of an iSCSI portal and exit\n"
         "      --initiator-name IQN  log in as IQN (default: InitiatorName= of\n"
         "                     /etc/iscsi/initiatorname.iscsi, else one from the host name)\n"
         "      --chap-user NAME --chap-secret-file FILE  log in with CHAP; FILE holds the secret\n"
         "                     on one line and must not be readable by others\n"
         "      --state-dir DIR  recovery state of the devices (default /run/vduse-bridge)\n"
         "      --control-socket PATH  the daemon's command socket (default /run/vduse-bridge/control.sock)\n"
         "      --metrics-listen ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics (loopback only)\n"
         "      --timeout DURATION  how long a COMMAND waits for the daemon (e.g. 30s, or forever; default 90s for\n"
         "                     reload, add and remove, 10s for the others)\n"
         "\n"
         "Commands (to the running daemon, through its control socket):\n"
         "  list [--json]      one line per device: its name, state and backend\n"
         "  status [NAME] [--json]  each device (or NAME), its backend, I/O rates and latencies\n"
         "  metrics            the daemon's metrics (Prometheus text)\n"
         "  reload             read the configuration again (as SIGHUP) and wait for the result\n"
         "  add FILE           start the devices of the configuration file FILE\n"
         "  remove NAME        stop and remove the device NAME\n"
         "Exit status of a command: 0 done; 1 the daemon answered an error, or is not running or\n"
         "not reachable; 2 usage error; 3 done, but a device is not healthy (waiting for its\n"
         "backend, reconnecting); its status is still printed.\n"
         "\n"
         "      --log-level LEVEL  log error, warning, info (the default) or debug messages and above\n"
         "  -v, --verbose      log debug messages (as --log-level debug)\n"
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
    } else if (a == "--initiator-name" || a.rfind("--initiator-name=", 0) == 0) {
      o.discover_initiator_name = value("--initiator-name");
      const std::string &n = o.discover_initiator_name;
      if (!(n.starts_with("iqn.") || n.starts_with("eui.") || n.starts_with("naa.")) || n.size() < 5 || !plain_word(n))
        throw std::invalid_argument("option --initiator-name needs an iSCSI name starting with iqn., eui. or naa. "
                                    "such as iqn.2026-11.org.example:host1");
    } else if (a == "--chap-user" || a.rfind("--chap-user=", 0) == 0) {
      o.discover_chap_user = value("--chap-user");
      if (!plain_word(o.discover_chap_user))
        throw std::invalid_argument("option --chap-user needs a user name without blanks");
    } else if (a == "--chap-secret-file" || a.rfind("--chap-secret-file=", 0) == 0) {
      o.discover_chap_secret_file = value("--chap-secret-file");
      if (o.discover_chap_secret_file.empty())
        throw std::invalid_argument("option --chap-secret-file needs a file name");
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
      try { // checked here, so that --check and the daemon refuse it alike, before anything starts
        (void)control::parse_loopback_address(o.metrics_listen);
      } catch (const std::invalid_argument &e) {
        throw std::invalid_argument(std::string("option --metrics-listen: ") + e.what());
      }
    } else if (a == "--timeout" || a.rfind("--timeout=", 0) == 0) {
      const std::string text = value("--timeout");
      if (text == "forever") {
        o.timeout = forever_duration;
      } else {
        const auto d = parse_duration(text);
        if (!d || d.value->count() <= 0)
          throw std::invalid_argument("option --timeout needs a duration above 0 such as 30s or 2m, or forever (not '" +
                                      text + "')");
        o.timeout = *d.value;
      }
    } else if (a == "--log-level" || a.rfind("--log-level=", 0) == 0) {
      const std::string text = value("--log-level");
      LogLevel level{};
      if (!parse_log_level(text, level))
        throw std::invalid_argument("option --log-level needs error, warning, info or debug (not '" + text + "')");
      o.log_level = level;
    } else if (a == "--json") {
      o.json = true;
    } else if (a.rfind('-', 0) != 0 && o.command.empty() && find_command(a)) {
      o.command = a;
    } else if (a.rfind('-', 0) != 0 && !o.command.empty()) {
      o.command_args.push_back(a);
    } else if (a == "--check") {
      o.check_only = true;
    } else if (a == "--host") {
      o.check_host = true;
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
  const bool login_options =
      !o.discover_initiator_name.empty() || !o.discover_chap_user.empty() || !o.discover_chap_secret_file.empty();
  if (login_options && o.discover.empty())
    throw std::invalid_argument("options --initiator-name, --chap-user and --chap-secret-file go with --discover");
  if (o.discover_chap_user.empty() != o.discover_chap_secret_file.empty())
    throw std::invalid_argument("options --chap-user and --chap-secret-file go together");
  if (!o.command.empty()) {
    const CommandSpec &c = *find_command(o.command);
    if (o.command_args.size() > c.max_args)
      throw std::invalid_argument("unexpected argument '" + o.command_args[c.max_args] + "' after " +
                                  (c.max_args ? o.command + " " + o.command_args[0] : o.command) + " (see --help)");
    if (o.command_args.size() < c.min_args)
      throw std::invalid_argument(o.command + " needs " + std::string(c.what) + " (see --help)");
    if (o.json && !c.json)
      throw std::invalid_argument("option --json is for list and status, not " + o.command);
    if (o.command == "add" && o.command_args[0].empty())
      throw std::invalid_argument("add needs a configuration FILE (see --help)");
    if (o.command != "add" && !o.command_args.empty() && !plain_word(o.command_args[0]))
      throw std::invalid_argument("'" + o.command_args[0] + "' is not a device name");
  }
  if (o.check_host && !o.check_only)
    throw std::invalid_argument("option --host goes with --check (see --help)");
  if (!o.command.empty()) {
  } else if (o.json || o.timeout) {
    throw std::invalid_argument(std::string("option ") + (o.json ? "--json" : "--timeout") +
                                " goes with a command such as status (see --help)");
  }
  return o;
}

std::string command_request(const Options &o) {
  std::string line = o.command;
  if (o.command == "add") {
    std::string path = o.command_args.at(0);
    if (path.front() != '/') {
      std::string cwd(4096, '\0');
      if (::getcwd(cwd.data(), cwd.size()) == nullptr)
        throw std::runtime_error(errno_message("cannot make " + path + " absolute: getcwd", errno));
      cwd.resize(cwd.find('\0'));
      path = (cwd == "/" ? "" : cwd) + "/" + path;
    }
    if (std::any_of(path.begin(), path.end(), [](char c) { return static_cast<unsigned char>(c) < ' '; }) ||
        path.back() == ' ' || path.back() == '\t')
      throw std::runtime_error("the file name '" + path +
                               "' holds a control character or ends in a blank: rename the file");
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      throw std::runtime_error(errno_message("cannot add " + path, errno));
    if (!S_ISREG(st.st_mode))
      throw std::runtime_error("cannot add " + path + ": not a regular file");
    if (::access(path.c_str(), R_OK) != 0)
      throw std::runtime_error(errno_message("cannot add " + path, errno));
    line += " " + path;
  } else {
    for (const std::string &arg : o.command_args)
      line += " " + arg;
  }
  if (o.json)
    line += " --json";
  return line;
}

std::chrono::milliseconds command_timeout(const Options &o) {
  if (o.timeout)
    return *o.timeout;
  if (o.command == "reload" || o.command == "add" || o.command == "remove")
    return std::chrono::seconds(90);
  return std::chrono::seconds(10);
}

} // namespace vb
