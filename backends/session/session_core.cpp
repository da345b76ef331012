#include "session/session_core.h"

#include "common/log.h"
#include "common/units.h"

#include <algorithm>
#include <cerrno>

namespace vb {

namespace {

// Room for extra more pointers, grown geometrically; false when out of memory. Done before a job
// moves between lists, so that moving it cannot fail half-way.
bool make_room(std::vector<SessionJob *> &v, std::size_t extra) noexcept {
  if (v.capacity() - v.size() >= extra)
    return true;
  try {
    v.reserve(std::max(v.capacity() * 2, v.size() + extra) + 16);
    return true;
  } catch (const std::bad_alloc &) {
    return false;
  }
}

// Whether d has passed between since and now. Compared in milliseconds: a configured duration may
// be far longer than the clock's nanoseconds can hold (99999999h), and converting it would wrap.
bool passed(SessionClock::time_point since, SessionClock::time_point now, std::chrono::milliseconds d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - since) >= d;
}

} // namespace

SessionCore::SessionCore(EventLoop &loop, SessionHealth &health, SessionProtocol &protocol, SessionSettings settings)
    : health_(health), protocol_(protocol), settings_(std::move(settings)),
      attempt_timer_(loop, [this] { start_attempt(); }), tick_(loop, [this] { on_tick(); }) {
  in_flight_.reserve(256); // a queue's depth: no allocation on the data path once warm
  held_.reserve(256);
}

void SessionCore::start(bool connected) noexcept {
  tick_.arm_periodic(kTick);
  if (connected) {
    set_state(State::ready);
    return;
  }
  down_since_ = SessionClock::now();
  start_attempt();
}

int SessionCore::admit() const noexcept {
  if (cancelled_)
    return ECANCELED;
  if (settings_.path && state_ != State::ready)
    return kHandedBack; // another path takes it
  if (fail_fast_ && state_ != State::ready)
    return EIO; // the peer has been gone for longer than reconnect-timeout
  return 0;
}

void SessionCore::set_state(State state) noexcept {
  const bool was_ready = state_ == State::ready;
  state_ = state;
  if (settings_.path && was_ready != (state == State::ready))
    settings_.path->path_changed(state == State::ready);
}

int SessionCore::submit(SessionJob *job) noexcept {
  job->seq = ++seq_;
  job->fenced = false;
  job->error = 0;
  job->answered_error = false;
  if (state_ == State::ready) {
    if (!make_room(in_flight_, 1))
      return ENOMEM;
    issue(job);
    return 0;
  }
  if (settings_.path)
    return kHandedBack;
  if (!make_room(held_, 1))
    return ENOMEM;
  held_.push_back(job);
  return 0;
}

void SessionCore::issue(SessionJob *job) noexcept {
  job->index = in_flight_.size();
  job->issued = SessionClock::now();
  in_flight_.push_back(job); // room made by the caller
  protocol_.send(job);
}

void SessionCore::issue_held() noexcept {
  std::vector<SessionJob *> held;
  held.swap(held_);
  if (!make_room(in_flight_, held.size())) {
    VB_LOG_ERROR("%s: out of memory resubmitting %zu request(s): failed", settings_.name.c_str(), held.size());
    for (SessionJob *job : held)
      complete(job, EIO);
    return;
  }
  // Oldest first, as they were submitted.
  std::sort(held.begin(), held.end(), [](const SessionJob *a, const SessionJob *b) { return a->seq < b->seq; });
  for (std::size_t i = 0; i < held.size(); ++i) {
    if (state_ != State::ready) { // lost again while sending: the rest waits for the next one
      for (; i < held.size(); ++i) {
        if (make_room(held_, 1))
          held_.push_back(held[i]);
        else
          complete(held[i], EIO);
      }
      return;
    }
    issue(held[i]);
  }
}

void SessionCore::remove_in_flight(SessionJob *job) noexcept {
  const std::size_t i = job->index;
  if (i < in_flight_.size() && in_flight_[i] == job) {
    in_flight_[i] = in_flight_.back();
    in_flight_[i]->index = i;
    in_flight_.pop_back();
  }
}

void SessionCore::complete(SessionJob *job, int error) noexcept {
  const CompletionFn done = job->done;
  void *ctx = job->ctx;
  job->done = nullptr;
  protocol_.release(job, error); // back in the pool: done() may submit again and reuse it
  done(ctx, error);
}

