// The own NBD transmission path (backends/nbd/nbd_transport.h) against a socketpair whose other
// end plays the server: it reads the requests and writes whatever replies a test wants, well
// formed or not.
#include "nbd/nbd_transport.h"
#include "nbd/nbd_wire.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

using vb::NbdTransport;
using vb::nbd_wire::Command;

std::uint64_t be(const std::uint8_t *p, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < n; ++i)
    v = (v << 8) | p[i];
  return v;
}
void put_be(std::uint8_t *p, std::uint64_t v, unsigned n) {
  for (unsigned i = 0; i < n; ++i)
    p[i] = static_cast<std::uint8_t>(v >> (8 * (n - 1 - i)));
}

struct Done {
  void *ctx;
  int error;
};
std::vector<Done> g_done;
NbdTransport *g_abandon_from = nullptr; // abandon this transport from the first callback
void record(void *ctx, int error) noexcept {
  g_done.push_back({ctx, error});
  if (g_abandon_from) {
    NbdTransport *t = g_abandon_from;
    g_abandon_from = nullptr;
    t->abandon();
  }
}

struct Request {
  std::uint16_t flags, type;
  std::uint64_t cookie, offset;
  std::uint32_t length;
  std::string payload; // a write's
};

struct Pair {
  int client = -1, server = -1;
  Pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    client = fds[0];
    server = fds[1];
    g_done.clear();
  }
  ~Pair() {
    ::close(client);
    if (server >= 0)
      ::close(server);
  }
  void write_all(const void *data, std::size_t n) const {
    const auto *p = static_cast<const char *>(data);
    while (n > 0) {
      const ssize_t w = ::send(server, p, n, MSG_NOSIGNAL);
      REQUIRE(w > 0);
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  std::string read_some() const {
    std::string out;
    char buf[65536];
    for (;;) {
      const ssize_t r = ::recv(server, buf, sizeof buf, MSG_DONTWAIT);
      if (r <= 0)
        break;
      out.append(buf, static_cast<std::size_t>(r));
    }
    return out;
  }
  // Parses requests (and write payloads) out of what the client sent.
  std::vector<Request> requests() const {
    const std::string bytes = read_some();
    std::vector<Request> out;
    std::size_t pos = 0;
    while (pos + 28 <= bytes.size()) {
      const auto *p = reinterpret_cast<const std::uint8_t *>(bytes.data() + pos);
      REQUIRE(be(p, 4) == vb::nbd_wire::kRequestMagic);
      Request r{static_cast<std::uint16_t>(be(p + 4, 2)),
                static_cast<std::uint16_t>(be(p + 6, 2)),
                be(p + 8, 8),
                be(p + 16, 8),
                static_cast<std::uint32_t>(be(p + 24, 4)),
                {}};
      pos += 28;
      if (r.type == static_cast<std::uint16_t>(Command::write)) {
        REQUIRE(pos + r.length <= bytes.size());
        r.payload = bytes.substr(pos, r.length);
        pos += r.length;
      }
      out.push_back(r);
    }
    REQUIRE(pos == bytes.size());
    return out;
  }
};

std::string reply(std::uint64_t cookie, std::uint32_t error = 0,
                  std::uint32_t magic = vb::nbd_wire::kSimpleReplyMagic) {
  std::uint8_t h[16];
  put_be(h, magic, 4);
  put_be(h + 4, error, 4);
  put_be(h + 8, cookie, 8);
  return std::string(reinterpret_cast<char *>(h), sizeof h);
}

} // namespace

