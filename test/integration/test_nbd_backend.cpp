// The NBD backend against a real nbdkit: every operation, errors, out-of-order replies, block
// size constraints, TLS (PSK and X.509), multi-conn, and a server that goes away and comes back.
#include "backend_events.h"
#include "backend_fixture.h"
#include "event/event_loop.h"
#include "loop_wait.h"
#include "nbd/nbd_backend.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <netinet/in.h>
#include <numeric>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using vb::test::NbdkitServer;
using vb::test::TempDir;

namespace {

using vb::test::Result;

using vb::test::run;
using vb::test::run_until;

vb::NbdOptions options_for(const std::string &uri) {
  vb::NbdOptions o;
  o.uri = uri;
  o.connections = 4;
  o.reconnect_timeout = 10s;
  o.request_timeout = 10s;
  return o;
}

bool have_nbdkit() { return vb::test::find_program("nbdkit").has_value(); }

// NbdDisk's server, in a base of its own: started before the backend is made, stopped after the
// backend is gone.
struct NbdkitHolder {
  std::unique_ptr<NbdkitServer> server;
};

// nbdkit serving plugin (with nbdkit_options) on a new socket in dir, an NbdBackend on it
// (options_for its URI, then adjust), opened, with an event loop and queue 0 (see OpenedBackend;
// on_resize is set before queue 0 opens). A test may reset server (the server goes away) and
// make it again on the same socket (serve_again).
struct NbdDisk : NbdkitHolder, vb::test::OpenedBackend<vb::NbdBackend> {
  using Adjust = std::function<void(vb::NbdOptions &)>;
  NbdDisk(const TempDir &dir, const std::vector<std::string> &plugin,
          const std::vector<std::string> &nbdkit_options = {}, const Adjust &adjust = {},
          vb::RecordingBackendEvents::ResizeHandler on_resize = {})
      : NbdkitHolder{std::make_unique<NbdkitServer>(dir, plugin, nbdkit_options)},
        OpenedBackend(options(*server, adjust), std::move(on_resize)) {}

private:
  static vb::NbdOptions options(const NbdkitServer &nbdkit, const Adjust &adjust) {
    auto o = options_for(nbdkit.uri());
    if (adjust)
      adjust(o);
    return o;
  }
};

// dir's disk.img for the file plugin: size bytes, sparse (reading as zeros).
std::string sparse_image(const TempDir &dir, std::uintmax_t size) {
  const std::string image = dir.file("disk.img");
  std::ofstream(image).close();
  std::filesystem::resize_file(image, size);
  return image;
}

// dir's disk.img for the file plugin: size bytes, each of them fill.
std::string filled_image(const TempDir &dir, std::size_t size, char fill) {
  const std::string image = dir.file("disk.img");
  std::ofstream f(image);
  const std::string data(size, fill);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  return image;
}

// nbdkit again on the socket of one that is gone: the stale socket file removed, then started.
std::unique_ptr<NbdkitServer> serve_again(const TempDir &dir, const std::string &socket,
                                          const std::vector<std::string> &plugin,
                                          const std::vector<std::string> &nbdkit_options = {}) {
  std::filesystem::remove(socket);
  return std::make_unique<NbdkitServer>(dir, plugin, nbdkit_options, socket);
}

} // namespace

TEST_CASE("nbd: read, write, flush, trim and zero against nbdkit memory") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  bool direct = true;
  SUBCASE("the daemon's own transmission path (the default on plaintext)") { direct = true; }
  SUBCASE("libnbd carries the commands (direct-transmission: false)") { direct = false; }
  NbdDisk d(dir, {"memory", "16M"}, {}, [direct](vb::NbdOptions &o) { o.direct_transmission = direct; });
  const auto &caps = d.backend.capabilities(); // constant from open() on: queue 0 changes nothing
  CHECK(caps.size == 16 << 20);
  CHECK(caps.logical_block_size == 512);
  CHECK(caps.can_flush);
  CHECK(caps.can_discard);
  CHECK(caps.can_write_zeroes);
  CHECK_FALSE(caps.read_only);
  CHECK(d.backend.connections() == 4);                                 // nbdkit memory advertises multi-conn
  CHECK(caps.identity.rfind("nbd:" + d.server->uri() + " (", 0) == 0); // the URI, then name|description

  // Scattered buffers: three iovecs, two of them adjacent in memory (merged into one command).
  std::vector<char> out(12288);
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<char>(i * 13 + 1);
  std::vector<char> other(4096, 'z');
  iovec wv[3] = {{out.data(), 4096}, {out.data() + 4096, 4096}, {other.data(), 4096}};
  vb::Request w{vb::Op::write, 1 << 20, 12288, wv, 3};
  CHECK(d.run(w) == 0);
  if (direct)
    CHECK(d.backend.direct_connections() >= 1);
  else
    CHECK(d.backend.direct_connections() == 0);

  std::vector<char> in(12288);
  iovec rv[1] = {{in.data(), in.size()}};
  CHECK(d.run({vb::Op::read, 1 << 20, 12288, rv, 1}) == 0);
  CHECK(std::memcmp(in.data(), out.data(), 8192) == 0);
  CHECK(std::memcmp(in.data() + 8192, other.data(), 4096) == 0);

  CHECK(d.run({vb::Op::flush, 0, 0, nullptr, 0}) == 0);
  vb::Request z{vb::Op::write_zeroes, 1 << 20, 4096, nullptr, 0};
  z.may_unmap = false;
  CHECK(d.run(z) == 0);
  CHECK(d.run({vb::Op::discard, (1 << 20) + 4096, 4096, nullptr, 0}) == 0);
  CHECK(d.run({vb::Op::read, 1 << 20, 12288, rv, 1}) == 0);
  CHECK(std::all_of(in.begin(), in.begin() + 8192, [](char c) { return c == 0; })); // memory trims to zero
  CHECK(std::memcmp(in.data() + 8192, other.data(), 4096) == 0);

  // Out of range: refused before anything is sent.
  CHECK(d.run({vb::Op::read, (16 << 20) - 512, 4096, rv, 1}) == EIO);
}

