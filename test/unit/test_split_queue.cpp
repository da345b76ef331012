#include "ring_driver.h"
#include "virtio/split_queue.h"

#include <doctest/doctest.h>

#include <cstring>
#include <memory>
#include <string>

using vb::test::ArenaMemory;
using vb::test::Buf;
using vb::test::RingDriver;
using vb::virtio::Chain;
using vb::virtio::ChainError;
using vb::virtio::PopResult;
using vb::virtio::SplitQueue;

namespace {

struct Fixture {
  explicit Fixture(std::uint16_t num = 8, bool event_idx = false) : mem(1 << 20), drv(mem, num) {
    REQUIRE(q.start(mem, drv.layout(), 0, event_idx));
  }
  // Chains are big (fixed arrays): keep them off the stack.
  Chain &chain() { return *chain_; }

  ArenaMemory mem;
  RingDriver drv;
  SplitQueue q;
  std::unique_ptr<Chain> chain_ = std::make_unique<Chain>();
};

std::string bytes_of(const iovec &v) { return {static_cast<const char *>(v.iov_base), v.iov_len}; }

} // namespace

TEST_CASE("a direct chain is popped with readable then writable buffers, and completed on the used ring") {
  Fixture f;
  const auto hdr = f.drv.alloc(16), data = f.drv.alloc(4096), status = f.drv.alloc(1);
  std::memcpy(f.mem.ptr(hdr), "0123456789abcdef", 16);
  const auto head = f.drv.add_chain({{hdr, 16, false}, {data, 4096, true}, {status, 1, true}});

  CHECK(f.q.pending() == 1);
  REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
  const Chain &c = f.chain();
  CHECK(c.head == head);
  CHECK(c.num_readable == 1);
  CHECK(c.num_writable == 2);
  CHECK(c.readable_bytes == 16);
  CHECK(c.writable_bytes == 4097);
  CHECK(bytes_of(c.readable()[0]) == "0123456789abcdef");
  CHECK(c.writable()[0].iov_base == f.mem.ptr(data));
  CHECK(f.q.pop(f.chain()) == PopResult::empty);

  f.q.push(head, 4097);
  CHECK(f.drv.used_idx() == 1);
  CHECK(f.drv.used_elem(0).id == head);
  CHECK(f.drv.used_elem(0).len == 4097);
}

TEST_CASE("an indirect chain is walked through its table") {
  Fixture f;
  const auto hdr = f.drv.alloc(16), d1 = f.drv.alloc(512), d2 = f.drv.alloc(512), st = f.drv.alloc(1);
  const auto head = f.drv.add_indirect({{hdr, 16, false}, {d1, 512, true}, {d2, 512, true}, {st, 1, true}});
  REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
  CHECK(f.chain().head == head);
  CHECK(f.chain().num_readable == 1);
  CHECK(f.chain().num_writable == 3);
  CHECK(f.chain().writable_bytes == 1025);
}

TEST_CASE("a buffer spanning two mapped regions becomes two iovecs") {
  Fixture f;
  const auto data = f.drv.alloc(8192, 4096);
  f.mem.split_at(data + 1000);
  f.drv.add_chain({{data, 8192, false}});
  REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
  REQUIRE(f.chain().num_readable == 2);
  CHECK(f.chain().iov[0].iov_len == 1000);
  CHECK(f.chain().iov[1].iov_len == 7192);
  CHECK(f.chain().iov[1].iov_base == f.mem.ptr(data + 1000));
}

