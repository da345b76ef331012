// iSCSI multipath against a real tgtd: one LUN reached through two paths (a proxy each, which a
// test can cut), traffic verified through the backend and in the backing file.
#include "backend_events.h"
#include "backend_fixture.h"
#include "common/log.h"
#include "event/event_loop.h"
#include "iscsi/iscsi_backend.h"
#include "iscsi/iscsi_multipath.h"
#include "iscsi_test_proxy.h"
#include "loop_wait.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using vb::test::have_tgtd;
using vb::test::kNoTgtd;
using vb::test::options_for;
using vb::test::pattern;
using vb::test::port_of;
using vb::test::Result;
using vb::test::run_for;
using vb::test::run_until;
using vb::test::rw;
using vb::test::stored;
using vb::test::TempDir;
using vb::test::TgtdServer;
using vb::test::UnitAttentionProxy;

namespace {

constexpr std::uint64_t kLunBytes = 8 << 20;
constexpr std::size_t kBlock = 4096;
constexpr unsigned kBatch = 16;

std::string portal_of(const UnitAttentionProxy &proxy) { return "127.0.0.1:" + std::to_string(proxy.port()); }

// tgtd with LUN 1, two proxies in front of it (path 0: a, path 1: b), an iscsi backend over both.
struct TwoPaths {
  explicit TwoPaths(vb::IscsiOptions::PathPolicy policy, std::chrono::milliseconds reconnect_timeout = 20s,
                    const std::function<void(vb::IscsiOptions &)> &adjust = {}) {
    tgt.add_lun(1, kLunBytes);
    a = std::make_unique<UnitAttentionProxy>(port_of(tgt));
    b = std::make_unique<UnitAttentionProxy>(port_of(tgt));
    auto o = options_for(vb::test::through(*a, tgt));
    o.portals = {portal_of(*b)};
    o.path_policy = policy;
    o.request_timeout = 0ms;
    o.reconnect_timeout = reconnect_timeout;
    if (adjust)
      adjust(o);
    disk = std::make_unique<vb::test::OpenedBackend<vb::IscsiBackend>>(o);
  }
  vb::IscsiPathSet &set() { return dynamic_cast<vb::IscsiPathSet &>(*disk->q); }
  vb::EventLoop &loop() { return disk->loop; }
  // Until both paths are ready again (a restored path logs in after its backoff).
  void wait_both() {
    for (int i = 0; i < 200 && set().ready_paths() < 2; ++i)
      run_for(loop(), 50ms);
    REQUIRE(set().ready_paths() == 2);
  }

  TempDir dir;
  TgtdServer tgt{dir};
  std::unique_ptr<UnitAttentionProxy> a, b;
  std::unique_ptr<vb::test::OpenedBackend<vb::IscsiBackend>> disk;
};

// kBatch writes of seed's pattern at blocks [first, first + kBatch), all in flight at once;
// during() runs once they are on the wire. Then each block is read back through the backend.
// Returns the number of requests that failed (0 expected).
template <typename During> unsigned batch(TwoPaths &p, unsigned seed, std::uint64_t first, During during) {
  std::vector<std::vector<char>> data;
  std::vector<iovec> iov(kBatch);
  std::vector<Result> done(kBatch);
  for (unsigned i = 0; i < kBatch; ++i)
    data.push_back(pattern(kBlock, seed * 100 + i));
  for (unsigned i = 0; i < kBatch; ++i)
    REQUIRE(p.disk->q->submit(rw(vb::Op::write, (first + i) * kBlock, data[i], iov[i]), &Result::on_done, &done[i]) ==
            0);
  p.loop().run_once(false); // sent
  during();
  run_until(p.loop(), [&] {
    for (const Result &r : done)
      if (r.calls == 0)
        return false;
    return true;
  });
  unsigned failed = 0;
  for (const Result &r : done) {
    CHECK(r.calls == 1);
    failed += r.error != 0 ? 1 : 0;
  }
  for (unsigned i = 0; i < kBatch; ++i) {
    std::vector<char> in(kBlock);
    iovec v{};
    const int rc = p.disk->run(rw(vb::Op::read, (first + i) * kBlock, in, v));
    failed += rc != 0 ? 1 : 0;
    CHECK(in == data[i]);
    CHECK(stored(p.tgt.backing_file(1), (first + i) * kBlock, kBlock) == data[i]);
  }
  return failed;
}

unsigned batch(TwoPaths &p, unsigned seed, std::uint64_t first) {
  return batch(p, seed, first, [] {});
}

} // namespace

