// The command-line client: `vduse-bridge list|status|metrics|reload|add|remove`, its request
// lines, its exit codes and its timeouts, against a stand-in daemon on a real unix socket.
#include "common/log.h"
#include "control/control_client.h"
#include "daemon/options.h"
#include "daemon/version.h"
#include "iscsi/iscsi_target.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <poll.h>
#include <regex>
#include <stdexcept>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using vb::control::CommandOutcome;

namespace {

vb::Options parse(std::vector<std::string> args) { return vb::parse_options(args); }

std::string request_of(std::vector<std::string> args) { return vb::command_request(parse(std::move(args))); }

std::string usage_error(std::vector<std::string> args) {
  try {
    (void)parse(std::move(args));
  } catch (const std::invalid_argument &e) {
    return e.what();
  }
  return "(accepted)";
}

// A daemon stand-in: answers one connection on a unix socket with a fixed reply (after delay),
// and records the request line it got.
class FakeDaemon {
public:
  FakeDaemon(std::string reply, std::chrono::milliseconds delay = 0ms)
      : path_(dir_.file("control.sock")), reply_(std::move(reply)), delay_(delay) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 4) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeDaemon() {
    ::shutdown(fd_, SHUT_RDWR); // wakes accept() if no client came
    thread_.join();
    ::close(fd_);
  }
  FakeDaemon(const FakeDaemon &) = delete;
  FakeDaemon &operator=(const FakeDaemon &) = delete;

  const std::string &path() const { return path_; }
  // The request as received; read after the client returned.
  std::string request() const { return request_; }

private:
  void serve() {
    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0)
      return;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0)
        break;
      request_.append(buf, static_cast<std::size_t>(n));
      if (request_.find('\n') != std::string::npos)
        break;
    }
    std::this_thread::sleep_for(delay_);
    std::size_t done = 0;
    while (done < reply_.size()) {
      const ssize_t n = ::send(c, reply_.data() + done, reply_.size() - done, MSG_NOSIGNAL);
      if (n <= 0)
        break;
      done += static_cast<std::size_t>(n);
    }
    ::close(c);
  }

  vb::test::TempDir dir_;
  std::string path_;
  std::string reply_;
  std::chrono::milliseconds delay_;
  int fd_ = -1;
  std::string request_;
  std::thread thread_;
};

} // namespace

TEST_CASE("cli: each command becomes one request line, options anywhere") {
  CHECK(request_of({"list"}) == "list");
  CHECK(request_of({"list", "--json"}) == "list --json");
  CHECK(request_of({"status"}) == "status");
  CHECK(request_of({"status", "disk0"}) == "status disk0");
  CHECK(request_of({"--json", "status", "disk0"}) == "status disk0 --json");
  CHECK(request_of({"metrics"}) == "metrics");
  CHECK(request_of({"reload"}) == "reload");
  CHECK(request_of({"remove", "disk1"}) == "remove disk1");
  const vb::Options o = parse({"--control-socket", "/tmp/x.sock", "status", "--timeout=3s", "disk0"});
  CHECK(o.control_socket == "/tmp/x.sock");
  CHECK(o.command == "status");
  CHECK(vb::command_request(o) == "status disk0");
  CHECK(vb::command_timeout(o) == 3s);
}

TEST_CASE("cli: reload, add and remove wait 90 s by default, the others 10 s") {
  CHECK(vb::command_timeout(parse({"reload"})) == 90s);
  CHECK(vb::command_timeout(parse({"remove", "d"})) == 90s);
  CHECK(vb::command_timeout(parse({"add", "/f"})) == 90s);
  CHECK(vb::command_timeout(parse({"status"})) == 10s);
  CHECK(vb::command_timeout(parse({"list"})) == 10s);
  CHECK(vb::command_timeout(parse({"metrics"})) == 10s);
}

