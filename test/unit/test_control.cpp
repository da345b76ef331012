#include "control/control_client.h"
#include "control/control_server.h"
#include "control/metrics_http_server.h"
#include "event/event_loop.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <future>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using vb::control::ControlError;
using vb::control::ControlServer;
using vb::control::MetricsHttpServer;
using vb::control::ServerLimits;

namespace {

// Runs loop.run() on its own thread until destroyed. Declare it after the servers it serves, so
// that the loop stops before they are destroyed.
class LoopThread {
public:
  explicit LoopThread(vb::EventLoop &loop) : loop_(loop), thread_([this] { loop_.run(); }) {}
  ~LoopThread() {
    loop_.stop_from_any_thread();
    thread_.join();
  }

private:
  vb::EventLoop &loop_;
  std::thread thread_;
};

// Runs fn on the loop thread and waits for its result.
template <typename Fn> auto on_loop(vb::EventLoop &loop, Fn fn) {
  std::promise<decltype(fn())> p;
  loop.post([&] { p.set_value(fn()); });
  return p.get_future().get();
}

class Fd {
public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd &operator=(Fd &&o) noexcept {
    reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

private:
  int fd_;
};

Fd connect_unix(const std::string &path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd.get() >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  REQUIRE_MESSAGE(::connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0, std::strerror(errno));
  return fd;
}

Fd connect_tcp(int family, std::uint16_t port) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd.get() >= 0);
  int rc;
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr *>(&a), sizeof a);
  } else {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_loopback;
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr *>(&a), sizeof a);
  }
  REQUIRE_MESSAGE(rc == 0, std::strerror(errno));
  return fd;
}

void send_all(int fd, const std::string &data) {
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return; // the server may close after answering early
    done += static_cast<std::size_t>(n);
  }
}

struct ReadResult {
  std::string data;
  bool eof = false; // the server closed; false: timed out
};

// Reads until the server closes or timeout passes.
ReadResult read_until_eof(int fd, std::chrono::milliseconds timeout = 10s) {
  ReadResult r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[65536];
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return r;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      r.eof = true;
      return r;
    }
    r.data.append(buf, static_cast<std::size_t>(n));
  }
}

// One raw exchange on the control socket: what the server sends back, up to EOF.
std::string raw_request(const std::string &path, const std::string &bytes) {
  Fd fd = connect_unix(path);
  send_all(fd.get(), bytes);
  ::shutdown(fd.get(), SHUT_WR);
  ReadResult r = read_until_eof(fd.get());
  CHECK(r.eof);
  return r.data;
}

std::string http_request(int family, std::uint16_t port, const std::string &request) {
  Fd fd = connect_tcp(family, port);
  send_all(fd.get(), request);
  ReadResult r = read_until_eof(fd.get());
  CHECK(r.eof);
  return r.data;
}

std::string control_error(const std::string &path, const std::string &command, ControlError::Reason *reason = nullptr) {
  try {
    vb::control::control_request(path, command, 5s);
  } catch (const ControlError &e) {
    if (reason)
      *reason = e.reason();
    return e.what();
  }
  FAIL("no ControlError for " << command);
  return {};
}

void add_status(ControlServer &server) {
  server.add_command("status", [](const std::string &cmd, bool &) { return "status of [" + cmd + "]\n"; });
}

} // namespace

TEST_CASE("control socket status round trip") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  ControlServer server(loop, path);
  add_status(server);
  server.add_command("fail", [](const std::string &, bool &ok) {
    ok = false;
    return std::string("device disk9 does not exist");
  });
  server.add_command("throw", [](const std::string &, bool &) -> std::string { throw std::runtime_error("boom"); });
  LoopThread thread(loop);

  CHECK(vb::control::control_request(path, "status") == "status of [status]\n");
  CHECK(vb::control::control_request(path, "  status disk0  ") == "status of [status disk0]\n");
  CHECK(raw_request(path, "status\r\n") == "ok\nstatus of [status]\n");
  CHECK(raw_request(path, "status") == "ok\nstatus of [status]\n"); // EOF ends the line too
  CHECK(vb::control::control_request(path, "help") == "commands: fail, status, throw, help\n");

  ControlError::Reason reason{};
  CHECK(control_error(path, "fail", &reason) == "device disk9 does not exist");
  CHECK(reason == ControlError::Reason::failed);
  CHECK(control_error(path, "throw") == "boom");
  CHECK_THROWS_AS(vb::control::control_request(path, "two\nlines"), std::invalid_argument);
}