TEST_CASE("iscsi multipath, failover policy: I/O on the first path, cut under load it moves to the second "
          "without an error, and fails back") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TwoPaths p(vb::IscsiOptions::PathPolicy::failover);
  p.wait_both();
  const std::size_t b_idle = p.b->forwarded();
  CHECK(batch(p, 1, 0) == 0);
  CHECK(p.b->forwarded() == b_idle); // only the first path carries I/O

  const std::size_t b_before = p.b->forwarded();
  CHECK(batch(p, 2, 0, [&] { p.a->cut(); }) == 0); // the same blocks again: the new data is what is kept
  CHECK(p.set().failovers() > 0);
  CHECK(p.b->forwarded() > b_before);
  CHECK(p.set().ready_paths() == 1);
  CHECK(vb::test::events_of(p.disk->backend).health().state == vb::BackendEvents::State::connected);
  {
    const auto paths = p.disk->backend.paths(); // what status shows
    REQUIRE(paths.size() == 2);
    CHECK(paths[0].name == portal_of(*p.a));
    CHECK(paths[0].sessions == 1);
    CHECK(paths[0].failovers == p.set().failovers());
    CHECK(paths[0].last_error.find("session lost") != std::string::npos);
    CHECK(paths[1].sessions_up == 1);
    CHECK(paths[1].failovers == 0);
  }

  p.a->restore();
  p.wait_both();
  CHECK(p.disk->backend.paths()[0].sessions_up == 1);
  const std::size_t b_back = p.b->forwarded();
  const std::size_t a_back = p.a->forwarded();
  CHECK(batch(p, 3, 64) == 0);
  CHECK(p.a->forwarded() > a_back); // failed back
  CHECK(p.b->forwarded() == b_back);
}

TEST_CASE("iscsi multipath, round-robin: both paths carry I/O, and one cut leaves the other with all of it") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TwoPaths p(vb::IscsiOptions::PathPolicy::round_robin);
  p.wait_both();
  const std::size_t a0 = p.a->forwarded(), b0 = p.b->forwarded();
  CHECK(batch(p, 1, 0) == 0);
  CHECK(p.a->forwarded() > a0);
  CHECK(p.b->forwarded() > b0);
  CHECK(batch(p, 2, 32, [&] { p.b->cut(); }) == 0);
  CHECK(p.set().failovers() > 0);
  const std::size_t b_cut = p.b->forwarded();
  CHECK(batch(p, 3, 64) == 0);
  CHECK(p.b->forwarded() == b_cut);
}

TEST_CASE("iscsi multipath: both paths cut and restored one after the other under load, three times: no error") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TwoPaths p(vb::IscsiOptions::PathPolicy::failover);
  p.wait_both();
  unsigned seed = 10;
  for (int cycle = 0; cycle < 3; ++cycle) {
    for (UnitAttentionProxy *path : {p.a.get(), p.b.get()}) {
      CHECK(batch(p, ++seed, 0, [&] { path->cut(); }) == 0);
      CHECK(p.set().ready_paths() == 1);
      path->restore();
      p.wait_both();
      CHECK(batch(p, ++seed, 16) == 0);
    }
  }
  CHECK(p.set().failovers() > 0);
}

TEST_CASE("iscsi multipath: with every path cut, I/O is held and goes out on the first path back") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TwoPaths p(vb::IscsiOptions::PathPolicy::failover);
  p.wait_both();
  CHECK(batch(p, 1, 0, [&] {
          p.a->cut();
          p.b->cut();
          run_for(p.loop(), 500ms); // held meanwhile, not failed
          CHECK(p.set().ready_paths() == 0);
          CHECK(vb::test::events_of(p.disk->backend).health().state == vb::BackendEvents::State::reconnecting);
          p.b->restore();
        }) == 0);
  CHECK(p.set().ready_paths() >= 1);
}