TEST_CASE("cli: usage errors name what is wrong") {
  CHECK(usage_error({"status", "a", "b"}) == "unexpected argument 'b' after status a (see --help)");
  CHECK(usage_error({"list", "x"}) == "unexpected argument 'x' after list (see --help)");
  CHECK(usage_error({"add"}) == "add needs a configuration FILE (see --help)");
  CHECK(usage_error({"add", ""}) == "add needs a configuration FILE (see --help)");
  CHECK(usage_error({"remove"}) == "remove needs a device NAME (see --help)");
  CHECK(usage_error({"metrics", "--json"}) == "option --json is for list and status, not metrics");
  CHECK(usage_error({"reload", "--timeout", "30"}).starts_with("option --timeout needs a duration above 0"));
  CHECK(usage_error({"reload", "--timeout", "0"}).starts_with("option --timeout needs a duration above 0"));
  CHECK(usage_error({"frobnicate"}) == "unknown argument 'frobnicate' (see --help)");
  CHECK(usage_error({"--json"}) == "option --json goes with a command such as status (see --help)");
  CHECK(usage_error({"status", "bad\tname"}) == "'bad\tname' is not a device name");
  // --metrics-listen is checked when the options are read: --check refuses it as the daemon would.
  CHECK(usage_error({"--check", "--metrics-listen", "0.0.0.0:9437"})
            .starts_with("option --metrics-listen: metrics address \"0.0.0.0:9437\": not a loopback address"));
  CHECK(usage_error({"--check", "--metrics-listen=127.0.0.1:99999"}) ==
        "option --metrics-listen: metrics address \"127.0.0.1:99999\": the port must be a number from 0 to 65535");
  CHECK(usage_error({"--metrics-listen", "localhost"}).starts_with("option --metrics-listen: metrics address"));
  CHECK(parse({"--metrics-listen", "[::1]:9437"}).metrics_listen == "[::1]:9437");
}

TEST_CASE("cli: add sends the absolute path of a readable file") {
  vb::test::TempDir dir;
  { std::ofstream(dir.file("new.yaml")) << "devices: []\n"; }
  char old_cwd[PATH_MAX];
  REQUIRE(::getcwd(old_cwd, sizeof old_cwd) != nullptr);
  REQUIRE(::chdir(dir.path().c_str()) == 0);
  std::string relative;
  std::string missing;
  try {
    relative = request_of({"add", "new.yaml"});
    (void)request_of({"add", "gone.yaml"});
  } catch (const std::runtime_error &e) {
    missing = e.what();
  }
  REQUIRE(::chdir(old_cwd) == 0);
  // TempDir may hold a symlink (TMPDIR): the path is made absolute, not resolved.
  CHECK(relative == "add " + dir.file("new.yaml"));
  CHECK(missing == "cannot add " + dir.file("gone.yaml") + ": No such file or directory");
  CHECK(request_of({"add", dir.file("new.yaml")}) == "add " + dir.file("new.yaml"));
  CHECK_THROWS_WITH_AS(request_of({"add", dir.path()}), ("cannot add " + dir.path() + ": not a regular file").c_str(),
                       std::runtime_error);
  if (::geteuid() != 0) { // root reads anything
    REQUIRE(::chmod(dir.file("new.yaml").c_str(), 0200) == 0);
    CHECK_THROWS_WITH_AS(request_of({"add", dir.file("new.yaml")}),
                         ("cannot add " + dir.file("new.yaml") + ": Permission denied").c_str(), std::runtime_error);
  }
}

TEST_CASE("cli: exit 0 and the text on ok") {
  FakeDaemon daemon("ok\ndisk0 serving\n");
  const CommandOutcome o = vb::control::run_control_command(daemon.path(), "list", 5s);
  CHECK(o.exit_code == 0);
  CHECK(o.out == "disk0 serving\n");
  CHECK(o.err.empty());
  CHECK(daemon.request() == "list\n");
}

TEST_CASE("cli: exit 3 on unhealthy, the text still on stdout") {
  FakeDaemon daemon("unhealthy\ndisk0 waiting for its backend\n");
  const CommandOutcome o = vb::control::run_control_command(daemon.path(), "status disk0", 5s);
  CHECK(o.exit_code == 3);
  CHECK(o.out == "disk0 waiting for its backend\n");
  CHECK(o.err.empty());
  CHECK(daemon.request() == "status disk0\n");
}

TEST_CASE("cli: exit 1 on error, the message on stderr") {
  FakeDaemon daemon("error\nno device named disk9\n");
  const CommandOutcome o = vb::control::run_control_command(daemon.path(), "remove disk9", 5s);
  CHECK(o.exit_code == 1);
  CHECK(o.out.empty());
  CHECK(o.err == "vduse-bridge: no device named disk9\n");
}

TEST_CASE("cli: exit 1 and a clear message when no daemon listens") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  const CommandOutcome o = vb::control::run_control_command(path, "status", 5s);
  CHECK(o.exit_code == 1);
  CHECK(o.out.empty());
  CHECK(o.err == "vduse-bridge: no daemon is listening on " + path + " (is vduse-bridge running?)\n");
}

TEST_CASE("cli: a reply that is not ok, error or unhealthy is a failure") {
  FakeDaemon daemon("maybe\nwho knows\n");
  const CommandOutcome o = vb::control::run_control_command(daemon.path(), "status", 5s);
  CHECK(o.exit_code == 1);
  CHECK(o.err == "vduse-bridge: unexpected reply from " + daemon.path() + ": \"maybe\"\n");
}