TEST_CASE("nbd: server errors surface as errors and the connection keeps working") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  NbdDisk d(
      dir,
      {"memory", "1M", "error-pread=EIO", "error-pread-rate=100%", "error-pwrite=ENOSPC", "error-pwrite-rate=100%"},
      {"--filter=error"});
  std::vector<char> buf(4096);
  iovec v[1] = {{buf.data(), buf.size()}};
  CHECK(d.run({vb::Op::read, 0, 4096, v, 1}) == EIO);
  CHECK(d.run({vb::Op::write, 0, 4096, v, 1}) == ENOSPC);
  CHECK(d.run({vb::Op::flush, 0, 0, nullptr, 0}) == 0);
}

TEST_CASE("nbd: out-of-order replies complete the right requests (delay filter)") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  bool direct = true;
  SUBCASE("the daemon's own transmission path") { direct = true; }
  SUBCASE("libnbd carries the commands") { direct = false; }
  NbdDisk d(dir, {"memory", "4M", "delay-write=400ms"}, {"--filter=delay"},
            [direct](vb::NbdOptions &o) { o.direct_transmission = direct; });
  std::vector<std::vector<char>> bufs(8, std::vector<char>(4096));
  std::vector<Result> results(8);
  std::vector<iovec> iov(8);
  std::vector<int> order;
  struct Ctx {
    Result *r;
    std::vector<int> *order;
    int id;
    static void on_done(void *p, int error) noexcept {
      auto *c = static_cast<Ctx *>(p);
      Result::on_done(c->r, error);
      c->order->push_back(c->id);
    }
  };
  std::vector<Ctx> ctx;
  for (int i = 0; i < 8; ++i)
    ctx.push_back({&results[static_cast<std::size_t>(i)], &order, i});
  // Even ids write (slow), odd ids read (fast), all in flight at once.
  for (int i = 0; i < 8; ++i) {
    auto &b = bufs[static_cast<std::size_t>(i)];
    std::memset(b.data(), 'a' + i, b.size());
    iov[static_cast<std::size_t>(i)] = {b.data(), b.size()};
    const vb::Request r{i % 2 ? vb::Op::read : vb::Op::write, static_cast<std::uint64_t>(i) * 4096, 4096,
                        &iov[static_cast<std::size_t>(i)], 1};
    REQUIRE(d.q->submit(r, &Ctx::on_done, &ctx[static_cast<std::size_t>(i)]) == 0);
  }
  run_until(d.loop, [&] { return order.size() == 8; });
  for (auto &r : results) {
    CHECK(r.calls == 1);
    CHECK(r.error == 0);
  }
  // All reads finished before the first write did.
  CHECK(order[0] % 2 == 1);
  CHECK(order[3] % 2 == 1);
  for (int i = 1; i < 8; i += 2) // reads of never-written blocks return zeros, not a write's data
    CHECK(bufs[static_cast<std::size_t>(i)][0] == 0);
}

TEST_CASE("nbd: block size constraints set the logical block size and split large commands") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  NbdDisk d(dir,
            {"memory", "8M", "blocksize-minimum=4096", "blocksize-preferred=65536", "blocksize-maximum=262144",
             "blocksize-error-policy=error"},
            {"--filter=blocksize-policy"});
  const auto &caps = d.backend.capabilities(); // constant from open() on: queue 0 changes nothing
  CHECK(caps.logical_block_size == 4096);
  CHECK(caps.physical_block_size == 65536);
  CHECK(caps.max_transfer == 262144);
  // 1 MiB: four commands of 256 KiB; the server errors on anything larger.
  std::vector<char> out(1 << 20), in(1 << 20);
  std::iota(out.begin(), out.end(), 0);
  iovec wv[1] = {{out.data(), out.size()}}, rv[1] = {{in.data(), in.size()}};
  CHECK(d.run({vb::Op::write, 1 << 20, out.size(), wv, 1}) == 0);
  CHECK(d.run({vb::Op::read, 1 << 20, in.size(), rv, 1}) == 0);
  CHECK(in == out);
}