TEST_CASE("nbd wire: requests are big-endian with the request magic, and replies decode only with the simple magic") {
  std::uint8_t out[vb::nbd_wire::kRequestSize];
  vb::nbd_wire::encode_request(out, Command::write_zeroes, vb::nbd_wire::kFlagNoHole, 0x0102030405060708ULL,
                               0x1122334455667788ULL, 0xAABBCCDD);
  CHECK(be(out, 4) == 0x25609513);
  CHECK(be(out + 4, 2) == 2);
  CHECK(be(out + 6, 2) == 6);
  CHECK(be(out + 8, 8) == 0x0102030405060708ULL);
  CHECK(be(out + 16, 8) == 0x1122334455667788ULL);
  CHECK(be(out + 24, 4) == 0xAABBCCDD);
  vb::nbd_wire::Reply r;
  const std::string good = reply(42, 5);
  REQUIRE(vb::nbd_wire::decode_reply(reinterpret_cast<const std::uint8_t *>(good.data()), r));
  CHECK(r.cookie == 42);
  CHECK(r.error == 5);
  const std::string structured = reply(42, 0, 0x668e33ef);
  CHECK_FALSE(vb::nbd_wire::decode_reply(reinterpret_cast<const std::uint8_t *>(structured.data()), r));
  CHECK(vb::nbd_wire::errno_of(0) == 0);
  CHECK(vb::nbd_wire::errno_of(28) == ENOSPC);
  CHECK(vb::nbd_wire::errno_of(108) == ESHUTDOWN);
  CHECK(vb::nbd_wire::errno_of(9999) == EIO); // unknown values are EIO, never passed through
}

TEST_CASE("nbd transport: a drain's commands go out in one flush, and replies come in any order, many per receive") {
  Pair pair;
  NbdTransport t(pair.client, &record);
  char rbuf[3][4096];
  std::string wdata(8192, 'w');
  int ctx[4];
  REQUIRE(t.issue(Command::read, 0, 0, 4096, rbuf[0], &ctx[0]));
  REQUIRE(t.issue(Command::write, 0, 8192, 8192, wdata.data(), &ctx[1]));
  REQUIRE(t.issue(Command::read, 0, 4096, 4096, rbuf[1], &ctx[2]));
  REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &ctx[3]));
  std::string why;
  REQUIRE(t.flush(why));
  CHECK_FALSE(t.want_write());
  const auto reqs = pair.requests();
  REQUIRE(reqs.size() == 4);
  CHECK(reqs[1].payload == wdata);
  CHECK(reqs[1].offset == 8192);
  CHECK(reqs[3].type == static_cast<std::uint16_t>(Command::flush));
  // Answered in reverse order, all in one write.
  std::string bytes = reply(reqs[3].cookie) + reply(reqs[2].cookie) + std::string(4096, 'B') +
                      reply(reqs[1].cookie, 28) + reply(reqs[0].cookie) + std::string(4096, 'A');
  pair.write_all(bytes.data(), bytes.size());
  REQUIRE(t.receive(why));
  REQUIRE(g_done.size() == 4);
  CHECK(g_done[0].ctx == &ctx[3]);
  CHECK(g_done[1].ctx == &ctx[2]);
  CHECK(g_done[2].ctx == &ctx[1]);
  CHECK(g_done[2].error == ENOSPC);
  CHECK(g_done[3].ctx == &ctx[0]);
  CHECK(std::all_of(rbuf[0], rbuf[0] + 4096, [](char c) { return c == 'A'; }));
  CHECK(std::all_of(rbuf[1], rbuf[1] + 4096, [](char c) { return c == 'B'; }));
  CHECK(t.in_flight() == 0);
}

TEST_CASE("nbd transport: a large read's payload arrives in pieces and lands whole") {
  Pair pair;
  NbdTransport t(pair.client, &record);
  std::vector<char> big(std::size_t{256} * 1024, 0);
  int ctx = 0;
  REQUIRE(t.issue(Command::read, 0, 0, static_cast<std::uint32_t>(big.size()), big.data(), &ctx));
  std::string why;
  REQUIRE(t.flush(why));
  const auto reqs = pair.requests();
  REQUIRE(reqs.size() == 1);
  std::string payload(big.size(), '\0');
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<char>(i * 7 + 3);
  const std::string bytes = reply(reqs[0].cookie) + payload;
  // In slices the size of nothing in particular, receiving after each.
  for (std::size_t pos = 0; pos < bytes.size();) {
    const std::size_t n = std::min<std::size_t>(10007, bytes.size() - pos);
    pair.write_all(bytes.data() + pos, n);
    pos += n;
    REQUIRE(t.receive(why));
  }
  REQUIRE(g_done.size() == 1);
  CHECK(g_done[0].error == 0);
  CHECK(std::memcmp(big.data(), payload.data(), big.size()) == 0);
}

