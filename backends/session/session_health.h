// What the reconnecting sessions of one device (NBD connections, iSCSI sessions: one per queue)
// report as the device's health: the worst state of any session, so that one session back does
// not hide another still down (with queues: 2, one session reconnecting means I/O is held).
//
// Threading: any thread; each Session is used by its own session's thread only.
#pragma once

#include "vduse-bridge/backend.h"

#include <functional>
#include <mutex>
#include <string>

namespace vb {

class SessionHealth {
public:
  using State = BackendEvents::State;
  using Sink = std::function<void(State, const std::string &why)>;

  // Where the worst state goes (set before any session exists; may be empty). It runs under
  // this object's lock, in the order the changes happened: it must not block.
  void set_sink(Sink sink) {
    std::lock_guard lock(mu_);
    sink_ = std::move(sink);
  }

  // One session's part; a session starts connected (it is made once its login worked).
  class Session {
  public:
    explicit Session(SessionHealth &all) : all_(all) {}
    ~Session() { set(State::connected); } // a session that goes no longer counts as down
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;
    // This session's state now; why (if not empty) becomes the device's last error.
    void set(State state, const std::string &why = {}) noexcept;
    State state() const noexcept { return state_; }

  private:
    SessionHealth &all_;
    State state_ = State::connected;
  };

  // The worst state now (any thread).
  State worst() const;

private:
  void change(State from, State to, const std::string &why) noexcept;

  mutable std::mutex mu_;
  unsigned down_[3] = {0, 0, 0}; // sessions per State (connected is not counted)
  Sink sink_;
};

} // namespace vb