TEST_CASE("nbd: multi-conn is used only when the server advertises it") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  NbdDisk d(dir, {"memory", "4M", "multi-conn-mode=disable"}, {"--filter=multi-conn"});
  CHECK(d.backend.connections() == 1); // constant from open() on: queue 0 changes nothing
  // Two queues on two threads share the one connection (the second forwards to the first).
  vb::EventLoop loop1;
  auto q1 = d.backend.open_queue(loop1, 1);
  std::thread t0([&] { d.loop.run(); });
  std::vector<char> buf(4096, 'q'), in(4096);
  iovec wv[1] = {{buf.data(), buf.size()}}, rv[1] = {{in.data(), in.size()}};
  CHECK(run(loop1, *q1, {vb::Op::write, 8192, 4096, wv, 1}) == 0);
  CHECK(run(loop1, *q1, {vb::Op::read, 8192, 4096, rv, 1}) == 0);
  CHECK(in == buf);
  d.loop.stop_from_any_thread();
  t0.join();
  q1.reset();
  d.q.reset();
}

TEST_CASE("nbd: a URI with a password is refused with an explanation") {
  CHECK_THROWS_WITH_AS(vb::check_nbd_uri("nbd://user:secret@127.0.0.1/export"), doctest::Contains("password"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(vb::check_nbd_uri("nbds+unix:///e?socket=/s&tls-psk-file=/k"), doctest::Contains("tls-psk-file"),
                       std::invalid_argument);
  CHECK_NOTHROW(vb::check_nbd_uri("nbd://user@127.0.0.1:10809/export"));
  vb::NbdBackend backend(options_for("nbd://u:p@127.0.0.1:1/x"));
  CHECK_THROWS_WITH_AS(backend.open(vb::test::new_events(backend)), doctest::Contains("password"),
                       std::invalid_argument);
}

TEST_CASE("nbd: TLS with a pre-shared key") {
  if (!have_nbdkit() || !vb::test::find_program("psktool"))
    VB_SKIP("nbdkit or psktool (gnutls-bin) not installed");
  TempDir dir;
  const std::string keys = dir.file("keys.psk");
  REQUIRE(vb::test::run_command({"psktool", "-u", "vbtest", "-p", keys}) == 0);
  NbdkitServer server(dir, {"memory", "1M"}, {"--tls=require", "--tls-psk=" + keys});
  // The PSK identity is the URI's user name.
  const std::string uri = "nbds+unix://vbtest@/?socket=" + server.socket();
  auto o = options_for(uri);
  o.tls_psk_file = keys;
  vb::test::OpenedBackend<vb::NbdBackend> client(o);
  std::vector<char> buf(4096, 't');
  iovec v[1] = {{buf.data(), buf.size()}};
  CHECK(client.run({vb::Op::write, 0, 4096, v, 1}) == 0);

  // Without the key the connection is refused, with libnbd's reason.
  vb::NbdBackend nokey(options_for(uri));
  CHECK_THROWS_WITH_AS(nokey.open(vb::test::new_events(nokey)), doctest::Contains("cannot connect"),
                       std::runtime_error);

  // A key file every user can read is refused before connecting.
  std::filesystem::permissions(keys, std::filesystem::perms::others_read, std::filesystem::perm_options::add);
  vb::NbdBackend exposed(o);
  const std::string expected = "tls-psk-file " + keys + " is readable by every user";
  CHECK_THROWS_WITH_AS(exposed.open(vb::test::new_events(exposed)), doctest::Contains(expected.c_str()),
                       std::runtime_error);
}

TEST_CASE("nbd: TLS with X.509 certificates made by the test") {
  if (!have_nbdkit() || !vb::test::find_program("certtool"))
    VB_SKIP("nbdkit or certtool (gnutls-bin) not installed");
  TempDir dir;
  const std::string pki = dir.file("pki");
  std::filesystem::create_directories(pki);
  auto write = [&](const std::string &name, const std::string &text) { std::ofstream(pki + "/" + name) << text; };
  auto certtool = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "certtool");
    REQUIRE(vb::test::run_command(args, dir.file("certtool.log")) == 0);
  };
  write("ca.info", "cn = vduse-bridge test CA\nca\ncert_signing_key\nexpiration_days = 2\n");
  write("server.info", "organization = test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n"
                       "tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n");
  write("client.info", "country = US\nstate = x\nlocality = x\norganization = test\ncn = client\n"
                       "tls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n");
  certtool({"--generate-privkey", "--outfile", pki + "/ca-key.pem"});
  certtool({"--generate-self-signed", "--load-privkey", pki + "/ca-key.pem", "--template", pki + "/ca.info",
            "--outfile", pki + "/ca-cert.pem"});
  certtool({"--generate-privkey", "--outfile", pki + "/server-key.pem"});
  certtool({"--generate-certificate", "--load-ca-certificate", pki + "/ca-cert.pem", "--load-ca-privkey",
            pki + "/ca-key.pem", "--load-privkey", pki + "/server-key.pem", "--template", pki + "/server.info",
            "--outfile", pki + "/server-cert.pem"});
  certtool({"--generate-privkey", "--outfile", pki + "/client-key.pem"});
  certtool({"--generate-certificate", "--load-ca-certificate", pki + "/ca-cert.pem", "--load-ca-privkey",
            pki + "/ca-key.pem", "--load-privkey", pki + "/client-key.pem", "--template", pki + "/client.info",
            "--outfile", pki + "/client-cert.pem"});
  const auto port = vb::test::free_tcp_port();
  NbdkitServer server(dir, {"memory", "1M"},
                      {"--tls=require", "--tls-certificates=" + pki, "--tls-verify-peer", "-i", "127.0.0.1", "-p",
                       std::to_string(port)},
                      "none");
  auto o = options_for("nbds://localhost:" + std::to_string(port) + "/");
  o.tls_certificates = pki;
  vb::test::OpenedBackend<vb::NbdBackend> client(o);
  std::vector<char> buf(4096, 'x');
  iovec v[1] = {{buf.data(), buf.size()}};
  CHECK(client.run({vb::Op::write, 0, 4096, v, 1}) == 0);
}