TEST_CASE("iscsi multipath: with no path for longer than reconnect-timeout, held I/O fails with EIO") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TwoPaths p(vb::IscsiOptions::PathPolicy::failover, 1s);
  p.wait_both();
  std::vector<char> out = pattern(kBlock, 5);
  iovec v{};
  Result r;
  p.a->cut();
  p.b->cut();
  REQUIRE(p.disk->q->submit(rw(vb::Op::write, 0, out, v), &Result::on_done, &r) == 0);
  run_until(p.loop(), [&] { return r.calls > 0; });
  CHECK(r.error == EIO);
  CHECK(vb::test::events_of(p.disk->backend).health().state == vb::BackendEvents::State::failing);
  CHECK(p.disk->q->submit(rw(vb::Op::write, 0, out, v), &Result::on_done, &r) == EIO); // at once now
  p.a->restore();
  for (int i = 0; i < 200 && p.set().ready_paths() == 0; ++i)
    run_for(p.loop(), 50ms);
  CHECK(p.disk->run(rw(vb::Op::write, 0, out, v)) == 0);
}

TEST_CASE("iscsi multipath: a path that shows another LUN is refused and never carries I/O") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TempDir dir, other_dir;
  TgtdServer tgt{dir};
  tgt.add_lun(1, kLunBytes);
  TgtdServer other{other_dir}; // the same target name and LUN number, another logical unit
  other.add_lun(1, kLunBytes, 512, "scsi_id=vb-other-lun,scsi_sn=vbother01");
  {
    vb::test::OpenedBackend<vb::IscsiBackend> probe_a(options_for(tgt.uri(1)));
    vb::test::OpenedBackend<vb::IscsiBackend> probe_b(options_for(other.uri(1)));
    REQUIRE_MESSAGE(probe_a.backend.lun().identity != probe_b.backend.lun().identity,
                    "the second tgtd must show another identity for the test to mean anything");
  }
  UnitAttentionProxy a(port_of(tgt)), b(port_of(other));
  auto o = options_for(vb::test::through(a, tgt));
  o.portals = {portal_of(b)};
  o.request_timeout = 0ms;
  vb::test::OpenedBackend<vb::IscsiBackend> disk(o);
  auto &set = dynamic_cast<vb::IscsiPathSet &>(*disk.q);
  run_for(disk.loop, 1500ms); // path 1 has logged in, been checked and refused by now
  CHECK(set.ready_paths() == 1);
  CHECK(disk.backend.paths()[1].sessions_up == 0);
  CHECK(disk.backend.paths()[1].last_error.find("different LUN") != std::string::npos);

  std::vector<char> out = pattern(kBlock, 7);
  iovec v{};
  Result r;
  REQUIRE(disk.q->submit(rw(vb::Op::write, 0, out, v), &Result::on_done, &r) == 0);
  disk.loop.run_once(false);
  a.cut(); // the only good path: the write waits rather than go to the other LUN
  run_for(disk.loop, 1s);
  CHECK(set.ready_paths() == 0);
  a.restore();
  run_until(disk.loop, [&] { return r.calls > 0; });
  CHECK(r.error == 0);
  CHECK(stored(tgt.backing_file(1), 0, kBlock) == out);
  CHECK(stored(other.backing_file(1), 0, kBlock) == std::vector<char>(kBlock, 0));
}

// A path that hangs (frozen: the link stays up, nothing comes back) with no request-timeout: only
// the path checker notices. Its NOP-Out goes unanswered, the session counts as lost, and the
// writes it held go out on the other path.
TEST_CASE("iscsi multipath: a hung path is found by its NOP-Out and its writes complete on the other path") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TwoPaths p(vb::IscsiOptions::PathPolicy::failover, 20s, [](vb::IscsiOptions &o) {
    o.nop_interval = 500ms;
    o.nop_timeout = 1s;
  });
  p.wait_both();
  const std::size_t on_b = p.b->forwarded();
  const auto start = std::chrono::steady_clock::now();
  // Frozen before the writes go out, so that all of them are held on it: frozen after, a loaded
  // machine lets the target answer most of them first, and fewer than the batch go again.
  p.a->freeze();
  CHECK(batch(p, 7, 0) == 0);
  const auto took = std::chrono::steady_clock::now() - start;
  MESSAGE("a hung path's writes completed on the other path after "
          << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < 5s); // at most nop-interval + nop-timeout + a tick, and the resend
  CHECK(p.set().failovers() >= 1);
  CHECK(p.b->forwarded() > on_b + kBatch * kBlock); // the writes went again on path 1
  p.a->release();
}

