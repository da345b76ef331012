// One iSCSI session to the device's LUN, driven by one queue's event loop (libiscsi's
// iscsi_get_fd / iscsi_which_events / iscsi_service, no threads of its own). It survives the
// target: when the session is lost, commands in flight are sent again on the next session and new
// requests are held (up to reconnect-timeout, then failed with EIO); a LUN that comes back with
// another identity or block size is refused, one that comes back with another size is resized. A
// command with no response within request-timeout counts the session as lost.
//
// Resize: a CAPACITY DATA HAS CHANGED unit attention makes the session read READ CAPACITY(16)
// again (in the background; the command that got it is retried at once); a new size with the same
// block size goes into IscsiTarget::size, which requests are checked against and which reports
// the change to the engine once, whichever session saw it first.
//
// Requests become SCSI commands: READ(16)/WRITE(16) straight from and into the request's buffers
// (split at the LUN's transfer limit), SYNCHRONIZE CACHE(16), UNMAP and WRITE SAME(16). UNIT
// ATTENTION is retried at once (bounded), BUSY / TASK SET FULL / NOT READY later with a growing
// delay (bounded); sense data is logged once per kind for the device.
//
// Threading: everything runs on the owning loop's thread, including construction.
#pragma once

#include "event/event_loop.h"
#include "iscsi/iscsi_fencing.h"
#include "iscsi/iscsi_target.h"
#include "session/session_core.h"
#include "vduse-bridge/backend.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

struct iscsi_context;
struct scsi_task;
struct scsi_sense;

namespace vb {

// A path set's view of one of its sessions: also told when the path's ALUA state changes.
class IscsiPathObserver : public SessionPathObserver {
public:
  virtual void access_changed() noexcept = 0;   // this path's state is another now
  virtual void access_announced() noexcept = 0; // the target says states changed: every path reads its own

protected:
  ~IscsiPathObserver() = default;
};
// A request whose commands this path's port refused for its ALUA state (NOT READY: standby,
// unavailable, transitioning): none of them ran, and it goes out again on another path.
inline constexpr int kPathRefused = EHOSTUNREACH;

class IscsiSession final : public BackendQueue, private SessionProtocol {
public:
  // Adopts ctx if given (logged in already, by IscsiBackend::open()), else logs in in the
  // background. target outlives the session. index: the queue's number; path: which of
  // target->paths it logs in to. Together they fix the session's ISID (see make_iscsi_context).
  // observer: the session is one path of several (IscsiPathSet): it holds nothing (kHandedBack)
  // and reports its health to paths_health instead of the device's.
  IscsiSession(EventLoop &loop, std::shared_ptr<const IscsiTarget> target, iscsi_context *ctx, unsigned index,
               std::string name, unsigned path = 0, IscsiPathObserver *observer = nullptr,
               SessionHealth *paths_health = nullptr);
  ~IscsiSession() override;
  IscsiSession(const IscsiSession &) = delete;
  IscsiSession &operator=(const IscsiSession &) = delete;

  // Loop thread. Fails synchronously only for a request out of range or not in whole blocks
  // (and with EIO once the target has been unreachable for longer than reconnect-timeout).
  int submit(const Request &req, CompletionFn done, void *ctx) noexcept override;
  // Completes everything in flight or held with ECANCELED and stops reconnecting; with
  // fencing, the session's key is unregistered first (bounded: 1 s), as the queue is going.
  void cancel_all() noexcept override;
  // The driver reset: held requests, and commands waiting to be sent again (after BUSY, UNIT
  // ATTENTION...), complete with ECANCELED now; commands the target has complete with its
  // answer, or with ECANCELED if the session is lost first (never sent again).
  void fence() noexcept override { core_.fence(this); }
  // After fence(): commands still at the target are given up and the session is replaced.
  void abandon_fenced() noexcept override { core_.abandon_fenced(this); }

  bool connected() const noexcept { return core_.ready(); }
  std::uint64_t reconnects() const noexcept { return core_.reconnects(); }
  // Why the session was last lost or an attempt failed; empty if never.
  const std::string &last_error() const noexcept { return core_.last_error(); }
  const IscsiUri &uri() const noexcept { return target_->paths.empty() ? target_->uri : target_->paths[path_]; }
  // fencing: persistent-reservation. The key this session's nexus registered (0: none), set by
  // the owner for an adopted context (pr_join_sync), else by each login.
  std::uint64_t pr_key() const noexcept { return pr_key_; }
  void set_pr_key(std::uint64_t key) noexcept { pr_key_ = key; }
  // Counts the contexts this session has made: a command sent on an older one has no answer
  // coming once it changed.
  std::uint64_t context_generation() const noexcept { return generation_; }
  // From this (ready) session: PREEMPT victim, another session's key (a dead path's), so that its
  // nexus can no longer write. False (done not called) when it cannot be sent now.
  bool preempt(std::uint64_t victim, PrSteps::Done done) noexcept;
  // A PREEMPT given up on (no answer): forgotten, so that another can be sent.
  void cancel_preempt() noexcept { pr_preempt_.cancel(); }
  // Commands sent again after UNIT ATTENTION, BUSY, TASK SET FULL, NOT READY...
  std::uint64_t retries() const noexcept { return retries_; }
  // ALUA: this path's access state as last read (none: the target has no ALUA, or not known
  // yet), and a new read of it (REPORT TARGET PORT GROUPS, in the background).
  AluaState access() const noexcept { return alua_; }
  void refresh_access() noexcept;

  struct Job;  // one backend request
  struct Part; // one SCSI command of a job

private:
  // Where an attempt is (SessionCore says whether one is in progress).
  enum class Phase { none, login, probing };
  using Clock = SessionClock;