TEST_CASE("nbd: a server that dies and comes back: in-flight and held I/O completes, nothing fails") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string image = sparse_image(dir, 4 << 20);
  NbdDisk d(dir, {"file", image});
  const std::string socket = d.server->socket();
  std::vector<char> buf(4096, 'r'), in(4096);
  iovec wv[1] = {{buf.data(), buf.size()}}, rv[1] = {{in.data(), in.size()}};
  CHECK(d.run({vb::Op::write, 0, 4096, wv, 1}) == 0);

  d.server.reset(); // SIGTERM: the connection drops
  // Submitted while the server is down: held, not failed.
  Result held;
  REQUIRE(d.q->submit({vb::Op::read, 0, 4096, rv, 1}, &Result::on_done, &held) == 0);
  vb::RecordingBackendEvents::Health while_down;
  vb::Timer restart(d.loop, [&] {
    while_down = vb::test::events_of(d.backend).health();
    d.server = serve_again(dir, socket, {"file", image});
  });
  restart.arm(1500ms);
  run_until(d.loop, [&] { return held.calls > 0; });
  CHECK(held.error == 0);
  CHECK(in == buf);
  // What `vduse-bridge status` shows: reconnecting while the server was away, then connected.
  CHECK(while_down.state == vb::Backend::State::reconnecting);
  CHECK(while_down.last_error.find("connection lost") != std::string::npos);
  CHECK(vb::test::events_of(d.backend).health().state == vb::Backend::State::connected);
}

TEST_CASE("nbd: requests in flight when the server is killed are resubmitted, not failed") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string image = filled_image(dir, 1 << 20, 'k');
  // Slow reads keep requests in flight long enough to kill the server under them.
  NbdDisk d(dir, {"file", image, "delay-read=2"}, {"--filter=delay"});
  const std::string socket = d.server->socket();
  std::vector<std::vector<char>> bufs(4, std::vector<char>(4096));
  std::vector<iovec> iov(4);
  std::vector<Result> results(4);
  for (std::size_t i = 0; i < 4; ++i) {
    iov[i] = {bufs[i].data(), 4096};
    REQUIRE(d.q->submit({vb::Op::read, i * 4096, 4096, &iov[i], 1}, &Result::on_done, &results[i]) == 0);
  }
  vb::Timer kill(d.loop, [&] {
    ::kill(d.server->process().pid(), SIGKILL);
    d.server->process().stop();
  });
  kill.arm(300ms);
  vb::Timer restart(d.loop, [&] { d.server = serve_again(dir, socket, {"file", image}); });
  restart.arm(1500ms);
  run_until(d.loop, [&] { return std::all_of(results.begin(), results.end(), [](auto &r) { return r.calls > 0; }); });
  for (std::size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(results[i].calls == 1);
    CHECK(results[i].error == 0);
    CHECK(bufs[i][0] == 'k');
  }
}