TEST_CASE("nbd transport: hostile replies stop it without touching any buffer") {
  std::string why;
  char rbuf[4096];
  int ctx = 0;
  auto setup = [&](Pair &pair, NbdTransport &t) {
    std::memset(rbuf, 'x', sizeof rbuf);
    REQUIRE(t.issue(Command::read, 0, 0, sizeof rbuf, rbuf, &ctx));
    REQUIRE(t.flush(why));
    return pair.requests().at(0).cookie;
  };
  SUBCASE("a cookie not in flight") {
    Pair pair;
    NbdTransport t(pair.client, &record);
    const std::uint64_t cookie = setup(pair, t);
    const std::string bytes = reply(cookie ^ (1ULL << 32)) + std::string(4096, 'E'); // right slot, stale sequence
    pair.write_all(bytes.data(), bytes.size());
    CHECK_FALSE(t.receive(why));
    CHECK(why.find("not in flight") != std::string::npos);
  }
  SUBCASE("an index past the table") {
    Pair pair;
    NbdTransport t(pair.client, &record);
    setup(pair, t);
    const std::string bytes = reply(0xFFFFFFFFULL);
    pair.write_all(bytes.data(), bytes.size());
    CHECK_FALSE(t.receive(why));
  }
  SUBCASE("a structured reply that was never negotiated") {
    Pair pair;
    NbdTransport t(pair.client, &record);
    const std::uint64_t cookie = setup(pair, t);
    const std::string bytes = reply(cookie, 0, 0x668e33ef) + std::string(4096, 'E');
    pair.write_all(bytes.data(), bytes.size());
    CHECK_FALSE(t.receive(why));
    CHECK(why.find("not a simple reply") != std::string::npos);
  }
  SUBCASE("the end of the stream") {
    Pair pair;
    NbdTransport t(pair.client, &record);
    setup(pair, t);
    ::close(pair.server);
    pair.server = -1;
    CHECK_FALSE(t.receive(why));
    CHECK(why.find("closed") != std::string::npos);
  }
  CHECK(g_done.empty()); // nothing completed: the connection's loss requeues the read
  CHECK(std::all_of(rbuf, rbuf + sizeof rbuf, [](char c) { return c == 'x'; }));
}

TEST_CASE("nbd transport: a failed read completes with its error, no payload follows it, and the stream goes on") {
  Pair pair;
  NbdTransport t(pair.client, &record);
  char rbuf[4096];
  int ctx[2];
  REQUIRE(t.issue(Command::read, 0, 0, sizeof rbuf, rbuf, &ctx[0]));
  REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &ctx[1]));
  std::string why;
  REQUIRE(t.flush(why));
  const auto reqs = pair.requests();
  const std::string bytes = reply(reqs[0].cookie, 5) + reply(reqs[1].cookie);
  pair.write_all(bytes.data(), bytes.size());
  CHECK(t.receive(why));
  REQUIRE(g_done.size() == 2);
  CHECK(g_done[0].error == EIO);
  CHECK(g_done[1].error == 0);
}

