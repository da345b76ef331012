// fencing: persistent-reservation against a real tgtd, command by command: what the device's
// logins register, preempt and reserve, and what a fenced nexus can still do. (The races it is
// for, a late copy of a resent write, are in iscsi_backend and iscsi_multipath.)
#include "backend_fixture.h"
#include "iscsi/iscsi_backend.h"
#include "iscsi/iscsi_fencing.h"
#include "iscsi/iscsi_target.h"
#include "iscsi_test_proxy.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using vb::test::have_tgtd;
using vb::test::kNoTgtd;
using vb::test::options_for;
using vb::test::TempDir;
using vb::test::TgtdServer;

namespace {

struct TaskFree {
  void operator()(scsi_task *t) const noexcept { scsi_free_scsi_task(t); }
};
using Task = std::unique_ptr<scsi_task, TaskFree>;

// A context of its own on LUN 1 (another initiator when initiator is given), logged in.
struct Nexus {
  Nexus(const vb::IscsiOptions &o, unsigned session, const std::string &initiator = {}) : options(o) {
    if (!initiator.empty())
      options.initiator_name = initiator;
    uri = vb::parse_iscsi_uri(options.uri);
    ctx = vb::make_iscsi_context(options, uri, session);
    vb::login_and_probe(ctx, uri, options);
  }
  ~Nexus() { iscsi_destroy_context(ctx); }
  Nexus(const Nexus &) = delete;
  Nexus &operator=(const Nexus &) = delete;

  // PERSISTENT RESERVE IN, again while it reports a UNIT ATTENTION (registration changes do).
  Task pr_in(int action, int bytes) {
    for (int i = 0;; ++i) {
      Task t(iscsi_persistent_reserve_in_sync(ctx, uri.lun, action, bytes));
      REQUIRE(t);
      if (t->status != SCSI_STATUS_CHECK_CONDITION || t->sense.key != SCSI_SENSE_UNIT_ATTENTION || i > 8)
        return t;
    }
  }
  std::vector<std::uint64_t> keys() {
    Task t = pr_in(SCSI_PERSISTENT_RESERVE_READ_KEYS, 4096);
    REQUIRE(t->status == SCSI_STATUS_GOOD);
    std::vector<std::uint64_t> out;
    REQUIRE(vb::parse_pr_keys(t->datain.data, static_cast<std::size_t>(t->datain.size), out));
    return out;
  }
  vb::PrReservation reservation() {
    Task t = pr_in(SCSI_PERSISTENT_RESERVE_READ_RESERVATION, 24);
    REQUIRE(t->status == SCSI_STATUS_GOOD);
    vb::PrReservation r;
    REQUIRE(vb::parse_pr_reservation(t->datain.data, static_cast<std::size_t>(t->datain.size), r));
    return r;
  }
  void register_key(std::uint64_t key) {
    scsi_persistent_reserve_out_basic p{};
    p.service_action_reservation_key = key;
    Task t(iscsi_persistent_reserve_out_sync(ctx, uri.lun, SCSI_PERSISTENT_RESERVE_REGISTER_AND_IGNORE_EXISTING_KEY,
                                             SCSI_PERSISTENT_RESERVE_SCOPE_LU, 0, &p));
    REQUIRE(t);
    CHECK(t->status == SCSI_STATUS_GOOD);
  }
  // WRITE(10) of one block of zeros at LBA 0: its SCSI status, after the UNIT ATTENTIONs.
  int write_status() {
    std::vector<unsigned char> block(512, 0);
    for (int i = 0;; ++i) {
      Task t(iscsi_write10_sync(ctx, uri.lun, 0, block.data(), static_cast<std::uint32_t>(block.size()), 512, 0, 0, 0,
                                0, 0));
      REQUIRE(t);
      if (t->status != SCSI_STATUS_CHECK_CONDITION || t->sense.key != SCSI_SENSE_UNIT_ATTENTION || i > 8)
        return t->status;
    }
  }
  // One PrSteps sequence run to its end on this context.
  bool run(vb::PrSteps &steps, const std::function<bool(vb::PrSteps::Done)> &start, std::string &why) {
    bool done = false, ok = false;
    REQUIRE(start([&](bool o, const std::string &w) {
      done = true;
      ok = o;
      why = w;
    }));
    std::string poll_why;
    REQUIRE(vb::poll_context_until(
        ctx, [&] { return done; }, 10, {}, poll_why));
    (void)steps;
    return ok;
  }

  vb::IscsiOptions options;
  vb::IscsiUri uri;
  iscsi_context *ctx = nullptr;
};

bool has(const std::vector<std::uint64_t> &keys, std::uint64_t k) {
  return std::find(keys.begin(), keys.end(), k) != keys.end();
}

vb::IscsiOptions fenced_options(TgtdServer &tgt) {
  auto o = options_for(tgt.uri(1));
  o.fencing = vb::IscsiOptions::Fencing::persistent_reservation;
  return o;
}

} // namespace