TEST_CASE("nbd: a request scattered over many buffers goes through a bounce copy and back") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  NbdDisk d(dir, {"memory", "8M"});
  // 32 non-adjacent 4 KiB pieces (every other page of a buffer), as a 128 KiB request.
  std::vector<char> out(256 * 1024), in(256 * 1024, 0);
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<char>(i / 4096 + i * 7);
  std::vector<iovec> wv(32), rv(32);
  for (std::size_t i = 0; i < 32; ++i) {
    wv[i] = {out.data() + i * 8192, 4096};
    rv[i] = {in.data() + i * 8192, 4096};
  }
  CHECK(d.run({vb::Op::write, 1 << 20, 128 * 1024, wv.data(), 32}) == 0);
  CHECK(d.run({vb::Op::read, 1 << 20, 128 * 1024, rv.data(), 32}) == 0);
  for (std::size_t i = 0; i < 32; ++i) {
    CAPTURE(i);
    CHECK(std::memcmp(in.data() + i * 8192, out.data() + i * 8192, 4096) == 0);
    CHECK(in[i * 8192 + 4096] == 0); // the gaps are untouched
  }
  // What reached the server is the pieces back to back.
  std::vector<char> flat(128 * 1024);
  iovec fv[1] = {{flat.data(), flat.size()}};
  CHECK(d.run({vb::Op::read, 1 << 20, flat.size(), fv, 1}) == 0);
  for (std::size_t i = 0; i < 32; ++i)
    CHECK(std::memcmp(flat.data() + i * 4096, out.data() + i * 8192, 4096) == 0);
}

TEST_CASE("nbd: a grown or shrunk export is found by the size poll and reported") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string image = sparse_image(dir, 4 << 20);
  // Declared before the backend that reports to them, so they outlive it.
  std::atomic<std::uint64_t> reported{0};
  std::atomic<int> reports{0};
  NbdDisk d(
      dir, {"file", image}, {}, [](vb::NbdOptions &o) { o.resize_poll_interval = 100ms; },
      [&](std::uint64_t size) {
        reported = size;
        ++reports;
      });
  std::vector<char> buf(4096, 'g');
  iovec v[1] = {{buf.data(), buf.size()}};
  // Past the end: refused before the resize.
  CHECK(d.run({vb::Op::write, 6 << 20, 4096, v, 1}) == EIO);

  std::filesystem::resize_file(image, (8 << 20) + 100); // not a whole block: rounded down
  REQUIRE(vb::test::wait_until([&] { return reported == 8u << 20; }));
  CHECK(d.backend.current_size() == 8u << 20);
  CHECK(d.run({vb::Op::write, 6 << 20, 4096, v, 1}) == 0);

  std::filesystem::resize_file(image, 2 << 20);
  REQUIRE(vb::test::wait_until([&] { return reported == 2u << 20; }));
  CHECK(reports == 2); // once per change, not once per poll
  CHECK(d.run({vb::Op::write, 3 << 20, 4096, v, 1}) == EIO);
}

TEST_CASE("nbd: a server back with another size is a resize, back as another export is refused") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string image = sparse_image(dir, 4 << 20);
  std::atomic<std::uint64_t> reported{0}; // outlives the backend that reports to it
  NbdDisk d(
      dir, {"file", image}, {},
      [](vb::NbdOptions &o) { o.resize_poll_interval = 0ms; }, // only the reconnect may notice
      [&](std::uint64_t size) { reported = size; });
  const std::string socket = d.server->socket();
  std::vector<char> buf(4096, 'w');
  iovec v[1] = {{buf.data(), buf.size()}};
  CHECK(d.run({vb::Op::write, 0, 4096, v, 1}) == 0);

  // Back read-only: not the export we were writing to. The write is held, not sent.
  d.server.reset();
  d.server = serve_again(dir, socket, {"file", image}, {"--readonly"});
  Result held;
  REQUIRE(d.q->submit({vb::Op::write, 4096, 4096, v, 1}, &Result::on_done, &held) == 0);
  bool waited = false;
  vb::Timer wait(d.loop, [&] { waited = true; });
  wait.arm(2500ms);
  run_until(d.loop, [&] { return waited || held.calls > 0; });
  CHECK(held.calls == 0);

  // Back writable and bigger: accepted, the held write completes, the resize is reported.
  d.server.reset();
  std::filesystem::remove(socket);
  std::filesystem::resize_file(image, 6 << 20);
  d.server =
      std::make_unique<NbdkitServer>(dir, std::vector<std::string>{"file", image}, std::vector<std::string>{}, socket);
  run_until(d.loop, [&] { return held.calls > 0; });
  CHECK(held.error == 0);
  CHECK(reported == 6u << 20);
  CHECK(d.backend.current_size() == 6u << 20);
}