TEST_CASE("control socket answers an unknown or empty command with an error") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  ControlServer server(loop, path);
  add_status(server);
  LoopThread thread(loop);

  CHECK(control_error(path, "frobnicate now") == "unknown command \"frobnicate\" (commands: status, help)");
  CHECK(raw_request(path, "\n") == "error\nempty command (\"help\" lists the commands)\n");
  CHECK(raw_request(path, "\x01\x02\n").rfind("error\nunknown command \"??\"", 0) == 0);
  CHECK(raw_request(path, "") == "");                                            // connect and close: nothing to answer
  CHECK(vb::control::control_request(path, "status") == "status of [status]\n"); // still serving
}

TEST_CASE("control socket refuses a request line over 4 KiB") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  ControlServer server(loop, path);
  add_status(server);
  LoopThread thread(loop);

  CHECK(raw_request(path, std::string(5000, 'x')) == "error\nrequest longer than 4096 bytes\n");
  CHECK(raw_request(path, std::string(4096, 'x') + "\n") == "error\nrequest longer than 4096 bytes\n");
  // 4095 bytes and the newline fit: an (unknown) command, not an oversize one.
  CHECK(raw_request(path, std::string(4095, 'x') + "\n").rfind("error\nunknown command", 0) == 0);
  // A client streaming megabytes gets its answer and is cut off, and the loop serves others.
  CHECK(raw_request(path, std::string(4 << 20, 'y')) == "error\nrequest longer than 4096 bytes\n");
  CHECK(control_error(path, std::string(10000, 'z')) == "request longer than 4096 bytes");
  CHECK(vb::control::control_request(path, "status") == "status of [status]\n");
}

TEST_CASE("control socket closes a client that sends no complete request in time") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  ServerLimits limits;
  limits.idle_timeout = 200ms;
  ControlServer server(loop, path, limits);
  add_status(server);
  LoopThread thread(loop);

  for (const std::string partial : {"", "stat"}) {
    const auto start = std::chrono::steady_clock::now(); // before the accept: the wait is at least the timeout
    Fd fd = connect_unix(path);
    send_all(fd.get(), partial);
    const ReadResult r = read_until_eof(fd.get(), 10s);
    const auto waited = std::chrono::steady_clock::now() - start;
    CHECK(r.eof);
    CHECK(r.data.empty());
    CHECK(waited >= 190ms);
    CHECK(waited < 5s);
  }
  CHECK(on_loop(loop, [&] { return server.clients(); }) == 0);
}

TEST_CASE("control socket serves many clients with a bounded number at once") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  ServerLimits limits;
  limits.max_clients = 4;
  ControlServer server(loop, path, limits);
  std::atomic<int> served{0};
  server.add_command("status", [&](const std::string &, bool &) {
    ++served;
    return std::string("fine\n");
  });
  LoopThread thread(loop);

  // Four idle clients take every slot: a fifth waits in the backlog, and is served as soon as
  // one of them leaves.
  std::vector<Fd> idle;
  for (int i = 0; i < 4; ++i)
    idle.push_back(connect_unix(path));
  CHECK(vb::test::wait_until([&] { return on_loop(loop, [&] { return server.clients(); }) == 4; }, 5s));
  auto waiting = std::async(std::launch::async, [&] { return vb::control::control_request(path, "status", 10s); });
  CHECK(waiting.wait_for(300ms) == std::future_status::timeout);
  CHECK(served == 0);
  idle.pop_back();
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK(waiting.get() == "fine\n");
  idle.clear();

  // Many at once: all answered, never more than four connections open.
  std::atomic<std::size_t> peak{0};
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    while (sampling) {
      const std::size_t n = on_loop(loop, [&] { return server.clients(); });
      if (n > peak)
        peak = n;
      std::this_thread::sleep_for(1ms);
    }
  });
  std::vector<std::future<std::string>> clients;
  for (int i = 0; i < 64; ++i)
    clients.push_back(
        std::async(std::launch::async, [&] { return vb::control::control_request(path, "status", 20s); }));
  for (auto &c : clients)
    CHECK(c.get() == "fine\n");
  sampling = false;
  sampler.join();
  CHECK(served == 65);
  CHECK(peak <= 4);
}

