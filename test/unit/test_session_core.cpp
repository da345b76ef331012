// The reconnecting session core shared by the nbd and iscsi backends (backends/session/), driven
// by a scripted protocol: which jobs reach the wire, in which order, how each completes. The same
// rules are exercised against real nbdkit and tgtd in the integration tests; these pin them down
// where a server cannot be made to fail at exactly the right moment.
#include "session/session_core.h"

#include "../support/loop_wait.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <vector>

namespace {

using vb::SessionCore;
using vb::SessionJob;
using namespace std::chrono_literals;

// A protocol whose connection comes up when the test says so and whose commands are answered
// when the test says so.
struct ScriptedProtocol final : vb::SessionProtocol {
  SessionCore *core = nullptr;
  vb::JobPool<SessionJob> pool;
  bool connect_at_once = true; // connect() succeeds synchronously
  unsigned attempts = 0;
  unsigned disconnects = 0;
  std::vector<SessionJob *> wire;        // sent on the current connection, unanswered
  std::vector<std::uint64_t> sent_order; // offsets, every send on any connection

  void connect() noexcept override {
    ++attempts;
    if (connect_at_once)
      core->connected();
  }
  void disconnect() noexcept override {
    ++disconnects;
    wire.clear(); // their answers can no longer arrive
  }
  void send(SessionJob *job) noexcept override {
    wire.push_back(job);
    sent_order.push_back(job->req.offset);
  }
  void release(SessionJob *job, int) noexcept override { pool.give(job); }

  // The peer answers the job at offset.
  void answer(std::uint64_t offset, int error = 0) {
    auto it = std::find_if(wire.begin(), wire.end(), [&](SessionJob *j) { return j->req.offset == offset; });
    REQUIRE(it != wire.end());
    SessionJob *job = *it;
    wire.erase(it);
    job->error = error;
    core->retire(job);
  }
};

struct Completions {
  std::map<std::uint64_t, std::vector<int>> by_offset; // every completion, to see doubles
};

struct Ctx {
  Completions *c;
  std::uint64_t offset;
};

struct Fixture {
  vb::EventLoop loop;
  vb::SessionHealth health;
  ScriptedProtocol protocol;
  Completions completions;
  std::vector<std::unique_ptr<Ctx>> ctxs;
  std::unique_ptr<SessionCore> core;

  explicit Fixture(vb::SessionSettings settings = defaults(), bool connected = true) {
    core = std::make_unique<SessionCore>(loop, health, protocol, std::move(settings));
    protocol.core = core.get();
    core->start(connected);
  }
  ~Fixture() { core->cancel_all(); }
  static vb::SessionSettings defaults() {
    vb::SessionSettings s;
    s.name = "test session";
    s.reconnect_timeout = 60s;
    return s;
  }

  // Submits a write at offset from source; returns what submit() said.
  int submit(std::uint64_t offset, const void *source = nullptr) {
    if (int rc = core->admit(); rc != 0)
      return rc;
    SessionJob *job = protocol.pool.take();
    REQUIRE(job != nullptr);
    ctxs.push_back(std::make_unique<Ctx>(Ctx{&completions, offset}));
    job->req = vb::Request{};
    job->req.op = vb::Op::write;
    job->req.offset = offset;
    job->done = [](void *ctx, int error) noexcept {
      auto *c = static_cast<Ctx *>(ctx);
      c->c->by_offset[c->offset].push_back(error);
    };
    job->ctx = ctxs.back().get();
    job->source = source;
    return core->submit(job);
  }
  std::vector<int> done(std::uint64_t offset) { return completions.by_offset[offset]; }
};

} // namespace

TEST_CASE("session core: jobs lost with the connection are resent once on the next, oldest first") {
  Fixture f;
  for (std::uint64_t off : {0, 4096, 8192})
    REQUIRE(f.submit(off) == 0);
  CHECK(f.protocol.wire.size() == 3);
  f.protocol.answer(0); // the in-flight list is now out of submission order (8192 before 4096)
  CHECK(f.done(0) == std::vector<int>{0});

  f.protocol.connect_at_once = false;
  f.core->lost("test: connection reset");
  CHECK(f.core->state() == SessionCore::State::down);
  CHECK(f.core->held() == 2);
  CHECK(f.health.worst() == vb::SessionHealth::State::reconnecting);
  REQUIRE(f.submit(12288) == 0); // held too, after the two lost ones
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts == 1; });
  CHECK(f.core->state() == SessionCore::State::connecting);
  f.core->connected();

  // Resent in submission order: the lost ones, then the one submitted while down.
  const std::vector<std::uint64_t> order(f.protocol.sent_order.end() - 3, f.protocol.sent_order.end());
  CHECK(order == std::vector<std::uint64_t>{4096, 8192, 12288});
  CHECK(f.health.worst() == vb::SessionHealth::State::connected);
  CHECK(f.core->reconnects() == 1);
  for (std::uint64_t off : {4096, 8192, 12288})
    f.protocol.answer(off);
  for (std::uint64_t off : {0, 4096, 8192, 12288})
    CHECK(f.done(off) == std::vector<int>{0}); // each exactly once
}