TEST_CASE("nbd: a server that stops answering is given up on, also mid-handshake, and I/O moves to its successor") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string image = filled_image(dir, 1 << 20, 's');
  NbdDisk d(dir, {"file", image}, {}, [](vb::NbdOptions &o) {
    o.request_timeout = 1s;
    o.resize_poll_interval = 0ms;
  });
  NbdkitServer &frozen = *d.server;
  const std::string socket = frozen.socket();
  std::vector<char> in(4096);
  iovec rv[1] = {{in.data(), in.size()}};
  CHECK(d.run({vb::Op::read, 0, 4096, rv, 1}) == 0);

  // Stopped, not dead: connections are still accepted (the listen backlog) but nothing answers.
  REQUIRE(::kill(frozen.process().pid(), SIGSTOP) == 0);
  Result r;
  std::fill(in.begin(), in.end(), 0);
  REQUIRE(d.q->submit({vb::Op::read, 4096, 4096, rv, 1}, &Result::on_done, &r) == 0);
  // After request-timeout the connection is replaced; the new one hangs in the handshake with
  // the stopped server. Then a working server takes over the socket path.
  std::unique_ptr<NbdkitServer> successor;
  vb::Timer replace(d.loop, [&] { successor = serve_again(dir, socket, {"file", image}); });
  replace.arm(2000ms);
  run_until(
      d.loop, [&] { return r.calls > 0; }, 30s);
  CHECK(r.error == 0);
  CHECK(in[0] == 's');
  ::kill(frozen.process().pid(), SIGCONT);
}

namespace {
std::string bytes_at(const std::string &path, std::uint64_t offset, std::size_t n) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  std::string s(n, '\0');
  f.read(s.data(), static_cast<std::streamsize>(n));
  return s;
}
} // namespace

// Issue 12, item 2: after the driver resets the device (a guest rebooting while its server is
// away), nothing the old driver wrote may reach the server unless it already had: a write held
// for the reconnect is dropped, and one on the wire when the connection dies is not sent again.
TEST_CASE("nbd: after a fence, writes held for a reconnect or lost on the wire never reach the server") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string image = filled_image(dir, 1 << 20, 'o');
  // Slow writes keep one on the wire long enough to kill the server under it.
  const std::vector<std::string> plugin{"file", image, "delay-write=2"};
  const std::vector<std::string> filter{"--filter=delay"};
  NbdDisk d(dir, plugin, filter, [](vb::NbdOptions &o) { o.connections = 1; });
  const std::string socket = d.server->socket();
  std::string a(4096, 'A'), b(4096, 'B'), c(4096, 'C');
  iovec av[1] = {{a.data(), a.size()}}, bv[1] = {{b.data(), b.size()}}, cv[1] = {{c.data(), c.size()}};

  // On the wire: C is sent, the server sleeps on it, then dies before writing it.
  Result on_wire;
  REQUIRE(d.q->submit({vb::Op::write, 8192, 4096, cv, 1}, &Result::on_done, &on_wire) == 0);
  d.loop.run_once(false);
  d.q->fence();
  CHECK(on_wire.calls == 0); // sent: it finishes with the server's answer or the connection
  ::kill(d.server->process().pid(), SIGKILL);
  d.server->process().stop();
  run_until(d.loop, [&] { return on_wire.calls > 0; });
  CHECK(on_wire.error == ECANCELED);

  // Held: the server is away, A waits for the reconnect; the reset drops it.
  Result held;
  REQUIRE(d.q->submit({vb::Op::write, 0, 4096, av, 1}, &Result::on_done, &held) == 0);
  d.q->fence();
  run_until(d.loop, [&] { return held.calls > 0; });
  CHECK(held.error == ECANCELED);

  d.server = serve_again(dir, socket, {"file", image});
  CHECK(d.run({vb::Op::write, 4096, 4096, bv, 1}) == 0); // the new driver's write
  CHECK(bytes_at(image, 0, 4096) == std::string(4096, 'o'));
  CHECK(bytes_at(image, 4096, 4096) == b);
  CHECK(bytes_at(image, 8192, 4096) == std::string(4096, 'o'));
}

// A reset is answered only once the old driver's requests no longer touch its memory; one the
// server sits on is abandoned (the engine's settle_queues): its answer must never land in the
// buffer, which the new driver may be using by then.
TEST_CASE("nbd: after a fence, an abandoned read completes with ECANCELED at once and its buffer is never written") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  bool direct = true;
  SUBCASE("the daemon's own transmission path") { direct = true; }
  SUBCASE("libnbd carries the commands") { direct = false; }
  TempDir dir;
  const std::string image = filled_image(dir, 1 << 20, 'o');
  NbdDisk d(dir, {"file", image, "delay-read=2"}, {"--filter=delay"}, [direct](vb::NbdOptions &o) {
    o.connections = 1;
    o.direct_transmission = direct;
  });
  std::vector<char> old_buf(4096, 'x');
  iovec v[1] = {{old_buf.data(), old_buf.size()}};
  Result old_read;
  REQUIRE(d.q->submit({vb::Op::read, 0, 4096, v, 1}, &Result::on_done, &old_read) == 0);
  d.loop.run_once(false); // on the wire: the server sleeps on it
  d.q->fence();
  CHECK(old_read.calls == 0);
  const auto start = std::chrono::steady_clock::now();
  d.q->abandon_fenced();
  run_until(d.loop, [&] { return old_read.calls > 0; });
  CHECK(std::chrono::steady_clock::now() - start < 1s); // not the server's 2 s
  CHECK(old_read.error == ECANCELED);
  // The new driver's read, on the next connection, returns after the old one's answer was due.
  std::vector<char> new_buf(4096, 'y');
  iovec nv[1] = {{new_buf.data(), new_buf.size()}};
  CHECK(d.run({vb::Op::read, 0, 4096, nv, 1}) == 0);
  CHECK(std::chrono::steady_clock::now() - start >= 2s);
  CHECK(new_buf == std::vector<char>(4096, 'o'));
  CHECK(old_buf == std::vector<char>(4096, 'x')); // the old answer never landed
  CHECK(old_read.calls == 1);
}