// The "a path frozen": its writes are sent again on the other path once request-timeout
// gives up on it, and with fencing: persistent-reservation its key is preempted from the live path
// first, so their first copies, delivered late, are refused instead of undoing a newer write.
TEST_CASE("iscsi multipath with fencing: a frozen path's write goes out on the other path, and its late copy is "
          "refused") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TempDir dir;
  TgtdServer tgt{dir};
  tgt.add_lun(1, kLunBytes);
  UnitAttentionProxy a(port_of(tgt)), b(port_of(tgt));
  auto o = options_for(vb::test::through(a, tgt));
  o.portals = {portal_of(b)};
  o.request_timeout = 1s;
  o.fencing = vb::IscsiOptions::Fencing::persistent_reservation;
  vb::test::OpenedBackend<vb::IscsiBackend> disk(o);
  auto &set = dynamic_cast<vb::IscsiPathSet &>(*disk.q);
  for (int i = 0; i < 200 && set.ready_paths() < 2; ++i)
    run_for(disk.loop, 50ms);
  REQUIRE(set.ready_paths() == 2);
  std::vector<char> first = pattern(kBlock, 1), late = pattern(kBlock, 2), newer = pattern(kBlock, 3);
  iovec v1{}, v2{}, v3{};
  CHECK(disk.run(rw(vb::Op::write, 0, first, v1)) == 0);

  a.freeze(); // path 0 (failover: the one in use) hangs with the write inside
  Result r;
  REQUIRE(disk.q->submit(rw(vb::Op::write, 0, late, v2), &Result::on_done, &r) == 0);
  run_until(disk.loop, [&] { return r.calls > 0; });
  CHECK(r.error == 0);
  CHECK(set.failovers() > 0);
  CHECK(disk.run(rw(vb::Op::write, 0, newer, v3)) == 0);
  CHECK(stored(tgt.backing_file(1), 0, kBlock) == newer);

  a.release();
  for (int i = 0; i < 100 && a.released_bytes() == 0 && a.released_to_closed() == 0; ++i)
    run_for(disk.loop, 20ms);
  CHECK(a.released_bytes() > 0);
  run_for(disk.loop, 500ms);
  CHECK(stored(tgt.backing_file(1), 0, kBlock) == newer); // the late copy was refused
}

TEST_CASE("iscsi multipath with fencing: a write that failed before its path could be fenced leaves its key to "
          "preempt, and no write goes out until it is") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TempDir dir;
  TgtdServer tgt{dir};
  tgt.add_lun(1, kLunBytes);
  UnitAttentionProxy a(port_of(tgt)), b(port_of(tgt));
  auto o = options_for(vb::test::through(a, tgt));
  o.portals = {portal_of(b)};
  o.request_timeout = 1s;
  o.reconnect_timeout = 2s;
  o.fencing = vb::IscsiOptions::Fencing::persistent_reservation;
  vb::test::OpenedBackend<vb::IscsiBackend> disk(o);
  auto &set = dynamic_cast<vb::IscsiPathSet &>(*disk.q);
  for (int i = 0; i < 200 && set.ready_paths() < 2; ++i)
    run_for(disk.loop, 50ms);
  REQUIRE(set.ready_paths() == 2);
  std::vector<char> first = pattern(kBlock, 1), late = pattern(kBlock, 2), newer = pattern(kBlock, 3);
  iovec v1{}, v2{}, v3{};
  CHECK(disk.run(rw(vb::Op::write, 0, first, v1)) == 0);

  // Path 1 gone; path 0 (in use) hangs with a write inside and its portal takes no new login:
  // no live path can preempt path 0's key, and the write fails at reconnect-timeout.
  b.cut();
  a.freeze();
  a.refuse_new();
  Result r;
  REQUIRE(disk.q->submit(rw(vb::Op::write, 0, late, v2), &Result::on_done, &r) == 0);
  run_until(disk.loop, [&] { return r.calls > 0; });
  CHECK(r.error == EIO);

  // Path 1 back: a newer write to the same block goes out once path 0's key is preempted.
  b.restore();
  for (int i = 0; i < 300 && set.ready_paths() < 1; ++i)
    run_for(disk.loop, 50ms);
  REQUIRE(set.ready_paths() == 1);
  CHECK(disk.run(rw(vb::Op::write, 0, newer, v3)) == 0);
  CHECK(stored(tgt.backing_file(1), 0, kBlock) == newer);

  // The failed write's first copy reaches the target now, on path 0's old nexus: refused.
  a.release();
  for (int i = 0; i < 100 && a.released_bytes() == 0 && a.released_to_closed() == 0; ++i)
    run_for(disk.loop, 20ms);
  CHECK(a.released_bytes() > 0);
  run_for(disk.loop, 500ms);
  CHECK(stored(tgt.backing_file(1), 0, kBlock) == newer);
}