TEST_CASE("session core: after a fence, a source's held jobs are dropped, its sent ones never resent") {
  Fixture f;
  int queue_a = 0, queue_b = 0;
  REQUIRE(f.submit(0, &queue_a) == 0);    // on the wire
  REQUIRE(f.submit(4096, &queue_b) == 0); // other queue, on the wire
  f.protocol.connect_at_once = false;
  f.core->lost("test");
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts == 1; });
  REQUIRE(f.submit(8192, &queue_a) == 0); // held
  f.core->connected();                    // 0 and 4096 resent, 8192 sent
  REQUIRE(f.submit(12288, &queue_a) == 0);
  f.protocol.connect_at_once = false;
  f.core->lost("test again"); // all four held now
  REQUIRE(f.core->held() == 4);

  f.core->fence(&queue_a);
  // Queue a's jobs were never answered and are held: dropped at once, never sent again.
  CHECK(f.done(0) == std::vector<int>{ECANCELED});
  CHECK(f.done(8192) == std::vector<int>{ECANCELED});
  CHECK(f.done(12288) == std::vector<int>{ECANCELED});
  CHECK(f.done(4096).empty());
  const std::size_t sent_before = f.protocol.sent_order.size();
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts == 2; });
  f.core->connected();
  REQUIRE(f.protocol.sent_order.size() == sent_before + 1);
  CHECK(f.protocol.sent_order.back() == 4096); // only queue b's
  f.protocol.answer(4096);
  CHECK(f.done(4096) == std::vector<int>{0});
}

TEST_CASE("session core: a fenced job on the wire completes with its answer, or ECANCELED if lost") {
  Fixture f;
  int queue = 0;
  REQUIRE(f.submit(0, &queue) == 0);
  REQUIRE(f.submit(4096, &queue) == 0);
  f.core->fence(&queue);
  CHECK(f.done(0).empty()); // at the peer already: its answer decides
  f.protocol.answer(0, EIO);
  CHECK(f.done(0) == std::vector<int>{EIO});
  const std::size_t sent_before = f.protocol.sent_order.size();
  f.core->lost("test");
  CHECK(f.done(4096) == std::vector<int>{ECANCELED});
  f.loop.run_once(false);
  CHECK(f.protocol.sent_order.size() == sent_before); // nothing of the old driver went out again
  // The queue's new requests are not fenced.
  REQUIRE(f.submit(8192, &queue) == 0);
  f.protocol.answer(8192);
  CHECK(f.done(8192) == std::vector<int>{0});
}

TEST_CASE("session core: past reconnect-timeout held jobs and new ones fail with EIO until the peer is back") {
  auto settings = Fixture::defaults();
  settings.reconnect_timeout = 300ms;
  Fixture f(settings);
  REQUIRE(f.submit(0) == 0);
  f.protocol.connect_at_once = false;
  f.core->lost("test");
  vb::test::run_until(
      f.loop, [&] { return !f.done(0).empty(); }, 3s);
  CHECK(f.done(0) == std::vector<int>{EIO});
  CHECK(f.health.worst() == vb::SessionHealth::State::failing);
  CHECK(f.submit(4096) == EIO);
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts >= 1; });
  f.core->connected();
  CHECK(f.submit(8192) == 0);
  f.protocol.answer(8192);
  CHECK(f.done(8192) == std::vector<int>{0});
}

TEST_CASE("session core: a request without an answer within request-timeout loses the connection") {
  auto settings = Fixture::defaults();
  settings.request_timeout = 300ms;
  Fixture f(settings);
  REQUIRE(f.submit(0) == 0);
  vb::test::run_until(
      f.loop, [&] { return f.core->reconnects() == 1; }, 3s);
  // Resent on the new connection (connect_at_once), not failed.
  vb::test::run_until(f.loop, [&] { return f.protocol.sent_order.size() == 2; });
  CHECK(f.done(0).empty());
  f.protocol.answer(0);
  CHECK(f.done(0) == std::vector<int>{0});
}

