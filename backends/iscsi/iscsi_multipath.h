// One queue's paths to a LUN reached through several portals (multipath inside the daemon, in
// place of open-iscsi sessions plus dm-multipath): one IscsiSession per path, all on the queue's
// loop, each logged in with its own ISID and checked against the LUN open() found (identity,
// block size: a path that shows another LUN is refused and never used).
//
// Each request goes to a ready path that the policy picks (failover: the first ready path in
// order, so I/O fails back as soon as a preferred path returns; round-robin: each ready path in
// turn). A path that loses its session hands its requests back (SessionPathObserver,
// kHandedBack) and they go out again at once on another ready path, oldest first: a path
// failure costs a round trip, not an error. The rules of a reconnect hold across paths: a
// request from before a driver reset is never sent again, a request the target answered with
// an error is not retried elsewhere. With no path ready, requests are held, up to
// reconnect-timeout (then they fail with EIO), and go out on the first path that logs in again;
// the dead paths log in again in the background with the usual backoff.
//
// Threading: everything runs on the owning loop's thread, including construction; the path
// book (IscsiPathBook) is read by status from any thread.
#pragma once

#include "event/event_loop.h"
#include "iscsi/iscsi_session.h"
#include "iscsi/iscsi_target.h"
#include "session/session_core.h"
#include "session/session_health.h"
#include "vduse-bridge/backend.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct iscsi_context;

namespace vb {

class IscsiPathSet final : public BackendQueue {
public:
  // first: a context logged in by IscsiBackend::open() on path first_path, adopted (queue 0),
  // or nullptr; first_key its persistent-reservation key (0: none). target->paths has two or
  // more entries.
  IscsiPathSet(EventLoop &loop, std::shared_ptr<const IscsiTarget> target, iscsi_context *first, unsigned first_path,
               std::uint64_t first_key, unsigned index, std::string name);
  ~IscsiPathSet() override;
  IscsiPathSet(const IscsiPathSet &) = delete;
  IscsiPathSet &operator=(const IscsiPathSet &) = delete;

  int submit(const Request &req, CompletionFn done, void *ctx) noexcept override;
  void cancel_all() noexcept override;
  void fence() noexcept override;
  void abandon_fenced() noexcept override;

  std::size_t ready_paths() const noexcept;
  // Requests moved from a path that lost its session to another one, since start.
  std::uint64_t failovers() const noexcept { return failovers_; }

private:
  struct Forwarded;
  struct Path final : IscsiPathObserver {
    IscsiPathSet *set = nullptr;
    unsigned index = 0;
    bool ready = false;
    bool counted = false; // counted as up in the target's path book
    std::string reported; // the last error put in the book
    // fencing: persistent-reservation. Writes lost with this path's session wait here until its
    // key is preempted from a live path (or its own next login preempts it): until then the
    // target may still run their first copies.
    std::vector<Forwarded *> fenced_out;
    // Keys of this path's lost logins not preempted yet. They outlive the writes held for them
    // (which may fail at reconnect-timeout): until each is preempted, by a live path or by this
    // path's own next login, no write goes out on any path, since a late copy could still land.
    std::vector<std::uint64_t> unfenced;
    bool fencing = false;              // a PREEMPT for it is in flight,
    unsigned fencing_from = 0;         // from that path,
    std::uint64_t fencing_context = 0; // on that context of its session (lost with it: asked again),
    SessionClock::time_point fencing_since{};
    SessionClock::time_point fence_next_try{}; // after a failed PREEMPT
    std::unique_ptr<IscsiSession> session;
    void path_changed(bool now_ready) noexcept override { set->on_path_changed(*this, now_ready); }
    bool others_ready() const noexcept override { return set->ready_paths() > (ready ? 1u : 0u); }
    void access_changed() noexcept override { set->on_access_changed(*this); }
    void access_announced() noexcept override { set->on_access_announced(); }
  };
  // One request on its way through a path.
  struct Forwarded {
    Request req;
    CompletionFn done = nullptr;
    void *ctx = nullptr;
    IscsiPathSet *set = nullptr;
    std::uint64_t seq = 0; // submission order: what is handed back goes out again oldest first
    unsigned path = 0;
    int complete_with = 0;    // waiting for a fence: completes with this then (from before a reset), or goes out again
    std::uint64_t victim = 0; // waiting for a fence: the key of the nexus it was lost with
    SessionClock::time_point held_since{};
    unsigned refusals = 0; // times a path's port refused it for its ALUA state
  };

  static void on_path_done(void *ctx, int error) noexcept;
  void on_path_changed(Path &path, bool ready) noexcept;
  void on_access_changed(Path &path) noexcept;
  void on_access_announced() noexcept;
  // A path I/O may go to now: ready, and its ALUA state carries I/O (alua_rank); its rank, or -1.
  int rank(unsigned path) const noexcept;
  bool any_carries_io() const noexcept;
  int pick() noexcept; // the index of a path of the best rank there is, or -1
  void dispatch(Forwarded *f) noexcept;
  void redispatch() noexcept; // handed back and held requests, oldest first
  void fail_over(Forwarded *f) noexcept;
  void finish(Forwarded *f, int error) noexcept;
  void drop_waiting(int error) noexcept;
  void on_tick() noexcept;
  void update_health() noexcept;
  void report_error(Path &path) noexcept; // the session's last error into the path book
  bool fencing_on() const noexcept;
  void hold_for_fence(Forwarded *f, std::uint64_t victim) noexcept;
  bool hold_behind_fence(Forwarded *f) noexcept; // a new write while a key is unfenced: held
  void start_fence(Path &dead) noexcept;
  template <typename Fenced> void release_fenced(Path &path, Fenced fenced) noexcept;
  void expire_fenced(Path &path) noexcept;

  std::shared_ptr<const IscsiTarget> target_;
  std::string name_;
  SessionHealth paths_health_; // the paths' own reports; the queue's state is health_
  SessionHealth::Session health_;
  std::vector<std::unique_ptr<Path>> paths_;
  std::vector<Forwarded *> waiting_; // handed back or held for a path, not in any path now
  std::uint64_t first_key_ = 0;      // the adopted session's persistent-reservation key
  JobPool<Forwarded> pool_;
  Deferred redispatch_;
  Timer tick_;
  std::uint64_t seq_ = 0;
  std::uint64_t failovers_ = 0;
  unsigned next_ = 0; // round-robin: where the next turn starts
  bool cancelled_ = false;
  bool fail_fast_ = false; // no path for longer than reconnect-timeout: new I/O fails at once
  bool down_ = false;      // no path ready since down_since_
  SessionClock::time_point down_since_{};
  std::string why_down_;
};

} // namespace vb