TEST_CASE("a large reply is written as the client drains it without blocking the loop") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  ControlServer server(loop, path);
  add_status(server);
  std::string big(16 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<char>('a' + i % 26);
  big.back() = '\n';
  server.add_command("big", [&](const std::string &, bool &) { return big; });
  LoopThread thread(loop);

  Fd slow = connect_unix(path);
  send_all(slow.get(), "big\n");
  // The slow client reads nothing yet; the server is parked on EV_WRITE and others get answers.
  for (int i = 0; i < 5; ++i)
    CHECK(vb::control::control_request(path, "status") == "status of [status]\n");
  const ReadResult r = read_until_eof(slow.get(), 30s);
  CHECK(r.eof);
  REQUIRE(r.data.size() == 3 + big.size());
  CHECK(r.data.compare(0, 3, "ok\n") == 0);
  CHECK(r.data.compare(3, std::string::npos, big) == 0);
}

TEST_CASE("a stale control socket is replaced and a live one refused") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  {
    // What a daemon killed with SIGKILL leaves: a socket file nobody listens on.
    Fd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
  }
  ControlError::Reason reason{};
  CHECK(control_error(path, "status", &reason) == "no daemon is listening on " + path + " (is vduse-bridge running?)");
  CHECK(reason == ControlError::Reason::not_running);

  vb::EventLoop loop;
  ControlServer server(loop, path);
  add_status(server);
  LoopThread thread(loop);
  CHECK(vb::control::control_request(path, "status") == "status of [status]\n");

  vb::EventLoop other;
  try {
    ControlServer second(other, path);
    FAIL("a second server took over a live socket");
  } catch (const std::runtime_error &e) {
    CHECK(std::string(e.what()) == "another vduse-bridge is running (its control socket " + path + " answers)");
  }
  // The first one is untouched.
  CHECK(vb::control::control_request(path, "status") == "status of [status]\n");

  // Something that is not a socket is never removed.
  const std::string file = dir.file("not-a-socket");
  std::ofstream(file) << "data";
  CHECK_THROWS_WITH_AS(ControlServer(other, file), (file + " exists and is not a socket; not replacing it").c_str(),
                       std::runtime_error);
  CHECK(vb::test::read_file(file) == "data");
}

TEST_CASE("the control socket is 0600 whatever the umask and goes away with the server") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  const mode_t old = ::umask(0);
  {
    vb::EventLoop loop;
    ControlServer server(loop, path);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0600);
  }
  ::umask(old);
  struct stat st {};
  CHECK(::lstat(path.c_str(), &st) != 0);
  CHECK(control_error(path, "status") == "no daemon is listening on " + path + " (is vduse-bridge running?)");
  CHECK_THROWS_WITH_AS(ControlServer(*std::make_unique<vb::EventLoop>(), std::string(200, 'p')),
                       doctest::Contains("must be 1 to 107 bytes long"), std::runtime_error);
}

