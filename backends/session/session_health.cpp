#include "session/session_health.h"

namespace vb {

void SessionHealth::Session::set(State state, const std::string &why) noexcept {
  if (state == state_ && why.empty())
    return;
  all_.change(state_, state, why);
  state_ = state;
}

SessionHealth::State SessionHealth::worst() const {
  std::lock_guard lock(mu_);
  return down_[static_cast<int>(State::failing)] > 0        ? State::failing
         : down_[static_cast<int>(State::reconnecting)] > 0 ? State::reconnecting
                                                            : State::connected;
}

void SessionHealth::change(State from, State to, const std::string &why) noexcept {
  // Under the lock, so that the sink sees the states in the order they happened.
  std::lock_guard lock(mu_);
  if (from != State::connected)
    --down_[static_cast<int>(from)];
  if (to != State::connected)
    ++down_[static_cast<int>(to)];
  const State now = down_[static_cast<int>(State::failing)] > 0        ? State::failing
                    : down_[static_cast<int>(State::reconnecting)] > 0 ? State::reconnecting
                                                                       : State::connected;
  try {
    if (sink_)
      sink_(now, why);
  } catch (...) {
    // Reporting is best effort; the session's own state is what matters.
  }
}

} // namespace vb