TEST_CASE("hostile chains fail that request only, with the reason") {
  // Each case builds one bad chain at head 0 and publishes it; a good chain follows, which must
  // still be served.
  SUBCASE("descriptor pointing at itself (loop)") {
    Fixture f;
    const auto st = f.drv.alloc(1);
    RingDriver::set_desc(f.drv.desc(0), st, 1, vb::virtio::kDescWrite | vb::virtio::kDescNext, 0);
    f.drv.publish(0);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::too_long);
    CHECK(f.chain().bad_status == nullptr); // no end: nowhere safe to write a status
    f.q.fail_bad_chain(f.chain(), 1);
    CHECK(f.drv.used_elem(0).len == 0);
  }
  SUBCASE("two descriptors in a cycle") {
    Fixture f;
    const auto b = f.drv.alloc(16);
    RingDriver::set_desc(f.drv.desc(0), b, 16, vb::virtio::kDescNext, 1);
    RingDriver::set_desc(f.drv.desc(1), b, 16, vb::virtio::kDescNext, 0);
    f.drv.publish(0);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::too_long);
  }
  SUBCASE("address outside guest memory") {
    Fixture f;
    const auto st = f.drv.alloc(1);
    f.drv.add_chain({{0xdead0000, 16, false}, {st, 1, true}});
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::unmapped);
    // The chain's end is intact and writable: the request can still be failed with IOERR.
    REQUIRE(f.chain().bad_status == f.mem.ptr(st));
    f.q.fail_bad_chain(f.chain(), 1);
    CHECK(*f.mem.ptr(st) == 1);
    CHECK(f.drv.used_elem(0).len == 1);
  }
  SUBCASE("address + length wraps around 64 bits") {
    Fixture f;
    f.drv.add_chain({{f.mem.end() - 8, 0xfffffff0u, false}});
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::unmapped);
  }
  SUBCASE("device-writable buffer in read-only memory") {
    Fixture f;
    const auto d = f.drv.alloc(4096, 4096);
    f.mem.read_only(d, d + 4096);
    f.drv.add_chain({{d, 4096, true}});
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::unmapped);
  }
  SUBCASE("readable after writable") {
    Fixture f;
    const auto a = f.drv.alloc(16), b = f.drv.alloc(16);
    f.drv.add_chain({{a, 16, true}, {b, 16, false}});
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::write_then_read);
  }
  SUBCASE("next index outside the table") {
    Fixture f;
    const auto a = f.drv.alloc(16);
    RingDriver::set_desc(f.drv.desc(0), a, 16, vb::virtio::kDescNext, 200);
    f.drv.publish(0);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::bad_next);
  }
  SUBCASE("chain longer than the limit") {
    Fixture f(1024);
    const auto a = f.drv.alloc(1);
    std::vector<Buf> bufs(vb::virtio::kMaxChainDescriptors + 1, Buf{a, 1, false});
    f.drv.add_chain(bufs);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::too_long);
  }
  SUBCASE("nested indirect table") {
    Fixture f;
    const auto inner = f.drv.alloc(16, 16), outer = f.drv.alloc(16, 16);
    RingDriver::set_desc(reinterpret_cast<vb::virtio::VringDesc *>(f.mem.ptr(outer)), inner, 16,
                         vb::virtio::kDescIndirect, 0);
    RingDriver::set_desc(f.drv.desc(0), outer, 16, vb::virtio::kDescIndirect, 0);
    f.drv.publish(0);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::nested_indirect);
  }
  SUBCASE("indirect table size not a multiple of 16, empty, or with NEXT") {
    Fixture f;
    const auto t = f.drv.alloc(64, 16);
    RingDriver::set_desc(f.drv.desc(0), t, 24, vb::virtio::kDescIndirect, 0);
    f.drv.publish(0);
    RingDriver::set_desc(f.drv.desc(1), t, 0, vb::virtio::kDescIndirect, 0);
    f.drv.publish(1);
    RingDriver::set_desc(f.drv.desc(2), t, 16, vb::virtio::kDescIndirect | vb::virtio::kDescNext, 3);
    f.drv.publish(2);
    RingDriver::set_desc(f.drv.desc(3), 0xdead0000, 16, vb::virtio::kDescIndirect, 0);
    f.drv.publish(3);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::bad_indirect);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::bad_indirect);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::indirect_next);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::bad_indirect);
  }
  SUBCASE("indirect table with a loop inside") {
    Fixture f;
    const auto t = f.drv.alloc(32, 16), a = f.drv.alloc(16);
    auto *tab = reinterpret_cast<vb::virtio::VringDesc *>(f.mem.ptr(t));
    RingDriver::set_desc(&tab[0], a, 16, vb::virtio::kDescNext, 1);
    RingDriver::set_desc(&tab[1], a, 16, vb::virtio::kDescNext, 0);
    RingDriver::set_desc(f.drv.desc(0), t, 32, vb::virtio::kDescIndirect, 0);
    f.drv.publish(0);
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::too_long);
  }
  SUBCASE("too many pieces after region splitting") {
    Fixture f;
    const auto a = f.drv.alloc(vb::virtio::kMaxChainIovecs + 10);
    for (unsigned k = 1; k < vb::virtio::kMaxChainIovecs + 10; ++k)
      f.mem.split_at(a + k);
    f.drv.add_chain({{a, vb::virtio::kMaxChainIovecs + 10, false}});
    REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
    CHECK(f.q.last_error() == ChainError::too_many_pieces);
  }
}

TEST_CASE("a bad chain does not stop the queue: the next good one is served") {
  Fixture f;
  const auto a = f.drv.alloc(16), st = f.drv.alloc(1);
  f.drv.add_chain({{0xdead0000, 16, false}, {st, 1, true}});
  const auto good = f.drv.add_chain({{a, 16, false}, {st, 1, true}});
  REQUIRE(f.q.pop(f.chain()) == PopResult::bad_chain);
  f.q.fail_bad_chain(f.chain(), 1);
  REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
  CHECK(f.chain().head == good);
}

TEST_CASE("a corrupt available ring reports broken without consuming anything") {
  SUBCASE("head index out of range") {
    Fixture f;
    f.drv.publish(77);
    CHECK(f.q.pop(f.chain()) == PopResult::broken);
    CHECK(f.q.next_avail() == 0);
  }
  SUBCASE("available index runs more than a ring ahead") {
    Fixture f;
    f.drv.set_avail_idx(9);
    CHECK(f.q.pop(f.chain()) == PopResult::broken);
  }
  SUBCASE("rings outside memory or misaligned cannot start") {
    ArenaMemory mem(1 << 16);
    RingDriver drv(mem, 8);
    SplitQueue q;
    auto layout = drv.layout();
    layout.used = 0x7000000;
    CHECK_FALSE(q.start(mem, layout, 0, false));
    layout = drv.layout();
    layout.desc += 8;
    CHECK_FALSE(q.start(mem, layout, 0, false));
    layout = drv.layout();
    layout.num = 12;
    CHECK_FALSE(q.start(mem, layout, 0, false));
  }
}

