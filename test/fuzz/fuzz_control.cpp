// libFuzzer target: hostile clients of the control socket and of the loopback /metrics listener.
// The bytes are what one client sends, in two writes split where the input says, then it shuts
// down its side; the real servers (ControlServer, MetricsHttpServer over StreamServer) run on an
// event loop in this thread, on a private unix socket and a kernel-chosen loopback port. Every
// request must get exactly the reply its protocol defines (restated below from control_server.h
// and metrics_http_server.h), whatever the split, and the server must close the connection.
// The listen address parser (parse_loopback_address) gets the bytes too.
//
// Input: byte 0 flags (bit 0: the metrics listener, else the control socket; bit 1: also parse the
// rest as a listen address); byte 1 where the first write ends (a fraction of the request);
// then the request bytes.
#include "control/control_server.h"
#include "control/metrics_http_server.h"
#include "event/event_loop.h"
#include "fuzz_util.h"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <netinet/in.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using vb::fuzz::Fields;

namespace {

constexpr std::size_t kMaxRequest = 4096; // ServerLimits' default, what the daemon uses
constexpr const char *kMetricsText = "vduse_bridge_up 1\n";

struct Servers {
  Servers() {
    char tmpl[] = "/tmp/vb-fuzz-control-XXXXXX";
    if (!::mkdtemp(tmpl))
      std::abort();
    dir = tmpl;
    control = std::make_unique<vb::control::ControlServer>(loop, dir + "/control.sock");
    control->add_command("status", [this](const std::string &command, bool &) {
      last_command = command;
      return "status: " + command.substr(6);
    });
    control->add_command("reload", [this](const std::string &command, bool &ok) {
      last_command = command;
      ok = false;
      return std::string("reload refused");
    });
    control->add_command("metrics", [this](const std::string &command, bool &) -> std::string {
      last_command = command;
      throw std::runtime_error("metrics failed");
    });
    metrics = std::make_unique<vb::control::MetricsHttpServer>(loop, "127.0.0.1:0", [] { return kMetricsText; });
  }
  ~Servers() {
    control.reset();
    ::unlink((dir + "/control.sock.lock").c_str());
    ::rmdir(dir.c_str());
  }

  vb::EventLoop loop;
  std::string dir;
  std::unique_ptr<vb::control::ControlServer> control;
  std::unique_ptr<vb::control::MetricsHttpServer> metrics;
  std::string last_command;
};

Servers &servers() {
  static Servers s;
  return s;
}

// A TCP connection to the metrics listener. Thousands a second leave as many in TIME_WAIT (on
// the server's side when it closes first), so each comes from another address of 127.0.0.0/8,
// and the client's side ends with a reset; a local failure to connect is retried.
int connect_tcp(Servers &s) {
  static std::uint32_t next_source = 0;
  int err = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    const linger reset{1, 0};
    FUZZ_CHECK(::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset) == 0);
    next_source = next_source % 0xfffff0 + 1;
    sockaddr_in source{};
    source.sin_family = AF_INET;
    source.sin_addr.s_addr = htonl(0x7f000001 + next_source);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(s.metrics->port());
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<const sockaddr *>(&source), sizeof source) == 0 &&
        ::connect(fd, reinterpret_cast<const sockaddr *>(&sin), sizeof sin) == 0)
      return fd;
    err = errno;
    ::close(fd);
    s.loop.run_once(false);
  }
  std::fprintf(stderr, "connect to the metrics listener: %s\n", std::strerror(err));
  FUZZ_CHECK(!"cannot connect to the metrics listener");
  return -1;
}

int connect_to(Servers &s, bool http) {
  if (http)
    return connect_tcp(s);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  const std::string path = s.control->socket_path();
  std::memcpy(sun.sun_path, path.data(), path.size());
  FUZZ_CHECK(::connect(fd, reinterpret_cast<const sockaddr *>(&sun), sizeof sun) == 0);
  return fd;
}

void pump(Servers &s, int times) {
  for (int i = 0; i < times; ++i)
    s.loop.run_once(false);
}

void send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0)
      return; // the server answered and closed early (a request too long): read that
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Everything the server sends until it closes, running its loop meanwhile.
std::string reply_of(Servers &s, int fd) {
  std::string reply;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    s.loop.run_once(false);
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0)
      return reply;
    if (n > 0)
      reply.append(buf, static_cast<std::size_t>(n));
    else if (errno != EAGAIN && errno != EINTR)
      return reply + "<" + std::to_string(errno) + ">";
    FUZZ_CHECK(std::chrono::steady_clock::now() < deadline); // the server must answer and close
  }
}

// ---- The protocols, restated ----

std::string trim(std::string_view s) {
  const char *blanks = " \t\r\n";
  const auto b = s.find_first_not_of(blanks);
  if (b == std::string_view::npos)
    return {};
  return std::string(s.substr(b, s.find_last_not_of(blanks) - b + 1));
}

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64))
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return s.size() > 64 ? out + "..." : out;
}