TEST_CASE("metrics listener answers GET /metrics and 404 for the rest") {
  vb::EventLoop loop;
  const std::uint16_t port = vb::test::free_tcp_port();
  int scrapes = 0;
  MetricsHttpServer server(loop, "127.0.0.1:" + std::to_string(port), [&] {
    ++scrapes;
    return std::string("# TYPE vduse_bridge_up gauge\nvduse_bridge_up 1\n");
  });
  CHECK(server.port() == port);
  LoopThread thread(loop);

  const std::string body = "# TYPE vduse_bridge_up gauge\nvduse_bridge_up 1\n";
  const std::string ok = http_request(AF_INET, port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
  CHECK(ok.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(ok.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
  CHECK(ok.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n") != std::string::npos);
  CHECK(ok.substr(ok.find("\r\n\r\n") + 4) == body);
  CHECK(http_request(AF_INET, port, "GET /metrics?x=1 HTTP/1.0\n\n").rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  const std::string head = http_request(AF_INET, port, "HEAD /metrics HTTP/1.1\r\n\r\n");
  CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(head.ends_with("\r\n\r\n"));

  CHECK(http_request(AF_INET, port, "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 Not Found\r\n", 0) == 0);
  CHECK(http_request(AF_INET, port, "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(http_request(AF_INET, port, "GET /metricsx HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(http_request(AF_INET, port, "hello\r\n\r\n").rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
  CHECK(http_request(AF_INET, port, "GET /metrics HTTP/2.0\r\n\r\n").rfind("HTTP/1.1 400", 0) == 0);
  CHECK(http_request(AF_INET, port, "GET /metrics HTTP/1.1\r\n" + std::string(5000, 'h')).rfind("HTTP/1.1 431", 0) ==
        0);
  CHECK(on_loop(loop, [&] { return scrapes; }) == 3);
}

TEST_CASE("metrics listener on IPv6 loopback with a kernel-chosen port") {
  vb::EventLoop loop;
  std::optional<MetricsHttpServer> server;
  try {
    server.emplace(loop, "[::1]:0", [] { return std::string("x 1\n"); });
  } catch (const std::runtime_error &e) {
    VB_SKIP(std::string("no IPv6 loopback here: ") + e.what());
  }
  REQUIRE(server->port() != 0);
  LoopThread thread(loop);
  const std::string r = http_request(AF_INET6, server->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(r.ends_with("\r\n\r\nx 1\n"));
}

TEST_CASE("metrics listener refuses non-loopback and malformed addresses") {
  using vb::control::parse_loopback_address;
  for (const char *bad :
       {"0.0.0.0:9100", "192.0.2.1:9100", "[::]:9100", "[2001:db8::1]:9100", "[::ffff:127.0.0.1]:1"}) {
    INFO(bad);
    CHECK_THROWS_WITH_AS(parse_loopback_address(bad), doctest::Contains("not a loopback address"),
                         std::invalid_argument);
  }
  for (const char *bad :
       {"localhost:9100", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:x", "[::1]9100", "::1:9100", ""}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_loopback_address(bad), std::invalid_argument);
  }
  CHECK(parse_loopback_address("127.0.0.1:9100").storage.ss_family == AF_INET);
  CHECK(parse_loopback_address("127.3.2.1:0").storage.ss_family == AF_INET);
  CHECK(parse_loopback_address("[::1]:9100").storage.ss_family == AF_INET6);

  vb::EventLoop loop;
  CHECK_THROWS_WITH_AS(MetricsHttpServer(loop, "0.0.0.0:0", [] { return std::string(); }),
                       "metrics address \"0.0.0.0:0\": not a loopback address: the metrics endpoint has no "
                       "authentication, so it listens only on 127.0.0.0/8 or [::1]",
                       std::invalid_argument);
}

TEST_CASE("metrics listener closes an idle scraper and keeps serving") {
  vb::EventLoop loop;
  ServerLimits limits;
  limits.idle_timeout = 200ms;
  limits.max_clients = 2;
  MetricsHttpServer server(
      loop, "127.0.0.1:0", [] { return std::string("x 1\n"); }, limits);
  LoopThread thread(loop);
  Fd idle = connect_tcp(AF_INET, server.port());
  send_all(idle.get(), "GET /metrics HTTP/1.1\r\n"); // never finishes its head
  const ReadResult r = read_until_eof(idle.get(), 10s);
  CHECK(r.eof);
  CHECK(r.data.empty());
  CHECK(http_request(AF_INET, server.port(), "GET /metrics HTTP/1.1\r\n\r\n").ends_with("x 1\n"));
}

// reload, add and remove answer once their devices have settled: the reply comes later, from a
// timer here, and other clients are served meanwhile; "unhealthy" is a status of its own.
TEST_CASE("control socket: an asynchronous command answers later, others are served meanwhile") {
  vb::test::TempDir dir;
  const std::string path = dir.file("control.sock");
  vb::EventLoop loop;
  std::unique_ptr<vb::Timer> later; // destroyed after the loop thread stopped
  ControlServer::Reply pending;
  ControlServer server(loop, path);
  add_status(server);
  server.add_async_command("slow", [&](const std::string &, const ControlServer::Reply &reply) {
    pending = reply;
    later = std::make_unique<vb::Timer>(loop, [&] {
      pending(ControlServer::Status::ok, "done at last");
      pending(ControlServer::Status::error, "a second answer is ignored");
    });
    later->arm(500ms);
  });
  server.add_async_command("sick", [](const std::string &, const ControlServer::Reply &reply) {
    reply(ControlServer::Status::unhealthy, "disk0 waiting");
  });
  LoopThread thread(loop);

  const auto t0 = std::chrono::steady_clock::now();
  auto slow = std::async(std::launch::async, [&] { return raw_request(path, "slow\n"); });
  std::this_thread::sleep_for(100ms);
  CHECK(vb::control::control_request(path, "status") == "status of [status]\n"); // not held up
  CHECK(raw_request(path, "sick\n") == "unhealthy\ndisk0 waiting\n");
  CHECK(slow.get() == "ok\ndone at last\n");
  CHECK(std::chrono::steady_clock::now() - t0 >= 450ms);
}
