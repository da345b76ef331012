// The NBD server's byte stream as the own transmission path (backends/nbd/nbd_transport.h)
// receives it. The input picks up to 16 commands (reads of sizes from 0 to 256 KiB into buffers of
// exactly that size, so ASan sees any write past one, writes, flushes), then a script of replies:
// well-formed ones for a chosen command (so that deep states are reached), replies with stale or
// made-up cookies, raw bytes; delivered in slices of chosen sizes with a receive() after each.
// Invariants: no command completes twice, a read completes without error only with every byte
// of its payload delivered (unless raw bytes may have carried one), and nothing completes after
// the transport reported failure or was abandoned.
#include "fuzz_util.h"
#include "nbd/nbd_transport.h"

#include <memory>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

struct Slot {
  vb::nbd_wire::Command type{};
  std::uint32_t length = 0;
  std::unique_ptr<char[]> buffer;
  std::uint64_t cookie = 0;
  unsigned completions = 0;
  std::uint32_t delivered = 0; // payload bytes the script sent for its successful read reply
  bool answered_ok = false;    // the script sent a whole successful reply for it
};
std::vector<Slot> *g_slots = nullptr;
bool g_stopped = false;
bool g_raw = false; // raw bytes were sent: they may hold a reply the script did not account for

void on_done(void *ctx, int error) noexcept {
  FUZZ_CHECK(!g_stopped);
  auto *s = static_cast<Slot *>(ctx);
  ++s->completions;
  FUZZ_CHECK(s->completions == 1);
  if (error == 0 && s->type == vb::nbd_wire::Command::read && !g_raw)
    FUZZ_CHECK(s->delivered == s->length);
}

void put_be(std::string &out, std::uint64_t v, unsigned n) {
  for (unsigned i = 0; i < n; ++i)
    out.push_back(static_cast<char>(v >> (8 * (n - 1 - i))));
}

std::uint64_t be(const std::uint8_t *p, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < n; ++i)
    v = (v << 8) | p[i];
  return v;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const vb::fuzz::Fields in(data, size);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0)
    return 0;
  int big = 1 << 20;
  ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  ::setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  std::vector<Slot> slots(1 + in.u8(0) % 16);
  g_slots = &slots;
  g_stopped = false;
  g_raw = false;
  {
    vb::NbdTransport t(fds[0], &on_done);
    static constexpr std::uint32_t kSizes[] = {0, 512, 4096, 8192, 16384, 65536, 131072, 262144};
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const std::uint8_t pick = in.u8(1 + i);
      Slot &s = slots[i];
      s.type = (pick & 3) == 3   ? vb::nbd_wire::Command::flush
               : (pick & 3) == 2 ? vb::nbd_wire::Command::write
                                 : vb::nbd_wire::Command::read;
      s.length = s.type == vb::nbd_wire::Command::flush ? 0 : kSizes[(pick >> 2) % 8];
      s.buffer = std::make_unique<char[]>(s.length ? s.length : 1);
      FUZZ_CHECK(t.issue(s.type, 0, 0, s.length, s.length ? s.buffer.get() : nullptr, &s));
    }
    // Read the requests back for their cookies (the server's view), flushing again while the
    // socket was full.
    std::string why;
    std::string sent;
    for (bool more = true; more;) {
      FUZZ_CHECK(t.flush(why));
      more = t.want_write();
      char buf[65536];
      ssize_t r;
      while ((r = ::recv(fds[1], buf, sizeof buf, MSG_DONTWAIT)) > 0)
        sent.append(buf, static_cast<std::size_t>(r));
    }
    std::size_t pos = 0;
    for (Slot &s : slots) {
      FUZZ_CHECK(pos + 28 <= sent.size());
      s.cookie = be(reinterpret_cast<const std::uint8_t *>(sent.data()) + pos + 8, 8);
      pos += 28 + (s.type == vb::nbd_wire::Command::write ? s.length : 0);
    }

    // The script, from byte 17 on: [op][arg][slice] records.
    std::size_t at = 17;
    bool alive = true;
    while (alive && at < size) {
      const std::uint8_t op = in.u8(at), arg = in.u8(at + 1), slice = in.u8(at + 2);
      at += 3;
      std::string out;
      Slot &s = slots[arg % slots.size()];
      switch (op % 4) {
      case 0:
      case 1: { // a reply for slot s, error 0 (op 0) or arg-chosen (op 1), payload for a successful read
        const std::uint32_t error = op % 4 == 0 ? 0 : arg >> 4;
        put_be(out, vb::nbd_wire::kSimpleReplyMagic, 4);
        put_be(out, error, 4);
        put_be(out, s.cookie, 8);
        if (s.type == vb::nbd_wire::Command::read && error == 0 && s.completions == 0 && !s.answered_ok) {
          out.append(s.length, static_cast<char>(arg));
          s.delivered = s.length;
          s.answered_ok = true;
        }
        break;
      }
      case 2: // a stale cookie (the slot's index, another sequence) or a made-up one
        put_be(out, vb::nbd_wire::kSimpleReplyMagic, 4);
        put_be(out, 0, 4);
        put_be(out, arg & 1 ? (s.cookie ^ (std::uint64_t{arg} << 32)) : in.u32(at), 8);
        break;
      default: { // raw bytes from the input
        const std::size_t n = std::min<std::size_t>(arg, in.tail_size(at));
        out.append(reinterpret_cast<const char *>(in.tail(at)), n);
        at += n;
        g_raw = g_raw || n > 0;
      }
      }
      // Delivered in slices of 1..256 bytes times 64, receive() after each.
      const std::size_t step = (std::size_t{slice} + 1) * 64;
      for (std::size_t p = 0; alive && p < out.size(); p += step) {
        const std::size_t n = std::min(step, out.size() - p);
        if (::send(fds[1], out.data() + p, n, MSG_NOSIGNAL) != static_cast<ssize_t>(n)) {
          alive = false;
          break;
        }
        if (!t.receive(why)) {
          alive = false;
          g_stopped = true;
        }
      }
    }
    if (alive && in.u8(size ? size - 1 : 0) & 1) { // sometimes: the server hangs up
      ::close(fds[1]);
      fds[1] = -1;
      FUZZ_CHECK(!t.receive(why));
      g_stopped = true;
    }
    t.abandon();
    g_stopped = true;
    FUZZ_CHECK(t.in_flight() == 0);
  }
  ::close(fds[0]);
  if (fds[1] >= 0)
    ::close(fds[1]);
  g_slots = nullptr;
  return 0;
}