TEST_CASE("cli: a slow daemon times out, naming the wait") {
  FakeDaemon daemon("ok\nlate\n", 1500ms);
  const CommandOutcome o = vb::control::run_control_command(daemon.path(), "reload", 200ms);
  CHECK(o.exit_code == 1);
  CHECK(o.err == "vduse-bridge: no reply from vduse-bridge on " + daemon.path() + " within 200ms\n");
}

TEST_CASE("cli: a huge timeout saturates instead of overflowing the clock") {
  const auto now = std::chrono::steady_clock::now();
  CHECK(vb::control::saturating_deadline(now, std::chrono::milliseconds::max()) ==
        std::chrono::steady_clock::time_point::max());
  CHECK(vb::control::saturating_deadline(now, 5s) == now + 5s);
  CHECK(vb::control::saturating_deadline(now, 0ms) == now);
  FakeDaemon daemon("ok\nfine\n", 100ms);
  const CommandOutcome o = vb::control::run_control_command(daemon.path(), "status", std::chrono::milliseconds::max());
  CHECK(o.exit_code == 0);
  CHECK(o.out == "fine\n");
  // The longest --timeout and forever, as --timeout takes them: no overflow either.
  for (const char *t : {"1000000h", "forever"}) {
    const vb::Options opts = parse({"status", "--timeout", t});
    FakeDaemon again("ok\nfine\n");
    CHECK(vb::control::run_control_command(again.path(), "status", vb::command_timeout(opts)).exit_code == 0);
  }
  CHECK_THROWS_WITH_AS(parse({"status", "--timeout", "99999999h"}), doctest::Contains("99999999h"),
                       std::invalid_argument);
}

TEST_CASE("cli: without --config the installed configuration file is used, also by --check") {
  const std::string installed = VDUSE_BRIDGE_DEFAULT_CONFIG;
  CHECK(installed.ends_with("/etc/vduse-bridge/vduse-bridge.yaml"));
  CHECK(parse({}).config_path == installed);
  const vb::Options check = parse({"--check"});
  CHECK(check.check_only);
  CHECK(check.config_path == installed);
  CHECK(parse({"--config", "/x.yaml"}).config_path == "/x.yaml");
  CHECK(std::string(vb::usage_text()).find("default\n                     " + installed + ")") != std::string::npos);
}

TEST_CASE("cli: --version names the release, the commit and the libraries built and run with") {
  vb::test::TempDir dir;
  const std::string text = vb::version_text(dir.file("no-vduse-control"));
  CAPTURE(text);
  CHECK(std::regex_search(text, std::regex("^vduse-bridge [0-9]+\\.[0-9]+\\.[0-9]+ \\(git [0-9a-z.+-]+\\)\n")));
  CHECK(std::regex_search(text, std::regex("\nlibnbd 1\\.[0-9]+\\.[0-9]+ \\(built with 1\\.[0-9]+\\.[0-9]+\\)\n")));
  CHECK(std::regex_search(text, std::regex("\nlibevent 2\\.[0-9.]+-stable \\(built with 2\\.[0-9.]+-stable\\)\n")));
  CHECK(std::regex_search(text, std::regex("\nlibiscsi built with 1\\.[0-9]+\\.[0-9]+\n")));
  CHECK(std::regex_search(text, std::regex("\nliburing built with 2\\.[0-9]+\n")));
  CHECK(text.find("VDUSE API") == std::string::npos); // no control device there
  // Built from this git tree: a real commit, not "unknown".
  CHECK(text.find("(git unknown)") == std::string::npos);
}

TEST_CASE("log: --log-level takes the four levels, -v stays debug") {
  CHECK(parse({"--log-level", "error"}).log_level == vb::LogLevel::error);
  CHECK(parse({"--log-level=warning"}).log_level == vb::LogLevel::warning);
  CHECK(parse({"--log-level", "info"}).log_level == vb::LogLevel::info);
  CHECK(parse({"--log-level", "debug"}).log_level == vb::LogLevel::debug);
  CHECK_FALSE(parse({"-v"}).log_level.has_value());
  CHECK(parse({"-v"}).verbosity == 1);
  CHECK(usage_error({"--log-level", "loud"}) == "option --log-level needs error, warning, info or debug (not 'loud')");
}