constexpr const char *kCommands = "metrics, reload, status, help";

// The control socket's reply to a client that sent request, then shut down its side.
std::string control_reply(std::string_view request, std::string &command) {
  command.clear();
  const std::string_view seen = request.substr(0, kMaxRequest);
  const auto newline = seen.find('\n');
  if (newline == std::string_view::npos && seen.size() >= kMaxRequest)
    return "error\nrequest longer than 4096 bytes\n";
  if (seen.empty())
    return {}; // closed without a reply
  const std::string line = trim(seen.substr(0, newline));
  if (line.empty())
    return "error\nempty command (\"help\" lists the commands)\n";
  const std::string word = line.substr(0, line.find_first_of(" \t"));
  if (word == "status") {
    command = line;
    return "ok\nstatus: " + line.substr(6) + "\n";
  }
  if (word == "reload") {
    command = line;
    return "error\nreload refused\n";
  }
  if (word == "metrics") {
    command = line;
    return "error\nmetrics failed\n";
  }
  if (word == "help")
    return std::string("ok\ncommands: ") + kCommands + "\n";
  return "error\nunknown command \"" + printable(word) + "\" (commands: " + kCommands + ")\n";
}

std::string http(int code, const char *reason, const char *type, const std::string &body) {
  return "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

std::string http_plain(int code, const char *reason, const std::string &body) {
  return http(code, reason, "text/plain; charset=utf-8", body);
}

// The metrics listener's reply to a client that sent request, then shut down its side.
std::string metrics_reply(std::string_view request) {
  const std::string_view seen = request.substr(0, kMaxRequest);
  const bool complete = seen.find("\r\n\r\n") != std::string_view::npos || seen.find("\n\n") != std::string_view::npos;
  if (!complete) {
    if (seen.size() >= kMaxRequest)
      return http_plain(431, "Request Header Fields Too Large", "request head too long\n");
    if (seen.empty())
      return {};
    return http_plain(400, "Bad Request", "incomplete request\n");
  }
  std::string_view line = seen.substr(0, seen.find('\n'));
  if (!line.empty() && line.back() == '\r')
    line.remove_suffix(1);
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos)
    return http_plain(400, "Bad Request", "malformed request line\n");
  const std::string_view version = line.substr(sp2 + 1);
  if (version.size() != 8 || version.substr(0, 7) != "HTTP/1.")
    return http_plain(400, "Bad Request", "malformed request line\n");
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if ((method != "GET" && method != "HEAD") || target.substr(0, target.find('?')) != "/metrics")
    return http_plain(404, "Not Found", "not found; metrics are at /metrics\n");
  std::string r = http(200, "OK", "text/plain; version=0.0.4; charset=utf-8", kMetricsText);
  if (method == "HEAD")
    r.resize(r.size() - std::string_view(kMetricsText).size());
  return r;
}

void check_address(const std::string &text) {
  try {
    const vb::control::LoopbackAddress a = vb::control::parse_loopback_address(text);
    if (a.storage.ss_family == AF_INET) {
      FUZZ_CHECK(a.length == sizeof(sockaddr_in));
      const auto *sin = reinterpret_cast<const sockaddr_in *>(&a.storage);
      FUZZ_CHECK((ntohl(sin->sin_addr.s_addr) >> 24) == 127);
    } else {
      FUZZ_CHECK(a.storage.ss_family == AF_INET6);
      FUZZ_CHECK(a.length == sizeof(sockaddr_in6));
      FUZZ_CHECK(IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6 *>(&a.storage)->sin6_addr));
    }
  } catch (const std::invalid_argument &e) {
    FUZZ_CHECK(std::string(e.what()).rfind("metrics address \"", 0) == 0);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const Fields in(data, size);
  const bool http_target = in.u8(0) & 1;
  const std::string_view request(reinterpret_cast<const char *>(in.tail(2)), in.tail_size(2));
  if (in.u8(0) & 2)
    check_address(std::string(request));

  Servers &s = servers();
  s.last_command = "(none)";
  const int fd = connect_to(s, http_target);
  const std::size_t first = request.size() * in.u8(1) / 256;
  send_all(fd, request.substr(0, first));
  pump(s, 3); // accepted and read: the request arrives in (at least) two reads
  send_all(fd, request.substr(first));
  ::shutdown(fd, SHUT_WR);
  const std::string reply = reply_of(s, fd);
  ::close(fd);
  for (int i = 0; i < 1000 && (s.control->clients() > 0 || s.metrics->clients() > 0); ++i)
    s.loop.run_once(false);
  FUZZ_CHECK(s.control->clients() == 0 && s.metrics->clients() == 0); // no connection left behind

  if (http_target) {
    FUZZ_CHECK(reply == metrics_reply(request));
    return 0;
  }
  std::string command;
  FUZZ_CHECK(reply == control_reply(request, command));
  // A handler sees the trimmed line, and only the one it is registered for.
  FUZZ_CHECK(command.empty() ? s.last_command == "(none)" : s.last_command == command);
  return 0;
}