TEST_CASE(
    "nbd transport: abandon() from a completion stops every later callback, and writes wait for writable sockets") {
  Pair pair;
  NbdTransport t(pair.client, &record);
  int ctx[2];
  REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &ctx[0]));
  REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &ctx[1]));
  std::string why;
  REQUIRE(t.flush(why));
  const auto reqs = pair.requests();
  const std::string bytes = reply(reqs[0].cookie) + reply(reqs[1].cookie);
  pair.write_all(bytes.data(), bytes.size());
  g_abandon_from = &t;
  CHECK(t.receive(why));
  CHECK(g_done.size() == 1); // the second reply was never dispatched
  CHECK(t.in_flight() == 0);

  // A socket that takes nothing more: the rest waits, want_write() says so.
  Pair full;
  int sz = 4096;
  REQUIRE(::setsockopt(full.client, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz) == 0);
  NbdTransport w(full.client, &record);
  std::string data(1 << 20, 'd');
  REQUIRE(w.issue(Command::write, 0, 0, static_cast<std::uint32_t>(data.size()), data.data(), &ctx[0]));
  REQUIRE(w.flush(why));
  CHECK(w.want_write());
  std::string got;
  while (w.want_write()) {
    got += full.read_some();
    REQUIRE(w.flush(why));
  }
  got += full.read_some();
  CHECK(got.size() == 28 + data.size());
  CHECK(got.substr(28) == data);
}

TEST_CASE("nbd transport: a fence takes back the commands not written yet, never one partly written") {
  std::string why;
  {
    Pair pair;
    NbdTransport t(pair.client, &record);
    int a = 0, b = 0;
    std::string data(4096, 'a');
    char rbuf[4096];
    REQUIRE(t.issue(Command::write, 0, 0, 4096, data.data(), &a));
    REQUIRE(t.issue(Command::read, 0, 4096, 4096, rbuf, &b));
    REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &a));
    CHECK(t.drop_unsent(&a) == 2);
    CHECK(t.in_flight() == 1);
    REQUIRE(t.flush(why));
    const auto reqs = pair.requests();
    REQUIRE(reqs.size() == 1);
    CHECK(reqs[0].type == static_cast<std::uint16_t>(Command::read));
    CHECK(g_done.empty()); // taken back without a callback: the caller completes them
  }
  {
    Pair full;
    int sz = 4096;
    REQUIRE(::setsockopt(full.client, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz) == 0);
    NbdTransport t(full.client, &record);
    int a = 0;
    std::string data(1 << 20, 'd');
    REQUIRE(t.issue(Command::write, 0, 0, static_cast<std::uint32_t>(data.size()), data.data(), &a));
    REQUIRE(t.flush(why));
    REQUIRE(t.want_write()); // partly written
    REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &a));
    CHECK(t.drop_unsent(&a) == 1); // the flush; the write must be finished
    std::string got;
    while (t.want_write()) {
      got += full.read_some();
      REQUIRE(t.flush(why));
    }
    got += full.read_some();
    CHECK(got.size() == 28 + data.size()); // the whole write and nothing after it
  }
}

TEST_CASE("nbd transport: thousands of replies arriving together are all completed, none left staged") {
  // A receive() stops after a bounded number of receive calls, never with parsed-but-unhandled
  // bytes staged: a level-triggered poll would not fire for those (the socket is empty).
  Pair pair;
  NbdTransport t(pair.client, &record);
  constexpr int kN = 3000;
  std::vector<int> ctx(kN);
  for (int i = 0; i < kN; ++i)
    REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &ctx[static_cast<std::size_t>(i)]));
  std::string why;
  REQUIRE(t.flush(why));
  const auto reqs = pair.requests();
  REQUIRE(reqs.size() == kN);
  std::string bytes;
  for (const auto &r : reqs)
    bytes += reply(r.cookie);
  pair.write_all(bytes.data(), bytes.size());
  for (int round = 0; round < 100 && g_done.size() < kN; ++round) {
    pollfd p{pair.client, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 0) == 1); // whatever is not completed yet is still in the socket
    REQUIRE(t.receive(why));
  }
  CHECK(g_done.size() == kN);
}