TEST_CASE("log: stderr is the journal only when JOURNAL_STREAM names its device and inode") {
  vb::test::TempDir dir;
  const int fd = ::open(dir.file("stream").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  const std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  CHECK(vb::log_detail::is_journal_stream(mine.c_str(), fd));
  // Set by systemd for a parent whose stderr went elsewhere since (a redirect, a pipe to less).
  const std::string other = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1);
  CHECK_FALSE(vb::log_detail::is_journal_stream(other.c_str(), fd));
  CHECK_FALSE(vb::log_detail::is_journal_stream(nullptr, fd));
  CHECK_FALSE(vb::log_detail::is_journal_stream("", fd));
  CHECK_FALSE(vb::log_detail::is_journal_stream("1", fd));
  CHECK_FALSE(vb::log_detail::is_journal_stream((mine + "x").c_str(), fd));
  ::close(fd);
}

TEST_CASE("log: the journal gets <N> priorities and no time, a terminal the local time with milliseconds") {
  char buf[128];
  const timespec when{86400 * 365 + 3723, 45'678'901}; // 1971-01-01 01:02:03.045 UTC
  CHECK(vb::log_detail::format_prefix(buf, sizeof buf, vb::LogLevel::error, true, when) == 10);
  CHECK(std::string(buf) == "<3>error: ");
  vb::log_detail::format_prefix(buf, sizeof buf, vb::LogLevel::warning, true, when);
  CHECK(std::string(buf) == "<4>warning: ");
  vb::log_detail::format_prefix(buf, sizeof buf, vb::LogLevel::info, true, when);
  CHECK(std::string(buf) == "<6>");
  vb::log_detail::format_prefix(buf, sizeof buf, vb::LogLevel::debug, true, when);
  CHECK(std::string(buf) == "<7>debug: ");

  const char *old_tz = std::getenv("TZ");
  const std::string saved = old_tz ? old_tz : "";
  ::setenv("TZ", "UTC0", 1);
  ::tzset();
  vb::log_detail::format_prefix(buf, sizeof buf, vb::LogLevel::error, false, when);
  CHECK(std::string(buf) == "1971-01-01T01:02:03.045+00:00 vduse-bridge: error: ");
  ::setenv("TZ", "XST-5:30", 1); // 5h30 east of UTC
  ::tzset();
  vb::log_detail::format_prefix(buf, sizeof buf, vb::LogLevel::info, false, when);
  CHECK(std::string(buf) == "1971-01-01T06:32:03.045+05:30 vduse-bridge: ");
  // Cut to the buffer, NUL-terminated.
  CHECK(vb::log_detail::format_prefix(buf, 5, vb::LogLevel::info, false, when) == 4);
  CHECK(std::string(buf) == "1971");
  if (old_tz)
    ::setenv("TZ", saved.c_str(), 1);
  else
    ::unsetenv("TZ");
  ::tzset();
}

TEST_CASE("iscsi: the default initiator name is open-iscsi's InitiatorName= where the file has one") {
  vb::test::TempDir dir;
  const std::string file = dir.file("initiatorname.iscsi");
  const std::string fallback = vb::default_initiator_name(dir.file("missing"));
  CHECK(fallback.starts_with("iqn.2026-11.org.vduse-bridge:"));
  {
    std::ofstream(file) << "## DO NOT EDIT OR REMOVE THIS FILE!\n#InitiatorName=iqn.commented:out\n\n"
                           "  InitiatorName = iqn.1993-08.org.debian:01:abc123 \r\n";
  }
  CHECK(vb::default_initiator_name(file) == "iqn.1993-08.org.debian:01:abc123");
  { std::ofstream(file) << "# only a comment\nInitiatorAlias=box\nInitiatorName=\n"; }
  CHECK(vb::default_initiator_name(file) == fallback);
}

TEST_CASE("cli: --discover takes --initiator-name and CHAP, which need it and each other") {
  const vb::Options o = parse({"--discover", "iscsi://127.0.0.1", "--initiator-name", "iqn.2026-11.org.example:h1",
                               "--chap-user", "vbuser", "--chap-secret-file", "/etc/vb/chap"});
  CHECK(o.discover == "iscsi://127.0.0.1");
  CHECK(o.discover_initiator_name == "iqn.2026-11.org.example:h1");
  CHECK(o.discover_chap_user == "vbuser");
  CHECK(o.discover_chap_secret_file == "/etc/vb/chap");
  CHECK(usage_error({"--initiator-name", "iqn.2026-11.org.example:h1"}) ==
        "options --initiator-name, --chap-user and --chap-secret-file go with --discover");
  CHECK(usage_error({"--discover", "iscsi://h", "--chap-user", "u"}) ==
        "options --chap-user and --chap-secret-file go together");
  CHECK(usage_error({"--discover", "iscsi://h", "--initiator-name", "host1"})
            .starts_with("option --initiator-name needs an iSCSI name"));
}
