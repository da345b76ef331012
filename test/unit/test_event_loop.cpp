#include "event/event_loop.h"
#include "test_support.h"

#include <doctest/doctest.h>
#include <event2/event.h>

#include <atomic>
#include <csignal>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;

TEST_CASE("posted callbacks run on the loop thread in order") {
  vb::EventLoop loop;
  std::vector<int> seen;
  std::thread::id loop_thread = std::this_thread::get_id();
  std::atomic<bool> wrong_thread{false};
  std::thread poster([&] {
    for (int i = 0; i < 100; ++i)
      loop.post([&, i] {
        if (std::this_thread::get_id() != loop_thread)
          wrong_thread = true;
        seen.push_back(i);
      });
    loop.stop_from_any_thread();
  });
  loop.run();
  poster.join();
  loop.run_once(false); // anything posted after the stop request
  CHECK_FALSE(wrong_thread);
  REQUIRE(seen.size() == 100);
  for (int i = 0; i < 100; ++i)
    CHECK(seen[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("IoWatch reports readability and can change or drop its interest") {
  vb::EventLoop loop;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  int reads = 0;
  vb::IoWatch watch(loop, fds[0], [&](short ev) {
    CHECK((ev & EV_READ) != 0);
    char c;
    REQUIRE(::read(fds[0], &c, 1) == 1);
    if (++reads == 2)
      loop.stop();
  });
  watch.set_events(EV_READ);
  REQUIRE(::write(fds[1], "ab", 2) == 2);
  loop.run();
  CHECK(reads == 2);

  // With no interest, data waiting on the fd must not call back.
  watch.set_events(0);
  REQUIRE(::write(fds[1], "c", 1) == 1);
  loop.run_once(false);
  CHECK(reads == 2);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("Timer fires once, periodically, and not after cancel") {
  vb::EventLoop loop;
  int once = 0, periodic = 0;
  vb::Timer one(loop, [&] { ++once; });
  vb::Timer tick(loop, [&] {
    if (++periodic >= 3)
      loop.stop();
  });
  one.arm(1ms);
  CHECK(one.pending());
  tick.arm_periodic(2ms);
  loop.run();
  CHECK(once == 1);
  CHECK(periodic == 3);
  CHECK_FALSE(one.pending());

  vb::Timer cancelled(loop, [&] { FAIL("cancelled timer fired"); });
  cancelled.arm(1ms);
  cancelled.cancel();
  CHECK_FALSE(cancelled.pending());
  tick.arm(20ms);
  loop.run();
  CHECK(periodic == 4);
}

TEST_CASE("SignalWatch turns a signal into a loop callback") {
  vb::EventLoop loop;
  int hits = 0;
  vb::SignalWatch sig(loop, SIGUSR1, [&] {
    ++hits;
    loop.stop();
  });
  REQUIRE(::raise(SIGUSR1) == 0);
  loop.run();
  CHECK(hits == 1);
}

TEST_CASE("Deferred runs once per schedule burst, after the current callback") {
  vb::EventLoop loop;
  std::vector<std::string> order;
  vb::Deferred deferred(loop, [&] { order.push_back("deferred"); });
  loop.post([&] {
    deferred.schedule();
    deferred.schedule(); // coalesced
    order.push_back("callback");
  });
  loop.run_once(true);
  loop.run_once(false);
  REQUIRE(order.size() == 2);
  CHECK(order[0] == "callback");
  CHECK(order[1] == "deferred");

  deferred.schedule();
  deferred.cancel();
  loop.run_once(false);
  CHECK(order.size() == 2);
}

TEST_CASE("EventLoop::run_polling polls while active, calls before_sleep once idle, then sleeps until woken") {
  vb::EventLoop loop;
  std::atomic<int> polls{0}, sleeps{0}, work{0};
  std::thread t([&] {
    loop.run_polling(
        [&] {
          ++polls;
          return work.exchange(0) > 0;
        },
        [&] {
          ++sleeps;
          return false;
        },
        std::chrono::milliseconds(20));
  });
  // Polling at first (the window starts at the call), then idle: before_sleep, and polls stop.
  REQUIRE(vb::test::wait_until([&] { return sleeps.load() >= 1; }, std::chrono::seconds(10)));
  CHECK(polls.load() > 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int idle_polls = polls.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(polls.load() == idle_polls); // asleep: nothing polls
  // A posted callback wakes it; the new window polls again.
  loop.post([&] { work = 1; });
  REQUIRE(vb::test::wait_until([&] { return polls.load() > idle_polls; }, std::chrono::seconds(10)));
  loop.stop_from_any_thread();
  t.join();
}