// Review finding: a write sent in full no longer reads its buffer, and dropping its connection
// would let the new driver's writes overtake it at the server (NBD has no session reinstatement).
// The own transport knows it was sent in full: the connection is kept and the write finishes.
// With libnbd carrying the commands that is not known, and the connection is dropped.
TEST_CASE("nbd: after a fence, abandoning keeps a connection whose old writes are all at the server") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  bool direct = true;
  SUBCASE("the daemon's own transmission path: kept") { direct = true; }
  SUBCASE("libnbd carries the commands: dropped") { direct = false; }
  TempDir dir;
  const std::string image = filled_image(dir, 1 << 20, 'o');
  NbdDisk d(dir, {"file", image, "delay-write=2"}, {"--filter=delay"}, [direct](vb::NbdOptions &o) {
    o.connections = 1;
    o.direct_transmission = direct;
  });
  std::string w(4096, 'W');
  iovec v[1] = {{w.data(), w.size()}};
  Result old_write;
  REQUIRE(d.q->submit({vb::Op::write, 0, 4096, v, 1}, &Result::on_done, &old_write) == 0);
  d.loop.run_once(false); // 4 KiB: written to the socket at once
  d.q->fence();
  d.q->abandon_fenced();
  run_until(d.loop, [&] { return old_write.calls > 0; });
  if (direct) {
    CHECK(old_write.error == 0);                                    // the server's answer, 2 s later
    CHECK(vb::test::events_of(d.backend).health().recoveries == 0); // never lost the connection
    CHECK(vb::test::events_of(d.backend).health().state == vb::BackendEvents::State::connected);
    CHECK(bytes_at(image, 0, 4096) == w);
  } else {
    CHECK(old_write.error == ECANCELED);
  }
}

// Item 10: a server that answers ESHUTDOWN but keeps the socket open; nothing else would ever
// retire the request (with request-timeout off it waited for ever).
TEST_CASE("nbd: a request answered with ESHUTDOWN is resubmitted on a new connection, not left stuck") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  const std::string trigger = dir.file("shutting-down");
  std::ofstream(trigger).close();
  NbdDisk d(dir, {"memory", "1M", "error=ESHUTDOWN", "error-rate=100%", "error-file=" + trigger}, {"--filter=error"},
            [](vb::NbdOptions &o) { o.request_timeout = 0ms; });
  std::vector<char> buf(4096, 'x');
  iovec v[1] = {{buf.data(), buf.size()}};
  Result r;
  REQUIRE(d.q->submit({vb::Op::read, 0, 4096, v, 1}, &Result::on_done, &r) == 0);
  run_until(d.loop,
            [&] { return vb::test::events_of(d.backend).health().last_error.find("ESHUTDOWN") != std::string::npos; });
  CHECK(r.calls == 0); // not failed: the server only said it is going away
  std::filesystem::remove(trigger);
  run_until(d.loop, [&] { return r.calls > 0; });
  CHECK(r.error == 0);
  CHECK(buf == std::vector<char>(4096, 0));
}

// Item 10: a queue forwarding to another queue's connection (no multi-conn) cancels its own
// requests when it goes away, and only those; none of its completions runs after it is gone.
TEST_CASE("nbd: a forwarding queue's cancel_all completes its own requests now and leaves the owner's alone") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  vb::EventLoop forward_loop; // before d: it outlives both queues (the owner, queue 0, is d's), as it did
  NbdDisk d(dir, {"memory", "1M"}, {}, [](vb::NbdOptions &o) { o.connections = 1; });
  vb::EventLoop &owner_loop = d.loop;
  std::unique_ptr<vb::BackendQueue> &owner = d.q; // queue 0
  std::thread owner_thread;
  std::unique_ptr<vb::BackendQueue> forwarder = d.backend.open_queue(forward_loop, 1);
  d.server.reset(); // both queues' requests are held for a reconnect
  std::vector<char> b1(4096), b2(4096);
  iovec v1[1] = {{b1.data(), b1.size()}}, v2[1] = {{b2.data(), b2.size()}};
  Result mine, theirs;
  REQUIRE(owner->submit({vb::Op::read, 0, 4096, v1, 1}, &Result::on_done, &theirs) == 0);
  std::atomic<bool> stop{false};
  owner_thread = std::thread([&] {
    while (!stop)
      owner_loop.run_once(false), std::this_thread::sleep_for(1ms);
  });
  REQUIRE(forwarder->submit({vb::Op::read, 0, 4096, v2, 1}, &Result::on_done, &mine) == 0);
  forwarder->cancel_all();
  CHECK(mine.calls == 1);
  CHECK(mine.error == ECANCELED);
  forwarder.reset();
  forward_loop.run_once(false); // nothing left to deliver to a queue that is gone
  CHECK(mine.calls == 1);
  stop = true;
  owner_thread.join();
  CHECK(theirs.calls == 0); // the owner's request still waits for the server
  owner->cancel_all();
  CHECK(theirs.calls == 1);
}