  // SessionProtocol: libiscsi's side of the reconnecting session.
  void connect() noexcept override;
  void disconnect() noexcept override;
  void send(SessionJob *job) noexcept override;
  void requeue(SessionJob *job) noexcept override;
  std::size_t fence_job(SessionJob *job) noexcept override;
  bool overdue(const SessionJob &job, Clock::time_point issued_before) const noexcept override;
  void on_tick() noexcept override;
  void release(SessionJob *job, int error) noexcept override;

  // Part results.
  static void on_task_done(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void on_part_result(Part *part, int status, const scsi_sense &sense, bool short_transfer) noexcept;
  void on_check_condition(Part *part, const scsi_sense &sense) noexcept;
  void complete_part(Part *part, int error) noexcept;
  void retry_later(Part *part, const std::string &why) noexcept;
  void report(const Part *part, const std::string &kind, const std::string &what) noexcept;

  // Issuing.
  int plan(Job *job) noexcept;
  void issue_part(Part *part) noexcept;
  void on_retry_timer() noexcept;

  // The session.
  // Connect, log in, check the LUN: each step is a callback of the one before. (Not
  // iscsi_full_connect_async(): libiscsi leaks its state when a login is abandoned.)
  static void on_tcp_connected(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  static void on_logged_in(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void start_probe() noexcept;
  bool issue_probe(std::size_t which) noexcept;
  static void on_probed(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void check_probe() noexcept;
  void become_ready() noexcept;
  void start_fencing() noexcept;
  void finish_login() noexcept; // after the checks (and the fence): the ALUA state, then ready
  // ALUA.
  bool issue_rtpg() noexcept;
  static void on_alua(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void set_access(AluaState state, const char *how) noexcept;
  // The path checker (nop-interval, nop-timeout).
  void check_alive() noexcept;
  static void on_nop(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void leave_reservation() noexcept;
  // Resize.
  void check_capacity() noexcept;
  static void on_capacity(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void adopt_size(std::uint64_t blocks, const char *how) noexcept;
  void fail(std::string why, bool refused = false) noexcept;
  void handle_failure() noexcept;
  void close_context() noexcept;
  void service(int revents) noexcept;
  void flush() noexcept;
  void update_events() noexcept;

  EventLoop &loop_;
  std::shared_ptr<const IscsiTarget> target_;
  std::string name_;
  unsigned index_;
  unsigned path_;
  IscsiPathObserver *observer_; // one path of several, or nullptr
  iscsi_context *ctx_ = nullptr;
  std::unique_ptr<IoWatch> watch_;
  int watch_fd_ = -1;
  Timer failure_timer_; // handles a failure noticed outside iscsi_service()
  Timer retry_timer_;
  Clock::time_point retry_due_{}; // when retry_timer_ fires, if pending
  // Writes the commands queued by a batch of submissions once the batch is over, straight to the
  // socket: no waiting for writability, no switching the watch to POLLOUT and back.
  Deferred flush_;
  Phase phase_ = Phase::none;
  bool closing_ = false;    // destroying a context: its callbacks are ignored
  bool in_service_ = false; // inside iscsi_service(): the context must not be destroyed
  struct Failure {
    std::string why;
    bool refused = false; // the LUN came back different: retry slowly
  };
  std::optional<Failure> failure_;
  std::uint64_t generation_ = 0; // of the context; results of older ones are ignored
  std::uint64_t retries_ = 0;
  // The checks of a LUN after each login: READ CAPACITY(16), VPD 0x83, MODE SENSE(6), INQUIRY.
  std::array<scsi_task *, 4> probe_tasks_{};
  std::array<bool, 4> probe_ok_{};
  unsigned probes_left_ = 0;
  unsigned probe_attentions_ = 0; // UNIT ATTENTIONs answered to the checks (one per new session)
  bool tcp_connected_ = false;
  // READ CAPACITY(16) after CAPACITY DATA HAS CHANGED: the task in flight, whether another change
  // was announced meanwhile (read again once it is done), UNIT ATTENTIONs answered to it in a row.
  scsi_task *capacity_task_ = nullptr;
  bool capacity_again_ = false;
  unsigned capacity_attentions_ = 0;
  LunInfo probed_;
  // ALUA: what the login found (TPGS, this path's port), the state, the read in flight, whether
  // another read was asked for meanwhile, UNIT ATTENTIONs answered to it in a row, whether it is
  // the login's (the session is ready once it is answered), when the last one was sent.
  int tpgs_ = 0;
  AluaPort alua_port_;
  AluaState alua_ = AluaState::none;
  bool alua_readable_ = false;             // the login's REPORT TARGET PORT GROUPS gave a state
  AluaState probe_alua_ = AluaState::none; // a login check refused with an ALUA NOT READY
  scsi_task *alua_task_ = nullptr;
  bool alua_again_ = false;
  unsigned alua_attentions_ = 0;
  bool alua_login_ = false;
  SessionClock::time_point alua_read_at_{};
  PrSteps pr_;         // this login's registration (fencing: persistent-reservation)
  PrSteps pr_preempt_; // a dead path's key, preempted from this session
  std::uint64_t pr_key_ = 0;
  std::chrono::milliseconds nop_interval_{0};
  std::uint64_t nop_generation_ = 0; // the context the state below is of
  bool nop_outstanding_ = false;
  SessionClock::time_point nop_sent_{}; // the last NOP-Out (outstanding: not answered yet)
  std::vector<unsigned char> zeros_;    // one logical block of zeros, the WRITE SAME data
  JobPool<Job> jobs_;
  SessionCore core_; // last: its timers go first; the held and in-flight jobs, health, backoff
};

} // namespace vb
