// Waiting on an event loop in tests: run it until something holds, or fail the test.
#pragma once

#include "event/event_loop.h"

#include <chrono>
#include <doctest/doctest.h>

namespace vb::test {

// Runs loop until pred holds; fails the test (REQUIRE) after timeout.
template <typename Pred>
void run_until(vb::EventLoop &loop, Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  bool expired = false;
  vb::Timer deadline(loop, [&] { expired = true; });
  deadline.arm(timeout);
  while (!pred() && !expired)
    loop.run_once(true);
  REQUIRE_MESSAGE(pred(), "timed out");
}

} // namespace vb::test
