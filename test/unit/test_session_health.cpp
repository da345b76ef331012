// The health of a device with several reconnecting sessions (issue 13: iSCSI with queues: 2
// showed "connected" while one session was still reconnecting; NBD had its own fix).
#include "session/session_health.h"
#include "vduse-bridge/backend.h"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using State = vb::SessionHealth::State;

struct Seen {
  std::vector<State> states;
  std::string last_why;
};

vb::SessionHealth::Sink recorder(Seen &seen) {
  return [&seen](State s, const std::string &why) {
    seen.states.push_back(s);
    if (!why.empty())
      seen.last_why = why;
  };
}

} // namespace

TEST_CASE("session health: the device shows the worst session, not the last one to report") {
  vb::SessionHealth all;
  Seen seen;
  all.set_sink(recorder(seen));
  vb::SessionHealth::Session q0(all), q1(all);
  CHECK(all.worst() == State::connected);
  q0.set(State::reconnecting, "session lost: connection reset");
  q1.set(State::reconnecting, "session lost: connection reset");
  q1.set(State::connected); // queue 1 is back, queue 0 is not: I/O of queue 0 is still held
  REQUIRE_FALSE(seen.states.empty());
  CHECK(seen.states.back() == State::reconnecting);
  CHECK(all.worst() == State::reconnecting);
  q0.set(State::failing, "unreachable for longer than reconnect-timeout");
  q1.set(State::reconnecting, "session lost");
  CHECK(seen.states.back() == State::failing);
  q0.set(State::connected);
  CHECK(seen.states.back() == State::reconnecting);
  q1.set(State::connected);
  CHECK(seen.states.back() == State::connected);
  CHECK(seen.last_why == "session lost");
}

TEST_CASE("session health: a session that goes away no longer counts as down") {
  vb::SessionHealth all;
  Seen seen;
  all.set_sink(recorder(seen));
  vb::SessionHealth::Session q0(all);
  {
    vb::SessionHealth::Session q1(all);
    q1.set(State::reconnecting, "lost");
    CHECK(all.worst() == State::reconnecting);
  }
  CHECK(all.worst() == State::connected);
  CHECK(seen.states.back() == State::connected);
  // Repeating a state without a reason reports nothing new.
  const auto reports = seen.states.size();
  q0.set(State::connected);
  CHECK(seen.states.size() == reports);
}

TEST_CASE("session health: sessions on many threads leave consistent counts") {
  vb::SessionHealth all;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&all] {
      vb::SessionHealth::Session s(all);
      for (int i = 0; i < 2000; ++i) {
        s.set(i % 3 == 0 ? State::failing : State::reconnecting, "x");
        s.set(State::connected);
      }
      s.set(State::reconnecting, "left down");
    });
  for (auto &t : threads)
    t.join();
  CHECK(all.worst() == State::connected); // each session was destroyed: none counts
}

// What the metrics' backend_reconnects_total counts: returns to connected, not every report.
TEST_CASE("recording events count the times the backend came back") {
  vb::RecordingBackendEvents events;
  using State = vb::BackendEvents::State;
  events.health_changed(State::connected, {});
  CHECK(events.health().recoveries == 0);
  events.health_changed(State::reconnecting, "lost");
  events.health_changed(State::reconnecting, "still lost");
  CHECK(events.health().recoveries == 0);
  events.health_changed(State::connected, {});
  events.health_changed(State::connected, {});
  CHECK(events.health().recoveries == 1);
  events.health_changed(State::failing, "gone");
  events.health_changed(State::connected, {});
  CHECK(events.health().recoveries == 2);
  CHECK(events.health().last_error == "gone");
}
