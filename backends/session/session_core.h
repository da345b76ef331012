// The reconnecting half of a backend session (an NBD connection, an iSCSI session), written once
// for every protocol: the jobs held while the connection is down and those in flight on it, their
// resubmission oldest first, the driver's fence, the backoff between attempts (100 ms doubling to
// 5 s), the 250 ms tick that enforces request-timeout, the attempt timeout and reconnect-timeout,
// cancellation, and the session's part of the device's health.
//
// A protocol supplies the rest through SessionProtocol: connect (and check the peer's identity),
// send a job's commands, and tear a connection down. It reports back with connected(),
// attempt_failed(), lost() and retire().
//
// Integrity rules kept here, so that no protocol has to get them right again:
// - a job completes exactly once (every path out of a list goes through complete());
// - a job lost with its connection is sent again on the next one, unless the driver reset since
//   (fenced): then it completes with ECANCELED and is never sent again, because a later write of
//   the new driver to the same blocks may already be on its way;
// - held jobs are sent in submission order.
//
// Threading: everything runs on the owning loop's thread.
#pragma once

#include "event/event_loop.h"
#include "session/session_health.h"
#include "vduse-bridge/backend.h"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace vb {

using SessionClock = std::chrono::steady_clock;

// One backend request. A protocol's job type derives from it and adds its commands.
struct SessionJob {
  Request req;
  CompletionFn done = nullptr;
  void *ctx = nullptr;
  const void *source = nullptr; // the submitting BackendQueue (queues may share a session)
  std::uint64_t seq = 0;        // submission order: resubmitted oldest first
  bool fenced = false;          // the driver reset since: finish, never send again
  int error = 0;                // the first error of any of its commands
  // The peer answered one of its commands with an error: its result is decided. Lost with its
  // connection, it completes with error instead of being sent again (it would fail again,
  // reconnect after reconnect, as one unreadable block in a request of several commands did).
  bool answered_error = false;
  std::size_t index = 0;             // position in the in-flight list
  SessionClock::time_point issued{}; // sent on the current connection at
};

// Recycled jobs: no allocation per request once the queue is warm.
template <class Job> class JobPool {
public:
  // nullptr when out of memory.
  Job *take() noexcept {
    if (free_.empty()) {
      try {
        free_.reserve(all_.size() + 1); // so that give() never allocates
        all_.push_back(std::make_unique<Job>());
      } catch (const std::bad_alloc &) {
        return nullptr;
      }
      return all_.back().get();
    }
    Job *job = free_.back();
    free_.pop_back();
    return job;
  }
  void give(Job *job) noexcept { free_.push_back(job); }

private:
  std::vector<std::unique_ptr<Job>> all_;
  std::vector<Job *> free_;
};

// What a protocol provides to SessionCore. Loop thread; none of these may throw.
class SessionProtocol {
public:
  // Start an attempt (the previous connection is gone). Later: connected() once the peer is
  // ready and is the same one, else attempt_failed().
  virtual void connect() noexcept = 0;
  // Close the connection, if any: callbacks of commands still on it must be ignored from now on.
  virtual void disconnect() noexcept = 0;
  // Send job's commands on the ready connection; the job is in the in-flight list already. When
  // its last command is answered: SessionCore::retire(). May call SessionCore::lost().
  virtual void send(SessionJob *job) noexcept = 0;
  // job was in flight on a connection that was lost and will be sent again on the next one.
  virtual void requeue(SessionJob * /*job*/) noexcept {}
  // The driver reset while job was in flight: drop (complete with ECANCELED) its commands that
  // are not at the peer yet. Returns how many; may retire the job.
  virtual std::size_t fence_job(SessionJob * /*job*/) noexcept { return 0; }
  // Whether job's commands may still read or write its buffers: a read not answered, a write
  // not fully sent. abandon_fenced() drops a connection only for such a job; one whose writes
  // are all at the peer is left to finish (dropping it would let a newer write overtake it).
  virtual bool touches_buffers(const SessionJob & /*job*/) const noexcept { return true; }
  // Whether job has a command sent before issued_before and not answered yet.
  virtual bool overdue(const SessionJob &job, SessionClock::time_point issued_before) const noexcept {
    return job.issued < issued_before;
  }
  // Run first on every tick (e.g. to let a library do its own timekeeping).
  virtual void on_tick() noexcept {}
  // The job completes with error: undo what send() set up (copy back, buffers), then give it
  // back to the pool. done() is called after this.
  virtual void release(SessionJob *job, int error) noexcept = 0;

protected:
  ~SessionProtocol() = default;
};

// A session that is one path of several to the same storage (iSCSI multipath) never holds a
// job: one it would hold (lost with its connection, or submitted while the path is not ready)
// completes with kHandedBack instead, and the owner sends it on another path. The owner hears
// when the path becomes ready for jobs and when it stops being ready (loop thread; it must not
// submit from inside the call).
inline constexpr int kHandedBack = ENOTCONN;
class SessionPathObserver {
public:
  virtual void path_changed(bool ready) noexcept = 0;
  // Whether another path of the set is ready now (a path logging in is then checked against it).
  virtual bool others_ready() const noexcept = 0;

protected:
  ~SessionPathObserver() = default;
};