TEST_CASE("session core: an attempt that never completes is abandoned, and failures back off to 5 s") {
  auto settings = Fixture::defaults();
  settings.attempt_timeout = 300ms;
  Fixture f(settings, false);
  f.protocol.connect_at_once = false;
  // start(false) made the first attempt before the flag changed: it connected. Lose it.
  f.core->lost("test");
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts == 2; });
  CHECK(f.core->state() == SessionCore::State::connecting);
  vb::test::run_until(
      f.loop, [&] { return f.core->state() == SessionCore::State::down; }, 3s);
  CHECK(f.core->backoff() == 200ms);
  for (auto expected : {400ms, 800ms, 1600ms, 3200ms, 5000ms, 5000ms}) {
    f.core->attempt_failed("test: refused by the test");
    CHECK(f.core->backoff() == expected);
  }
  // A refused peer (another export, another LUN) is retried slowly and says why.
  std::string why;
  f.health.set_sink([&](vb::SessionHealth::State, const std::string &w) { why = w; });
  f.core->attempt_failed("it is now another export", true);
  CHECK(why == "it is now another export");
  f.health.set_sink(nullptr);
}

TEST_CASE("session core: a drain holds new jobs, lets sent ones finish, then reconnects") {
  Fixture f;
  REQUIRE(f.submit(0) == 0);
  f.core->drain();
  CHECK(f.core->state() == SessionCore::State::draining);
  REQUIRE(f.submit(4096) == 0);
  CHECK(f.protocol.sent_order.size() == 1); // held
  const unsigned attempts = f.protocol.attempts;
  f.protocol.answer(0);
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts == attempts + 1; });
  CHECK(f.core->reconnects() == 0); // not an outage
  CHECK(f.protocol.sent_order.back() == 4096);
  f.protocol.answer(4096);
  CHECK(f.done(0) == std::vector<int>{0});
  CHECK(f.done(4096) == std::vector<int>{0});
}

TEST_CASE("session core: cancel completes every job once and refuses new ones, cancel(source) only its own") {
  Fixture f;
  int queue_a = 0, queue_b = 0;
  REQUIRE(f.submit(0, &queue_a) == 0);
  REQUIRE(f.submit(4096, &queue_b) == 0);
  f.core->cancel(&queue_a);
  CHECK(f.done(0) == std::vector<int>{ECANCELED});
  // Its command was on the shared connection: that was replaced, queue b's job is resent.
  vb::test::run_until(f.loop, [&] { return f.protocol.sent_order.size() == 3; });
  CHECK(f.protocol.sent_order.back() == 4096);
  REQUIRE(f.submit(8192, &queue_b) == 0);
  f.core->cancel_all();
  CHECK(f.done(4096) == std::vector<int>{ECANCELED});
  CHECK(f.done(8192) == std::vector<int>{ECANCELED});
  CHECK(f.submit(12288) == ECANCELED);
  CHECK(f.done(0).size() == 1);
}

TEST_CASE("session core: timeouts longer than the clock's nanoseconds hold I/O instead of failing it at once") {
  // 99999999h is 3.6e20 ns: converted to the clock's nanoseconds it wraps (issue 14: it became
  // "fail after 1 s").
  auto settings = Fixture::defaults();
  settings.reconnect_timeout = std::chrono::hours(99999999);
  settings.request_timeout = std::chrono::hours(99999999);
  settings.attempt_timeout = std::chrono::hours(99999999);
  Fixture f(settings);
  REQUIRE(f.submit(0) == 0);
  // Three ticks with a request on the wire: not overdue.
  bool waited = false;
  vb::Timer wait(f.loop, [&] { waited = true; });
  wait.arm(800ms);
  vb::test::run_until(f.loop, [&] { return waited; });
  CHECK(f.core->reconnects() == 0);
  f.protocol.connect_at_once = false;
  f.core->lost("test");
  REQUIRE(f.submit(4096) == 0);
  waited = false;
  wait.arm(800ms);
  vb::test::run_until(f.loop, [&] { return waited; });
  CHECK(f.done(0).empty()); // held, not failed
  CHECK(f.done(4096).empty());
  CHECK(f.core->state() == SessionCore::State::connecting); // the attempt is not abandoned either
  CHECK(f.health.worst() == vb::SessionHealth::State::reconnecting);
}