TEST_CASE("iscsi reservations: a device's first login fences what this host left registered (other hosts' keys "
          "stay), and a clean close unregisters") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TempDir dir;
  TgtdServer tgt{dir};
  tgt.add_lun(1, 4 << 20);
  const auto o = fenced_options(tgt);
  const std::uint32_t owner = vb::pr_owner(o, vb::parse_iscsi_uri(o.uri));
  // A daemon that died left a key in a slot no longer configured (queue 40), on a live nexus.
  Nexus stale(o, 40);
  const std::uint64_t stale_key = vb::pr_key({owner, 40}, 9);
  stale.register_key(stale_key);
  // Another host (another initiator name: another owner) shares the LUN with fencing too.
  Nexus other(o, 41, "iqn.2026-11.org.vduse-bridge.test:other-host");
  const std::uint64_t other_key = vb::pr_key({vb::pr_owner(other.options, other.uri), 0}, 1);
  other.register_key(other_key);
  REQUIRE(stale.write_status() == SCSI_STATUS_GOOD);
  {
    vb::test::OpenedBackend<vb::IscsiBackend> disk(o);
    const auto keys = other.keys();
    CHECK_FALSE(has(keys, stale_key)); // fenced at open
    CHECK(has(keys, other_key));       // not ours: kept
    CHECK(std::count_if(keys.begin(), keys.end(), [&](std::uint64_t k) { return (k >> 32) == owner; }) == 1);
    const vb::PrReservation r = other.reservation();
    CHECK(r.held);
    CHECK(r.type == SCSI_PERSISTENT_RESERVE_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY);
    CHECK(stale.write_status() == SCSI_STATUS_RESERVATION_CONFLICT); // the fenced nexus cannot write
    CHECK(other.write_status() == SCSI_STATUS_GOOD);                 // a registrant can
    disk.q->cancel_all(); // as the engine does before a queue goes (QueueWorker)
  }
  // Closed cleanly: none of this host's keys is left, and the reservation went with its holder.
  const auto keys = other.keys();
  CHECK(std::none_of(keys.begin(), keys.end(), [&](std::uint64_t k) { return (k >> 32) == owner; }));
  CHECK_FALSE(other.reservation().held);
}

TEST_CASE("iscsi reservations: PREEMPT of a key already gone is done, and of the holder hands the reservation to the "
          "preempting nexus") {
  if (!have_tgtd())
    VB_SKIP(kNoTgtd);
  TempDir dir;
  TgtdServer tgt{dir};
  tgt.add_lun(1, 4 << 20);
  const auto o = fenced_options(tgt);
  const std::uint32_t owner = vb::pr_owner(o, vb::parse_iscsi_uri(o.uri));
  Nexus one(o, 1), two(o, 2);
  vb::PrSteps s1, s2;
  std::string why;
  REQUIRE(one.run(
      s1,
      [&](vb::PrSteps::Done d) {
        return s1.join(one.ctx, one.uri.lun, {owner, 1}, false, 11, d);
      },
      why));
  // The second registrant's RESERVE conflicts (Registrants Only has one holder): READ RESERVATION
  // shows ours, which is enough.
  REQUIRE(two.run(
      s2,
      [&](vb::PrSteps::Done d) {
        return s2.join(two.ctx, two.uri.lun, {owner, 2}, false, 22, d);
      },
      why));
  INFO(why);
  const std::uint64_t k1 = s1.key(), k2 = s2.key();
  CHECK(one.reservation().key == k1); // the first one holds it

  // A key that is gone (its slot's own new login preempted it, or it was never there).
  vb::PrSteps p;
  CHECK(two.run(
      p,
      [&](vb::PrSteps::Done d) {
        return p.preempt(two.ctx, two.uri.lun, k2, vb::pr_key({owner, 1}, 77), d);
      },
      why));
  CHECK(why.empty());
  // The holder: its nexus is fenced, the reservation now the preempting nexus's.
  CHECK(two.run(
      p, [&](vb::PrSteps::Done d) { return p.preempt(two.ctx, two.uri.lun, k2, k1, d); }, why));
  const vb::PrReservation r = two.reservation();
  CHECK(r.held);
  CHECK(r.key == k2);
  CHECK(r.type == SCSI_PERSISTENT_RESERVE_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY);
  CHECK_FALSE(has(two.keys(), k1));
  CHECK(one.write_status() == SCSI_STATUS_RESERVATION_CONFLICT);
  CHECK(two.write_status() == SCSI_STATUS_GOOD);
  // PREEMPT of key 0 would take every registration: refused before it is sent.
  CHECK_FALSE(p.preempt(two.ctx, two.uri.lun, k2, 0, [](bool, const std::string &) {}));
}