struct SessionSettings {
  std::string name;                                 // in the log: "nbd conn 1", "iscsi session 0"
  const char *peer = "server";                      // "the server has been unreachable"
  const char *connection = "connection";            // "connection lost"
  const char *back_again = "reconnected";           // "reconnected after 2.1s"
  std::chrono::milliseconds reconnect_timeout{0};   // then held and new I/O fail with EIO
  std::chrono::milliseconds request_timeout{0};     // 0: none
  std::chrono::milliseconds attempt_timeout{30000}; // a connect + handshake taking longer is abandoned
  SessionPathObserver *path = nullptr;              // one path of several: see kHandedBack
};

class SessionCore {
public:
  enum class State {
    down,       // waiting for the next attempt
    connecting, // an attempt in progress (connect, handshake, login, identity checks)
    ready,      // jobs are sent
    draining,   // the connection is to be replaced (e.g. the export grew): jobs in flight finish,
                // new ones are held, then it reconnects at once; not an outage
  };
  static constexpr std::chrono::milliseconds kTick{250};
  static constexpr std::chrono::milliseconds kFirstBackoff{100};
  static constexpr std::chrono::milliseconds kMaxBackoff{5000};

  SessionCore(EventLoop &loop, SessionHealth &health, SessionProtocol &protocol, SessionSettings settings);
  ~SessionCore() = default; // the protocol calls cancel_all() first, while its hooks still work
  SessionCore(const SessionCore &) = delete;
  SessionCore &operator=(const SessionCore &) = delete;

  // From the protocol's constructor: adopt a connection made already (ready), or start connecting.
  void start(bool connected) noexcept;

  // Submission. admit(): 0, or why a request cannot be taken now (ECANCELED after cancel_all(),
  // EIO while the peer has been gone for longer than reconnect-timeout, kHandedBack while a path
  // is not ready).
  int admit() const noexcept;
  // job has req, done, ctx and source set: it is sent now or held. 0 or ENOMEM (then the
  // caller still owns the job).
  int submit(SessionJob *job) noexcept;

  // The protocol's reports.
  void retire(SessionJob *job) noexcept; // every command of job answered: it completes with job->error
  void connected() noexcept;             // the attempt worked and the peer is the same one
  // The attempt failed; the next one comes after the backoff (after kMaxBackoff if refused: the
  // peer answered but is not the same one, or the setup itself failed). refused also becomes the
  // session's last error.
  void attempt_failed(const std::string &why, bool refused = false) noexcept;
  // The ready connection died: in-flight jobs are held for the next one (fenced ones complete
  // with ECANCELED), a new attempt starts after delay.
  void lost(const std::string &why, std::chrono::milliseconds delay = std::chrono::milliseconds(0)) noexcept;
  void drain() noexcept; // see State::draining

  // The engine's.
  void fence(const void *source) noexcept; // the driver reset: see BackendQueue::fence()
  // source's fenced jobs on the wire that may still touch their buffers (touches_buffers) are
  // given up: the connection is dropped (they complete with ECANCELED, the other queues' are
  // resubmitted). See BackendQueue::abandon_fenced().
  void abandon_fenced(const void *source) noexcept;
  void cancel(const void *source) noexcept; // source's jobs complete with ECANCELED (its queue goes)
  void cancel_all() noexcept;               // every job completes with ECANCELED; no more attempts

  State state() const noexcept { return state_; }
  bool ready() const noexcept { return state_ == State::ready; }
  const std::vector<SessionJob *> &in_flight() const noexcept { return in_flight_; }
  std::size_t held() const noexcept { return held_.size(); }
  std::uint64_t reconnects() const noexcept { return reconnects_; }
  std::chrono::milliseconds backoff() const noexcept { return backoff_; }
  const std::string &name() const noexcept { return settings_.name; }
  const std::string &last_error() const noexcept { return last_error_; } // why it was last lost or refused

private:
  void start_attempt() noexcept;
  void issue(SessionJob *job) noexcept;
  void issue_held() noexcept;
  void complete(SessionJob *job, int error) noexcept;
  void remove_in_flight(SessionJob *job) noexcept;
  void on_tick() noexcept;
  void set_health(Backend::State state, const std::string &why = {}) noexcept { health_.set(state, why); }
  void set_state(State state) noexcept; // and tells a path's observer when readiness changed

  SessionHealth::Session health_;
  SessionProtocol &protocol_;
  SessionSettings settings_;
  Timer attempt_timer_;
  Timer tick_;
  State state_ = State::down;
  bool cancelled_ = false;
  bool fail_fast_ = false; // down for longer than reconnect-timeout: new I/O fails at once
  SessionClock::time_point down_since_{};
  SessionClock::time_point attempt_started_{};
  std::chrono::milliseconds backoff_ = kFirstBackoff;
  std::string last_logged_failure_; // attempt failures are logged once per reason per outage
  std::string last_error_;
  std::uint64_t reconnects_ = 0;
  std::uint64_t seq_ = 0;
  std::vector<SessionJob *> in_flight_; // sent on the current connection
  std::vector<SessionJob *> held_;      // waiting for a connection
};

} // namespace vb