void SessionCore::retire(SessionJob *job) noexcept {
  remove_in_flight(job);
  complete(job, job->error);
  if (state_ == State::draining && in_flight_.empty())
    attempt_timer_.arm(std::chrono::milliseconds(0));
}

void SessionCore::start_attempt() noexcept {
  if (cancelled_)
    return;
  protocol_.disconnect();
  set_state(State::connecting);
  attempt_started_ = SessionClock::now();
  protocol_.connect();
}

void SessionCore::connected() noexcept {
  state_ = State::ready;
  set_health(Backend::State::connected);
  backoff_ = kFirstBackoff;
  last_logged_failure_.clear();
  if (reconnects_ > 0 || !held_.empty() || fail_fast_) {
    const double down_s = std::chrono::duration<double>(SessionClock::now() - down_since_).count();
    VB_LOG_INFO("%s: %s after %.1fs; resubmitting %zu request(s)", settings_.name.c_str(), settings_.back_again, down_s,
                held_.size());
  }
  fail_fast_ = false;
  issue_held();
  if (settings_.path && state_ == State::ready)
    settings_.path->path_changed(true); // after the held ones went: none in a path, but in order
}

void SessionCore::attempt_failed(const std::string &why, bool refused) noexcept {
  try {
    last_error_ = why;
    if (why != last_logged_failure_) {
      VB_LOG_WARN("%s: %s; retrying (every %s at most)", settings_.name.c_str(), why.c_str(),
                  format_duration(kMaxBackoff).c_str());
      last_logged_failure_ = why;
    } else {
      VB_LOG_DEBUG("%s: %s", settings_.name.c_str(), why.c_str());
    }
    if (refused)
      set_health(fail_fast_ ? Backend::State::failing : Backend::State::reconnecting, why);
  } catch (...) {
  }
  protocol_.disconnect();
  set_state(State::down);
  if (!cancelled_)
    attempt_timer_.arm(refused ? kMaxBackoff : backoff_);
  if (!refused)
    backoff_ = std::min(backoff_ * 2, kMaxBackoff);
}

void SessionCore::lost(const std::string &why, std::chrono::milliseconds delay) noexcept {
  if (state_ != State::ready && state_ != State::draining) {
    attempt_failed(why); // no connection to lose: the attempt failed
    return;
  }
  const auto again = std::count_if(in_flight_.begin(), in_flight_.end(),
                                   [](const SessionJob *j) { return !j->fenced && !j->answered_error; });
  VB_LOG_WARN("%s: %s lost (%s); %zu request(s) in flight will be resubmitted, new I/O is held for up to %s",
              settings_.name.c_str(), settings_.connection, why.c_str(), static_cast<std::size_t>(again),
              format_duration(settings_.reconnect_timeout).c_str());
  try {
    last_error_ = std::string(settings_.connection) + " lost: " + why;
    set_health(Backend::State::reconnecting, last_error_);
  } catch (...) {
  }
  protocol_.disconnect();
  set_state(State::down); // completions below that submit again are held (or handed back), not sent
  for (SessionJob *job : in_flight_) {
    if (job->fenced) {
      complete(job, ECANCELED); // from before a reset: may have reached the peer, never sent again
    } else if (job->answered_error) {
      complete(job, job->error); // decided by the peer's answer (SessionJob::answered_error)
    } else if (settings_.path) {
      complete(job, kHandedBack); // to be sent on another path
    } else if (!make_room(held_, 1)) {
      complete(job, EIO);
    } else {
      protocol_.requeue(job);
      held_.push_back(job);
    }
  }
  in_flight_.clear();
  down_since_ = SessionClock::now();
  ++reconnects_;
  backoff_ = kFirstBackoff;
  // From the loop, not from here: this may run inside issue_held()'s loop or a library callback.
  if (!cancelled_)
    attempt_timer_.arm(delay);
}

void SessionCore::drain() noexcept {
  if (state_ != State::ready)
    return;
  VB_LOG_INFO("%s: replacing the %s once %zu request(s) in flight are done", settings_.name.c_str(),
              settings_.connection, in_flight_.size());
  set_state(State::draining);
  down_since_ = SessionClock::now();
  if (in_flight_.empty())
    attempt_timer_.arm(std::chrono::milliseconds(0));
}