TEST_CASE("without EVENT_IDX the NO_INTERRUPT flag decides notification") {
  Fixture f;
  const auto a = f.drv.alloc(16);
  f.drv.add_chain({{a, 16, false}});
  REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
  f.q.push(f.chain().head, 0);
  CHECK(f.q.should_notify());
  *f.drv.avail().flags() = vb::virtio::kAvailNoInterrupt;
  CHECK_FALSE(f.q.should_notify());

  f.q.disable_notifications();
  CHECK(*f.drv.used().flags() == vb::virtio::kUsedNoNotify);
  CHECK_FALSE(f.q.enable_notifications());
  CHECK(*f.drv.used().flags() == 0);
  f.drv.add_chain({{a, 16, false}});
  CHECK(f.q.enable_notifications()); // a buffer arrived: pop before sleeping
}

TEST_CASE("EVENT_IDX: interrupt only when used_event is crossed, across 16-bit wraparound") {
  Fixture f(8, true);
  const auto a = f.drv.alloc(16);
  // Start both sides near the 16-bit wrap so that the indices overflow during the test.
  const std::uint16_t start = 65530;
  f.drv.set_avail_idx(start);
  *f.drv.used().idx() = start;
  REQUIRE(f.q.start(f.mem, f.drv.layout(), start, true));

  auto complete_one = [&] {
    f.drv.add_chain({{a, 16, false}});
    REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
    f.q.push(f.chain().head, 0);
  };
  complete_one();
  CHECK(f.q.should_notify()); // first check always notifies

  // The driver asks to be told when used idx passes start + 3.
  f.drv.used_event() = static_cast<std::uint16_t>(start + 3);
  complete_one(); // used = start+2
  CHECK_FALSE(f.q.should_notify());
  complete_one(); // used = start+3
  CHECK_FALSE(f.q.should_notify());
  complete_one(); // used = start+4: crosses used_event
  CHECK(f.q.should_notify());
  complete_one();
  CHECK_FALSE(f.q.should_notify());
  for (int k = 0; k < 10; ++k) { // far past the wrap
    f.drv.used_event() = f.q.used_idx();
    complete_one();
    CHECK(f.q.should_notify());
  }
  CHECK(f.q.used_idx() == static_cast<std::uint16_t>(start + 15));

  // Kick suppression: avail_event tells the driver where we are.
  CHECK_FALSE(f.q.enable_notifications());
  CHECK(f.drv.avail_event() == f.q.next_avail());
}

TEST_CASE("restart from a saved position: already consumed heads are not popped again") {
  Fixture f;
  const auto a = f.drv.alloc(16);
  f.drv.add_chain({{a, 16, false}});
  const auto second = f.drv.add_chain({{a, 16, false}});
  SplitQueue q2;
  REQUIRE(q2.start(f.mem, f.drv.layout(), 1, false));
  auto chain = std::make_unique<Chain>();
  REQUIRE(q2.pop(*chain) == PopResult::ok);
  CHECK(chain->head == second);
  CHECK(q2.pop(*chain) == PopResult::empty);
}

TEST_CASE("an indirect table of the maximum length is accepted but one more buffer is refused") {
  Fixture f;
  const auto a = f.drv.alloc(512);
  std::vector<Buf> bufs(vb::virtio::kMaxChainDescriptors, Buf{a, 512, false});
  f.drv.add_indirect(bufs);
  REQUIRE(f.q.pop(f.chain()) == PopResult::ok);
  CHECK(f.chain().num_readable == vb::virtio::kMaxChainDescriptors);
  // Direct descriptor + full indirect table: one buffer too many.
  Fixture g(512);
  const auto b = g.drv.alloc(512);
  const auto t = g.drv.alloc(16ULL * vb::virtio::kMaxChainDescriptors, 16);
  auto *tab = reinterpret_cast<vb::virtio::VringDesc *>(g.mem.ptr(t));
  for (unsigned k = 0; k < vb::virtio::kMaxChainDescriptors; ++k)
    RingDriver::set_desc(&tab[k], b, 512, k + 1 < vb::virtio::kMaxChainDescriptors ? vb::virtio::kDescNext : 0,
                         static_cast<std::uint16_t>(k + 1));
  RingDriver::set_desc(g.drv.desc(0), b, 16, vb::virtio::kDescNext, 1);
  RingDriver::set_desc(g.drv.desc(1), t, 16 * vb::virtio::kMaxChainDescriptors, vb::virtio::kDescIndirect, 0);
  g.drv.publish(0);
  REQUIRE(g.q.pop(g.chain()) == PopResult::bad_chain);
  CHECK(g.q.last_error() == ChainError::too_long);
}