// Issue 12, item 4: memory per queue is bounded. Scattered requests are copied into bounce
// buffers, and the guest decides how many large ones are in flight: past a fixed budget they go
// piece by piece from their own buffers instead, with the same result.
TEST_CASE("nbd: many large scattered requests in flight stay within the bounce budget and complete intact") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  NbdDisk d(dir, {"memory", "256M"}, {}, [](vb::NbdOptions &o) { o.connections = 1; });
  constexpr int kRequests = 48;
  constexpr std::size_t kPiece = 1 << 20, kPieces = 4; // 4 MiB in 4 separate pieces
  std::vector<std::vector<char>> pieces(kPieces);
  std::vector<iovec> iov(kPieces);
  for (std::size_t p = 0; p < kPieces; ++p) {
    pieces[p].assign(kPiece, static_cast<char>('a' + p));
    iov[p] = {pieces[p].data(), kPiece};
  }
  std::vector<Result> results(kRequests);
  for (int i = 0; i < kRequests; ++i)
    REQUIRE(d.q->submit({vb::Op::write, static_cast<std::uint64_t>(i) * kPiece * kPieces, kPiece * kPieces, iov.data(),
                         static_cast<int>(kPieces)},
                        &Result::on_done, &results[i]) == 0);
  std::size_t peak = d.backend.bounce_bytes();
  run_until(d.loop, [&] {
    peak = std::max(peak, d.backend.bounce_bytes());
    return std::all_of(results.begin(), results.end(), [](const Result &r) { return r.calls > 0; });
  });
  CHECK(peak <= 64u << 20);
  for (const Result &r : results)
    CHECK(r.error == 0);
  // Read back the last request's data, scattered the same way.
  std::vector<std::vector<char>> back(kPieces, std::vector<char>(kPiece));
  std::vector<iovec> rv(kPieces);
  for (std::size_t p = 0; p < kPieces; ++p)
    rv[p] = {back[p].data(), kPiece};
  CHECK(d.run({vb::Op::read, (kRequests - 1) * kPiece * kPieces, kPiece * kPieces, rv.data(),
               static_cast<int>(kPieces)}) == 0);
  CHECK(back == pieces);
}

// A server that accepts and never answers (here: a listening socket nobody reads; in the VM
// test a SIGSTOPped nbdkit): the first connect gives up at the handshake bound, and at once
// when the open is cancelled (the daemon stopping, the device removed), never blocking for long.
TEST_CASE("nbd: the first connect to a server that never answers is bounded and can be cancelled") {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 8) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr *>(&addr), &len) == 0);
  const std::string uri = "nbd://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/";

  SUBCASE("bounded by request-timeout") {
    vb::NbdOptions o = options_for(uri);
    o.request_timeout = 1s;
    vb::NbdBackend backend(o);
    vb::RecordingBackendEvents events;
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(backend.open(events), doctest::Contains("no answer within 1s"), std::runtime_error);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took >= 900ms);
    CHECK(took < 3s);
  }
  SUBCASE("cancelled from another thread") {
    vb::NbdOptions o = options_for(uri); // no request-timeout: the bound is 30 s
    vb::NbdBackend backend(o);
    vb::RecordingBackendEvents events;
    std::atomic<bool> cancelled{false};
    std::thread canceller([&] {
      std::this_thread::sleep_for(300ms);
      cancelled = true;
    });
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(backend.open(events, &cancelled), doctest::Contains("cancelled"), std::runtime_error);
    const auto took = std::chrono::steady_clock::now() - t0;
    canceller.join();
    CHECK(took < 1s);
  }
  ::close(listener);
}

TEST_CASE("nbd: a failed read of two pieces completes with the error once, it is not sent again for ever") {
  if (!have_nbdkit())
    VB_SKIP("nbdkit not installed");
  TempDir dir;
  bool direct = true;
  SUBCASE("the daemon's own transmission path") { direct = true; }
  SUBCASE("libnbd carries the commands") { direct = false; }
  NbdDisk d(dir, {"memory", "1M", "error-pread=EIO", "error-pread-rate=100%"}, {"--filter=error"},
            [direct](vb::NbdOptions &o) { o.direct_transmission = direct; });
  std::vector<char> buf(12288);
  iovec v[2] = {{buf.data(), 4096}, {buf.data() + 8192, 4096}}; // two pieces: two NBD commands
  CHECK(d.run({vb::Op::read, 0, 8192, v, 2}) == EIO);
}