void SessionCore::fence(const void *source) noexcept {
  std::vector<SessionJob *> unsent;
  if (!make_room(unsent, held_.size())) {
    VB_LOG_ERROR("%s: out of memory fencing the driver's requests", settings_.name.c_str());
    return;
  }
  std::size_t kept = 0;
  for (SessionJob *job : held_) {
    if (job->source == source)
      unsent.push_back(job);
    else
      held_[kept++] = job;
  }
  held_.resize(kept);
  // Mark first, then drop commands: fence_job() may complete a job, whose completion may submit
  // (and reuse the job for) a new request, which must not be fenced.
  std::vector<SessionJob *> sent;
  if (!make_room(sent, in_flight_.size())) {
    for (SessionJob *job : in_flight_) // still safe: nothing is resent, nothing is dropped early
      job->fenced = job->fenced || job->source == source;
  } else {
    for (SessionJob *job : in_flight_)
      if (job->source == source) {
        job->fenced = true;
        sent.push_back(job);
      }
  }
  std::size_t dropped = unsent.size();
  for (SessionJob *job : sent)
    if (job->index < in_flight_.size() && in_flight_[job->index] == job && job->fenced)
      dropped += protocol_.fence_job(job);
  if (dropped > 0)
    VB_LOG_INFO("%s: the driver reset the device: %zu request(s) or command(s) not yet at the %s are dropped",
                settings_.name.c_str(), dropped, settings_.peer);
  for (SessionJob *job : unsent)
    complete(job, ECANCELED);
}

void SessionCore::abandon_fenced(const void *source) noexcept {
  // Only losing the connection stops the peer's answers (read data) from landing in the old
  // driver's buffers, and the rest of a write from being sent out of them.
  if (std::any_of(in_flight_.begin(), in_flight_.end(), [this, source](const SessionJob *j) {
        return j->fenced && j->source == source && protocol_.touches_buffers(*j);
      }))
    lost("requests from before the driver's reset were not answered in time");
}

void SessionCore::cancel(const void *source) noexcept {
  fence(source);
  // Commands of that queue on the wire would still read into its buffers: losing the connection
  // retires them (fenced: completed with ECANCELED); the other queues' are resubmitted.
  if (std::any_of(in_flight_.begin(), in_flight_.end(), [source](const SessionJob *j) { return j->source == source; }))
    lost("a queue sharing this connection closed");
}

void SessionCore::cancel_all() noexcept {
  cancelled_ = true;
  attempt_timer_.cancel();
  // Close first: answers that arrive meanwhile must not complete these jobs again.
  protocol_.disconnect();
  state_ = State::down;
  std::vector<SessionJob *> held;
  std::vector<SessionJob *> sent;
  held.swap(held_);
  sent.swap(in_flight_);
  for (SessionJob *job : sent)
    complete(job, ECANCELED);
  for (SessionJob *job : held)
    complete(job, ECANCELED);
}

void SessionCore::on_tick() noexcept {
  protocol_.on_tick();
  const auto now = SessionClock::now();
  if ((state_ == State::ready || state_ == State::draining) && settings_.request_timeout.count() > 0) {
    // Not before the clock's epoch: subtracting a longer timeout would wrap.
    const auto since_epoch = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
    const auto cutoff = now - std::min(settings_.request_timeout, since_epoch);
    for (const SessionJob *job : in_flight_)
      if (protocol_.overdue(*job, cutoff)) {
        lost("a request got no reply within request-timeout (" + format_duration(settings_.request_timeout) + ")");
        return;
      }
  }
  // A peer that accepts connections but never finishes the handshake (stopped, wedged) must not
  // hold the session in "connecting" for ever. (An attempt carries no writes: giving up is safe.)
  if (state_ == State::connecting && passed(attempt_started_, now, settings_.attempt_timeout)) {
    attempt_failed(std::string("the ") + settings_.peer + " did not complete the handshake within " +
                   format_duration(settings_.attempt_timeout));
    return;
  }
  // A drain (the connection is being replaced) is not an outage: it waits for requests, not the peer.
  if ((state_ == State::down || state_ == State::connecting) && !fail_fast_ && !cancelled_ &&
      passed(down_since_, now, settings_.reconnect_timeout)) {
    fail_fast_ = true;
    set_health(Backend::State::failing, "unreachable for longer than reconnect-timeout");
    VB_LOG_ERROR("%s: the %s has been unreachable for %s (reconnect-timeout): failing %zu held request(s) "
                 "and new I/O with EIO until it is back",
                 settings_.name.c_str(), settings_.peer, format_duration(settings_.reconnect_timeout).c_str(),
                 held_.size());
    std::vector<SessionJob *> held;
    held.swap(held_);
    for (SessionJob *job : held)
      complete(job, EIO);
  }
}

} // namespace vb