TEST_CASE("session core: reconnect-timeout forever (milliseconds::max()) holds I/O and never overflows") {
  // What `reconnect-timeout: forever` parses to (vb::forever_duration); request-timeout and the
  // attempt bound at the maximum too, so that every comparison sees it.
  auto settings = Fixture::defaults();
  settings.reconnect_timeout = std::chrono::milliseconds::max();
  settings.request_timeout = std::chrono::milliseconds::max();
  settings.attempt_timeout = std::chrono::milliseconds::max();
  Fixture f(settings);
  REQUIRE(f.submit(0) == 0);
  f.protocol.connect_at_once = false;
  f.core->lost("test");
  REQUIRE(f.submit(4096) == 0);
  bool waited = false;
  vb::Timer wait(f.loop, [&] { waited = true; });
  wait.arm(800ms);
  vb::test::run_until(f.loop, [&] { return waited; });
  CHECK(f.done(0).empty()); // held, not failed
  CHECK(f.done(4096).empty());
  CHECK(f.health.worst() == vb::SessionHealth::State::reconnecting);
  f.core->connected();
  f.protocol.answer(0);
  f.protocol.answer(4096);
  CHECK(f.done(0) == std::vector<int>{0});
  CHECK(f.done(4096) == std::vector<int>{0});
}

namespace {
struct RecordingPath final : vb::SessionPathObserver {
  std::vector<bool> changes;
  bool others = false;
  void path_changed(bool ready) noexcept override { changes.push_back(ready); }
  bool others_ready() const noexcept override { return others; }
};
} // namespace

TEST_CASE("session core: a path of several holds nothing: what it loses is handed back, and it says when it is ready") {
  RecordingPath path;
  auto settings = Fixture::defaults();
  settings.path = &path;
  Fixture f(settings);
  CHECK(path.changes == std::vector<bool>{true}); // adopted connection: ready at once
  int queue = 0;
  REQUIRE(f.submit(0, &queue) == 0);
  REQUIRE(f.submit(4096, &queue) == 0);
  f.protocol.answer(0, EIO); // answered with an error: decided, not sent elsewhere
  REQUIRE(f.submit(8192, &queue) == 0);
  f.core->fence(&queue); // 4096 and 8192 on the wire from before a reset
  REQUIRE(f.submit(12288, &queue) == 0);
  f.protocol.connect_at_once = false;
  f.core->lost("test: cut");
  CHECK(path.changes == std::vector<bool>{true, false});
  CHECK(f.core->held() == 0);
  CHECK(f.done(0) == std::vector<int>{EIO});
  CHECK(f.done(4096) == std::vector<int>{ECANCELED}); // fenced: never sent again, on any path
  CHECK(f.done(8192) == std::vector<int>{ECANCELED});
  CHECK(f.done(12288) == std::vector<int>{vb::kHandedBack}); // for another path
  // Not ready: new jobs are refused, for the set to send elsewhere.
  CHECK(f.core->admit() == vb::kHandedBack);
  vb::test::run_until(f.loop, [&] { return f.protocol.attempts == 1; });
  CHECK(f.core->admit() == vb::kHandedBack); // connecting
  f.core->connected();
  CHECK(path.changes == std::vector<bool>{true, false, true});
  CHECK(f.core->admit() == 0);
  CHECK(f.core->last_error() == "connection lost: test: cut");
}

TEST_CASE("session core: abandon_fenced drops the connection only when a fenced job of that source is on it") {
  Fixture f;
  int queue_a = 0, queue_b = 0;
  REQUIRE(f.submit(0, &queue_a) == 0);
  REQUIRE(f.submit(4096, &queue_b) == 0);
  f.core->abandon_fenced(&queue_a); // nothing fenced: nothing happens
  CHECK(f.core->ready());
  f.core->fence(&queue_a);
  f.core->abandon_fenced(&queue_b); // b's jobs are not fenced
  CHECK(f.core->ready());
  f.protocol.connect_at_once = false;
  f.core->abandon_fenced(&queue_a);
  CHECK_FALSE(f.core->ready());
  CHECK(f.done(0) == std::vector<int>{ECANCELED});
  CHECK(f.done(4096).empty()); // the other queue's: sent again on the next connection
  CHECK(f.core->held() == 1);
}