TEST_CASE("nbd transport: a reply for a command not fully written is refused") {
  // Cookies are guessable: a server that stops reading could answer a command still queued (or
  // a write whose payload is still going out), which would free a slot the queue points into.
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    Pair full;
    int sz = 4096;
    REQUIRE(::setsockopt(full.client, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz) == 0);
    NbdTransport t(full.client, &record);
    int a = 0, b = 0;
    std::string data(1 << 20, 'd'), why;
    REQUIRE(t.issue(Command::write, 0, 0, static_cast<std::uint32_t>(data.size()), data.data(), &a));
    REQUIRE(t.flush(why));
    REQUIRE(t.want_write());
    REQUIRE(t.issue(Command::flush, 0, 0, 0, nullptr, &b)); // queued, not written
    const std::string head = full.read_some().substr(0, 28);
    const std::uint64_t wcookie = be(reinterpret_cast<const std::uint8_t *>(head.data()) + 8, 8);
    // 0: the write's own cookie (payload partly out); 1: b's (slot 1, the next sequence).
    const std::uint64_t cookie = which == 0 ? wcookie : ((((wcookie >> 32) + 1) << 32) | 1);
    const std::string bytes = reply(cookie);
    full.write_all(bytes.data(), bytes.size());
    CHECK_FALSE(t.receive(why));
    CHECK(why.find("not in flight") != std::string::npos);
    CHECK(g_done.empty());
  }
}

TEST_CASE("nbd transport: scattered reads land in their pieces (staged and in place), scattered writes go out whole") {
  Pair pair;
  NbdTransport t(pair.client, &record);
  // A small read (staged, then copied) and a large one (received in place), both over three
  // pieces of odd sizes; a write from three pieces.
  std::vector<char> a(1000), b(3000), c(96), big1(20000), big2(30000), big3(15536);
  const iovec small_iov[3] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  const iovec big_iov[3] = {{big1.data(), big1.size()}, {big2.data(), big2.size()}, {big3.data(), big3.size()}};
  std::string w1(700, 'x'), w2(3000, 'y'), w3(396, 'z');
  const iovec w_iov[3] = {{w1.data(), w1.size()}, {w2.data(), w2.size()}, {w3.data(), w3.size()}};
  int ctx[3];
  REQUIRE(t.issue(Command::read, 0, 4096, small_iov, 3, &ctx[0]));
  REQUIRE(t.issue(Command::read, 4096, 65536, big_iov, 3, &ctx[1]));
  REQUIRE(t.issue(Command::write, 0, 4096, w_iov, 3, &ctx[2]));
  CHECK_FALSE(t.issue(Command::read, 0, 8192, small_iov, 3, &ctx[0])); // pieces too short: refused
  std::string why;
  REQUIRE(t.flush(why));
  const auto reqs = pair.requests();
  REQUIRE(reqs.size() == 3);
  CHECK(reqs[2].payload == w1 + w2 + w3);
  auto pattern = [](std::size_t n, int seed) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i)
      s[i] = static_cast<char>(i * 7 + static_cast<std::size_t>(seed));
    return s;
  };
  const std::string p0 = pattern(4096, 1), p1 = pattern(65536, 2);
  const std::string bytes = reply(reqs[0].cookie) + p0 + reply(reqs[1].cookie) + p1 + reply(reqs[2].cookie);
  for (std::size_t pos = 0; pos < bytes.size();) {
    const std::size_t n = std::min<std::size_t>(5000, bytes.size() - pos);
    pair.write_all(bytes.data() + pos, n);
    pos += n;
    REQUIRE(t.receive(why));
  }
  REQUIRE(g_done.size() == 3);
  CHECK(std::string(a.begin(), a.end()) + std::string(b.begin(), b.end()) + std::string(c.begin(), c.end()) == p0);
  CHECK(std::string(big1.begin(), big1.end()) + std::string(big2.begin(), big2.end()) +
            std::string(big3.begin(), big3.end()) ==
        p1);
}
