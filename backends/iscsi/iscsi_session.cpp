#include "iscsi/iscsi_session.h"

#include "common/log.h"
#include "common/units.h"

#include <algorithm>
#include <cerrno>
#include <event2/event.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <limits>
#include <poll.h>

namespace vb {

struct IscsiSession::Part {
  enum class State { pending, issued, waiting, done };
  Job *job = nullptr;
  State state = State::pending;
  scsi_task *task = nullptr; // while issued
  std::uint64_t lba = 0;
  std::uint32_t blocks = 0;
  std::size_t iov_first = 0; // reads and writes: this command's slice of Job::iov
  int iov_count = 0;
  unsigned attempts = 0;        // retries so far (UNIT ATTENTION, BUSY, ...)
  std::uint64_t generation = 0; // the context it was issued on
  std::chrono::steady_clock::time_point issued_at{};
  std::chrono::steady_clock::time_point retry_at{};
};

struct IscsiSession::Job : SessionJob {
  IscsiSession *session = nullptr;
  unsigned parts_left = 0;
  bool hand_back = false;      // a command was refused for this path's ALUA state: kPathRefused
  std::vector<scsi_iovec> iov; // the request's buffers, cut at command boundaries
  std::vector<Part> parts;     // fixed while the job is in flight: libiscsi holds pointers to them
};

namespace {

using Clock = SessionClock;
constexpr unsigned kMaxUnitAttentionRetries = 8;
constexpr unsigned kMaxCommandsPerRequest = 1024;
constexpr unsigned kMaxDelayedRetries = 40; // BUSY & co: 10 ms doubling to 1 s, about 30 s in all
constexpr auto kMaxRetryDelay = std::chrono::milliseconds(1000);
// ALUA states are read again this often: a path that carries no I/O hears no unit attention.
constexpr auto kAluaPollRefused = std::chrono::seconds(1); // standby, unavailable, transitioning
constexpr auto kAluaPollActive = std::chrono::seconds(5);

// Why a command failed, for a log line ("" when out of memory).
std::string failure_text(int status, const scsi_task *task) noexcept {
  try {
    return status == SCSI_STATUS_CHECK_CONDITION ? describe_sense(task->sense) : describe_status(status);
  } catch (...) {
    return {};
  }
}

const char *op_name(Op op) noexcept {
  switch (op) {
  case Op::read:
    return "READ(16)";
  case Op::write:
    return "WRITE(16)";
  case Op::flush:
    return "SYNCHRONIZE CACHE(16)";
  case Op::discard:
    return "UNMAP";
  case Op::write_zeroes:
    return "WRITE SAME(16)";
  }
  return "?";
}

} // namespace

namespace {

SessionSettings iscsi_session_settings(const IscsiTarget &target, std::string name, SessionPathObserver *path) {
  SessionSettings s;
  s.path = path;
  s.name = std::move(name);
  s.peer = "target";
  s.connection = "session";
  s.back_again = "logged in again";
  s.reconnect_timeout = target.options.reconnect_timeout;
  s.request_timeout = target.options.request_timeout;
  s.attempt_timeout = target.login_timeout;
  return s;
}

} // namespace

IscsiSession::IscsiSession(EventLoop &loop, std::shared_ptr<const IscsiTarget> target, iscsi_context *ctx,
                           unsigned index, std::string name, unsigned path, IscsiPathObserver *observer,
                           SessionHealth *paths_health)
    : loop_(loop), target_(std::move(target)), name_(std::move(name)), index_(index), path_(path), observer_(observer),
      failure_timer_(loop, [this] { handle_failure(); }), retry_timer_(loop, [this] { on_retry_timer(); }),
      flush_(loop, [this] { flush(); }), nop_interval_(target_->options.effective_nop_interval(target_->paths.size())),
      zeros_(target_->caps.logical_block_size, 0), core_(loop, paths_health ? *paths_health : target_->sessions, *this,
                                                         iscsi_session_settings(*target_, name_, observer)) {
  if (ctx) {
    ctx_ = ctx;
    ++generation_;
    // open() checked this login: its ALUA data is the target's.
    tpgs_ = target_->lun.tpgs;
    alua_port_ = target_->lun.alua_port;
    core_.start(true);
    update_events();
    refresh_access();
  } else {
    core_.start(false);
  }
}

IscsiSession::~IscsiSession() {
  leave_reservation();
  core_.cancel_all();
}

void IscsiSession::cancel_all() noexcept {
  leave_reservation(); // while the session is still up: cancel_all() closes it
  core_.cancel_all();
}

int IscsiSession::submit(const Request &req, CompletionFn done, void *ctx) noexcept {
  const BackendCapabilities &caps = target_->caps;
  // The size now: it changes on resize.
  if (const std::uint64_t size = target_->size.get(); req.offset > size || req.length > size - req.offset)
    return EIO;
  if (req.offset % caps.logical_block_size != 0 || req.length % caps.logical_block_size != 0)
    return EINVAL;
  if (const int rc = core_.admit(); rc != 0)
    return rc;
  if (req.length == 0 && req.op != Op::flush) {
    done(ctx, 0); // nothing to do; a WRITE SAME of 0 blocks would mean "to the end"
    return 0;
  }
  Job *job = jobs_.take();
  if (!job)
    return ENOMEM;
  job->session = this;
  job->req = req;
  job->done = done;
  job->ctx = ctx;
  job->source = this;
  job->hand_back = false;
  if (int rc = plan(job); rc != 0 || (rc = core_.submit(job)) != 0) {
    jobs_.give(job);
    return rc;
  }
  if (core_.ready() && !in_service_)
    flush_.schedule(); // inside iscsi_service(), service() writes it on its way out
  return 0;
}

// Cuts the job into commands no larger than the LUN accepts, each read or write with its own
// slice of the request's buffers (libiscsi reads and writes them in place, no copy).
int IscsiSession::plan(Job *job) noexcept {
  const Request &r = job->req;
  const std::uint32_t bs = target_->caps.logical_block_size;
  // One request's commands are bounded (memory per queue is): a request is at most what the
  // disk advertises (seg_max * size_max), so this only refuses what a LUN with absurdly small
  // limits would need, or a request from something that ignored the device's limits.
  const std::uint64_t per_command = r.op == Op::read || r.op == Op::write ? target_->max_rw_bytes
                                    : r.op == Op::discard                 ? target_->max_unmap_blocks * bs
                                    : r.op == Op::write_zeroes            ? target_->max_zero_blocks * bs
                                                                          : r.length + 1;
  if (per_command > 0 && r.length / per_command >= kMaxCommandsPerRequest) {
    VB_LOG_WARN("%s: a request of %llu bytes would take more than %u commands; failed", name_.c_str(),
                static_cast<unsigned long long>(r.length), kMaxCommandsPerRequest);
    return EIO;
  }
  try {
    job->parts.clear();
    job->iov.clear();
    auto split = [&](std::uint64_t max_blocks) {
      for (std::uint64_t lba = r.offset / bs, left = r.length / bs; left > 0;) {
        const std::uint64_t n = std::min(left, max_blocks);
        Part p;
        p.lba = lba;
        p.blocks = static_cast<std::uint32_t>(n);
        job->parts.push_back(p);
        lba += n;
        left -= n;
      }
    };
    switch (r.op) {
    case Op::flush:
      job->parts.emplace_back(); // the whole LUN: LBA 0, 0 blocks
      break;
    case Op::discard:
      if (target_->max_unmap_blocks == 0)
        return EOPNOTSUPP;
      split(target_->max_unmap_blocks);
      break;
    case Op::write_zeroes:
      split(target_->max_zero_blocks);
      break;
    case Op::read:
    case Op::write: {
      int i = 0;
      std::size_t used = 0; // of r.iov[i]
      for (std::uint64_t pos = 0; pos < r.length;) {
        const std::uint64_t n = std::min(r.length - pos, target_->max_rw_bytes);
        Part p;
        p.lba = (r.offset + pos) / bs;
        p.blocks = static_cast<std::uint32_t>(n / bs);
        p.iov_first = job->iov.size();
        for (std::uint64_t need = n; need > 0;) {
          if (i >= r.iovcnt)
            return EINVAL; // fewer bytes in the buffers than the request's length
          const std::size_t take = std::min<std::uint64_t>(r.iov[i].iov_len - used, need);
          if (take > 0)
            job->iov.push_back({static_cast<char *>(r.iov[i].iov_base) + used, take});
          used += take;
          need -= take;
          if (used == r.iov[i].iov_len) {
            ++i;
            used = 0;
          }
        }
        p.iov_count = static_cast<int>(job->iov.size() - p.iov_first);
        job->parts.push_back(p);
        pos += n;
      }
      break;
    }
    }
  } catch (...) {
    return ENOMEM;
  }
  for (Part &p : job->parts)
    p.job = job;
  job->parts_left = static_cast<unsigned>(job->parts.size());
  return 0;
}

void IscsiSession::send(SessionJob *sent) noexcept {
  auto *job = static_cast<Job *>(sent);
  for (Part &p : job->parts)
    if (p.state == Part::State::pending)
      issue_part(&p);
}

void IscsiSession::issue_part(Part *part) noexcept {
  if (part->job->fenced) {
    complete_part(part, ECANCELED); // a retry of the old driver's command, after a reset
    return;
  }
  if (!ctx_ || !core_.ready() || failure_)
    return; // stays pending; issued again on the next session
  const Request &r = part->job->req;
  const int lun = target_->uri.lun;
  const std::uint32_t bs = target_->caps.logical_block_size;
  const std::uint32_t bytes = part->blocks * bs;
  scsi_iovec *iov = part->iov_count > 0 ? &part->job->iov[part->iov_first] : nullptr;
  scsi_task *task = nullptr;
  switch (r.op) {
  case Op::read:
    task = iscsi_read16_iov_task(ctx_, lun, part->lba, bytes, static_cast<int>(bs), 0, 0, 0, 0, 0, &on_task_done, part,
                                 iov, part->iov_count);
    break;
  case Op::write:
    task = iscsi_write16_iov_task(ctx_, lun, part->lba, nullptr, bytes, static_cast<int>(bs), 0, 0, 0, 0, 0,
                                  &on_task_done, part, iov, part->iov_count);
    break;
  case Op::flush:
    task = iscsi_synchronizecache16_task(ctx_, lun, 0, 0, 0, 0, &on_task_done, part);
    break;
  case Op::discard: {
    unmap_list range{part->lba, part->blocks}; // copied into the command's data
    task = iscsi_unmap_task(ctx_, lun, 0, 0, &range, 1, &on_task_done, part);
    break;
  }
  case Op::write_zeroes: {
    const bool unmap = r.may_unmap && target_->caps.can_zero_unmap;
    task = iscsi_writesame16_task(ctx_, lun, part->lba, zeros_.data(), bs, part->blocks, 0, unmap ? 1 : 0, 0, 0,
                                  &on_task_done, part);
    break;
  }
  }
  if (!task) {
    fail(std::string("cannot queue ") + op_name(r.op) + ": " + iscsi_error(ctx_));
    return;
  }
  part->task = task;
  part->state = Part::State::issued;
  part->generation = generation_;
  part->issued_at = Clock::now();
}

void IscsiSession::on_task_done(iscsi_context * /*iscsi*/, int status, void *command_data,
                                void *private_data) noexcept {
  auto *part = static_cast<Part *>(private_data);
  auto *task = static_cast<scsi_task *>(command_data);
  IscsiSession *self = part->job->session;
  scsi_sense sense{};
  bool short_transfer = false;
  if (task) {
    sense = task->sense;
    short_transfer = status == SCSI_STATUS_GOOD && task->residual_status == SCSI_RESIDUAL_UNDERFLOW &&
                     task->residual > 0 && (part->job->req.op == Op::read || part->job->req.op == Op::write);
    scsi_free_scsi_task(task);
  }
  if (part->task == task)
    part->task = nullptr;
  // A context being torn down cancels its commands: they are issued again on the next one.
  if (self->closing_ || part->generation != self->generation_ || part->state != Part::State::issued)
    return;
  self->on_part_result(part, status, sense, short_transfer);
}

void IscsiSession::on_part_result(Part *part, int status, const scsi_sense &sense, bool short_transfer) noexcept {
  switch (status) {
  case SCSI_STATUS_GOOD:
  case SCSI_STATUS_CONDITION_MET:
    if (short_transfer) {
      report(part, "short transfer", "the target transferred less than asked; failing the request");
      complete_part(part, EIO);
      return;
    }
    complete_part(part, 0);
    return;
  case SCSI_STATUS_CHECK_CONDITION:
    on_check_condition(part, sense);
    return;
  case SCSI_STATUS_BUSY:
  case SCSI_STATUS_TASK_SET_FULL:
  case SCSI_STATUS_TASK_ABORTED:
    retry_later(part, describe_status(status));
    return;
  case SCSI_STATUS_RESERVATION_CONFLICT:
    report(part, "reservation conflict", "RESERVATION CONFLICT: another initiator holds a reservation on the LUN");
    complete_part(part, EBUSY);
    return;
  case SCSI_STATUS_CANCELLED:
  case SCSI_STATUS_ERROR:
  case SCSI_STATUS_TIMEOUT:
    // Not an answer about the data: the session is gone. The part stays with its job and is
    // issued again once a new session is up.
    part->state = Part::State::pending;
    // libiscsi cancels the commands of a connection that closed or failed; its error text is
    // only current for the other two.
    fail(status == SCSI_STATUS_CANCELLED
             ? std::string("the connection closed or failed")
             : std::string("the session failed (") + describe_status(status) + ": " + iscsi_error(ctx_) + ")");
    return;
  default:
    report(part, "status " + std::to_string(status), std::string("unexpected SCSI status ") + describe_status(status));
    complete_part(part, EIO);
    return;
  }
}

void IscsiSession::on_check_condition(Part *part, const scsi_sense &sense) noexcept {
  const std::string kind = describe_sense(sense);
  const Op op = part->job->req.op;
  switch (sense.key) {
  case SCSI_SENSE_UNIT_ATTENTION:
    // Something changed on the target (a reset, a new session, mode parameters, the capacity):
    // the command was not executed and may be sent again.
    if (sense.ascq == SCSI_SENSE_ASCQ_CAPACITY_DATA_HAS_CHANGED) {
      VB_LOG_INFO("%s: the target says the LUN's capacity changed; reading it again", name_.c_str());
      check_capacity();
    } else if (alua_attention(sense.key, sense.ascq) && observer_) {
      VB_LOG_INFO("%s: the target says the ALUA states changed (%s); reading them again", name_.c_str(), kind.c_str());
      observer_->access_announced(); // every path reads its state again
    } else {
      report(part, kind, kind + ": retrying the command");
    }
    if (part->attempts++ < kMaxUnitAttentionRetries) {
      ++retries_;
      part->state = Part::State::pending;
      issue_part(part);
      return;
    }
    complete_part(part, EIO);
    return;
  case SCSI_SENSE_NOT_READY:
    if (const auto state = alua_state_from_sense(sense.key, sense.ascq);
        state && observer_ && tpgs_ != 0 && alua_readable_) {
      // This path's port takes no I/O now (ALUA): the command did not run; the request goes
      // to another path once its other commands are answered.
      set_access(*state, "NOT READY");
      refresh_access();
      report(part, kind, kind + ": the path's port takes no I/O now; the request goes to another path");
      part->job->hand_back = true;
      complete_part(part, 0);
      return;
    }
    if ((sense.ascq >> 8) == 0x04 && sense.ascq != 0x0402 && sense.ascq != 0x0403) { // becoming ready, busy...
      retry_later(part, kind);
      return;
    }
    report(part, kind, kind + ": failing the request");
    complete_part(part, EIO);
    return;
  case SCSI_SENSE_COMMAND_ABORTED:
    retry_later(part, kind);
    return;
  case SCSI_SENSE_DATA_PROTECTION:
    report(part, kind, kind + ": the LUN is write-protected");
    complete_part(part, EROFS);
    return;
  case SCSI_SENSE_ILLEGAL_REQUEST:
    if ((op == Op::discard || op == Op::write_zeroes || op == Op::flush) &&
        (sense.ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE || sense.ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB ||
         sense.ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_PARAMETER_LIST)) {
      report(part, kind, kind + ": the target does not support it after all; the request is unsupported");
      complete_part(part, EOPNOTSUPP);
      return;
    }
    report(part, kind, kind + ": failing the request");
    complete_part(part, EIO);
    return;
  case SCSI_SENSE_RECOVERED_ERROR:
  case SCSI_SENSE_NO_SENSE:
    complete_part(part, 0); // the command succeeded
    return;
  default: // MEDIUM ERROR, HARDWARE ERROR, MISCOMPARE...
    report(part, kind, kind + ": failing the request with EIO");
    complete_part(part, EIO);
    return;
  }
}

void IscsiSession::report(const Part *part, const std::string &kind, const std::string &what) noexcept {
  try {
    const char *op = op_name(part->job->req.op);
    if (target_->first_report(std::string(op) + " " + kind))
      VB_LOG_WARN("%s: %s at block %llu: %s (reported once per kind)", name_.c_str(), op,
                  static_cast<unsigned long long>(part->lba), what.c_str());
    else
      VB_LOG_DEBUG("%s: %s at block %llu: %s", name_.c_str(), op, static_cast<unsigned long long>(part->lba),
                   what.c_str());
  } catch (...) {
    VB_LOG_WARN("%s: a command failed (out of memory while reporting it)", name_.c_str());
  }
}

void IscsiSession::retry_later(Part *part, const std::string &why) noexcept {
  if (part->attempts >= kMaxDelayedRetries) {
    report(part, why + " retries",
           why + ": still failing after " + std::to_string(part->attempts) + " retries; failing the request");
    complete_part(part, EIO);
    return;
  }
  VB_LOG_DEBUG("%s: %s at block %llu: %s; retrying later", name_.c_str(), op_name(part->job->req.op),
               static_cast<unsigned long long>(part->lba), why.c_str());
  const auto delay = std::min(std::chrono::milliseconds(10) * (1 << std::min(part->attempts, 7u)), kMaxRetryDelay);
  ++part->attempts;
  ++retries_;
  part->state = Part::State::waiting;
  part->retry_at = Clock::now() + delay;
  if (!retry_timer_.pending() || part->retry_at < retry_due_) {
    retry_due_ = part->retry_at;
    retry_timer_.arm(delay);
  }
}

void IscsiSession::on_retry_timer() noexcept {
  const auto now = Clock::now();
  auto next = Clock::time_point::max();
  std::vector<Job *> jobs; // issue_part() may complete a job, which leaves the in-flight list
  try {
    for (SessionJob *job : core_.in_flight())
      jobs.push_back(static_cast<Job *>(job));
  } catch (const std::bad_alloc &) {
    retry_timer_.arm(std::chrono::milliseconds(10));
    return;
  }
  for (Job *job : jobs) {
    for (Part &p : job->parts) {
      if (p.state != Part::State::waiting)
        continue;
      if (p.retry_at <= now) {
        p.state = Part::State::pending;
        issue_part(&p);
      } else {
        next = std::min(next, p.retry_at);
      }
    }
  }
  if (next != Clock::time_point::max()) {
    retry_due_ = next;
    retry_timer_.arm(std::chrono::ceil<std::chrono::milliseconds>(next - now));
  }
  flush();
}

void IscsiSession::complete_part(Part *part, int error) noexcept {
  part->state = Part::State::done;
  Job *job = part->job;
  if (error != 0 && job->error == 0)
    job->error = error;
  // Every error here but a fence's ECANCELED comes from the target's answers: the request's
  // result is decided, and a lost session must not send it again (SessionJob::answered_error).
  if (error != 0 && error != ECANCELED)
    job->answered_error = true;
  if (--job->parts_left == 0) {
    if (job->hand_back && job->error == 0)                 // refused for the port's ALUA state: nothing ran
      job->error = job->fenced ? ECANCELED : kPathRefused; // from before a reset: never sent again
    core_.retire(job);
  }
}

void IscsiSession::release(SessionJob *job, int /*error*/) noexcept { jobs_.give(static_cast<Job *>(job)); }

void IscsiSession::connect() noexcept {
  phase_ = Phase::login;
  try {
    ctx_ = make_iscsi_context(target_->options, uri(), session_number(index_, path_));
  } catch (const std::exception &e) {
    // A password file that cannot be read now may be fixed while we wait.
    core_.attempt_failed(e.what(), true);
    return;
  }
  ++generation_;
  tcp_connected_ = false;
  if (iscsi_connect_async(ctx_, uri().portal.c_str(), &on_tcp_connected, this) != 0) {
    core_.attempt_failed(std::string("cannot connect: ") + iscsi_error(ctx_));
    return;
  }
  update_events();
}

void IscsiSession::on_tcp_connected(iscsi_context * /*iscsi*/, int status, void * /*command_data*/,
                                    void *private_data) noexcept {
  auto *self = static_cast<IscsiSession *>(private_data);
  // libiscsi may call this again when the connection closes: the loss is noticed elsewhere.
  if (self->closing_ || self->phase_ != Phase::login || self->tcp_connected_)
    return;
  if (status != SCSI_STATUS_GOOD) {
    self->fail("cannot connect: " + iscsi_error(self->ctx_));
    return;
  }
  self->tcp_connected_ = true;
  if (iscsi_login_async(self->ctx_, &on_logged_in, self) != 0)
    self->fail("cannot log in: " + iscsi_error(self->ctx_));
}

void IscsiSession::on_logged_in(iscsi_context * /*iscsi*/, int status, void * /*command_data*/,
                                void *private_data) noexcept {
  auto *self = static_cast<IscsiSession *>(private_data);
  if (self->closing_ || self->phase_ != Phase::login)
    return;
  const char *moved = iscsi_get_target_address(self->ctx_);
  if (status == SCSI_STATUS_REDIRECT && moved && *moved) {
    // The target moved to another portal: log in there (this time).
    VB_LOG_INFO("%s: the target redirects to %s", self->name_.c_str(), moved);
    const std::string portal = moved;
    iscsi_disconnect(self->ctx_);
    self->tcp_connected_ = false;
    if (iscsi_connect_async(self->ctx_, portal.c_str(), &on_tcp_connected, self) != 0)
      self->fail("cannot connect to " + portal + ": " + iscsi_error(self->ctx_));
    return;
  }
  if (status != SCSI_STATUS_GOOD) {
    self->fail("cannot log in: " + iscsi_error(self->ctx_));
    return;
  }
  self->start_probe();
}

// The target must still be the LUN this disk was: serving another LUN's data under this one's
// name would corrupt whatever uses it.
void IscsiSession::start_probe() noexcept {
  phase_ = Phase::probing;
  probe_alua_ = AluaState::none;
  probed_ = LunInfo{};
  probe_ok_ = {};
  probes_left_ = 0;
  probe_attentions_ = 0;
  for (std::size_t i = 0; i < probe_tasks_.size(); ++i)
    if (!issue_probe(i))
      return;
}

bool IscsiSession::issue_probe(std::size_t which) noexcept {
  const int lun = target_->uri.lun;
  scsi_task *task = nullptr;
  switch (which) {
  case 0:
    task = iscsi_readcapacity16_task(ctx_, lun, &on_probed, this);
    break;
  case 1:
    task = iscsi_inquiry_task(ctx_, lun, 1, SCSI_INQUIRY_PAGECODE_DEVICE_IDENTIFICATION, 255, &on_probed, this);
    break;
  case 2:
    task = iscsi_modesense6_task(ctx_, lun, 1, SCSI_MODESENSE_PC_CURRENT, SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255,
                                 &on_probed, this);
    break;
  default:
    task = iscsi_inquiry_task(ctx_, lun, 0, 0, 255, &on_probed, this); // standard: TPGS (ALUA)
    break;
  }
  if (!task) {
    fail("cannot check the LUN: " + iscsi_error(ctx_));
    return false;
  }
  probe_tasks_[which] = task;
  ++probes_left_;
  return true;
}

void IscsiSession::on_probed(iscsi_context * /*iscsi*/, int status, void *command_data, void *private_data) noexcept {
  auto *self = static_cast<IscsiSession *>(private_data);
  auto *task = static_cast<scsi_task *>(command_data);
  std::size_t which = self->probe_tasks_.size();
  for (std::size_t i = 0; i < self->probe_tasks_.size(); ++i)
    if (task && self->probe_tasks_[i] == task)
      which = i;
  const bool current = task && !self->closing_ && self->phase_ == Phase::probing && which < self->probe_tasks_.size();
  bool attention = false;
  if (current) {
    self->probe_tasks_[which] = nullptr;
    --self->probes_left_;
    // A new session usually starts with a UNIT ATTENTION (power on, reset): ask again.
    attention = status == SCSI_STATUS_CHECK_CONDITION && task->sense.key == SCSI_SENSE_UNIT_ATTENTION &&
                self->probe_attentions_++ < 10;
    if (status == SCSI_STATUS_CHECK_CONDITION)
      if (const auto state = alua_state_from_sense(task->sense.key, task->sense.ascq))
        self->probe_alua_ = *state; // the port refuses the checks for its state
    if (!attention) {
      bool ok = false;
      switch (which) {
      case 0:
        ok = parse_read_capacity16(task, self->probed_);
        break;
      case 1:
        ok = parse_device_identification(task, self->probed_);
        break;
      case 2:
        ok = parse_mode_sense(task, self->probed_);
        break;
      default:
        ok = parse_standard_inquiry(task, self->probed_);
        break;
      }
      self->probe_ok_[which] = ok;
    }
  }
  if (task)
    scsi_free_scsi_task(task);
  if (!current)
    return;
  if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR || status == SCSI_STATUS_TIMEOUT) {
    self->fail("the session failed while checking the LUN");
    return;
  }
  if (attention) {
    self->issue_probe(which);
    return;
  }
  if (self->probes_left_ == 0)
    self->check_probe();
}

void IscsiSession::check_probe() noexcept {
  const LunInfo &was = target_->lun;
  const LunInfo &now = probed_;
  if (probe_alua_ != AluaState::none) {
    // Not another LUN: this port takes no commands in its ALUA state. Logged in again later.
    fail(std::string("the port refuses the LUN checks in its ALUA state (") + alua_state_name(probe_alua_) + ")");
    return;
  }
  std::string why;
  try {
    if (!probe_ok_[0])
      why = "READ CAPACITY(16) failed";
    else if (now.block_size != was.block_size)
      why = "it now has " + std::to_string(now.block_size) + "-byte blocks, it had " + std::to_string(was.block_size);
    else if (now.blocks > std::numeric_limits<std::uint64_t>::max() / now.block_size)
      why = "it reports " + std::to_string(now.blocks) + " blocks";
    else if (probe_ok_[1] ? now.identity != was.identity : !was.identity.empty())
      why = "its identity (VPD page 0x83) is now '" + (now.wwn.empty() ? now.identity : now.wwn) + "', it was '" +
            (was.wwn.empty() ? was.identity : was.wwn) + "'";
    else if (probe_ok_[2] && now.write_protected && !was.write_protected)
      why = "it is now write-protected";
    else if (observer_ && observer_->others_ready() && now.blocks * now.block_size != target_->size.get())
      // A resize is learnt on a path in use (its unit attention); a new path that disagrees
      // with it may show another LUN, and is let in once the sizes agree.
      why = "it reports " + format_size(now.blocks * now.block_size) + ", the paths in use " +
            format_size(target_->size.get());
  } catch (...) {
    why = "out of memory while checking it";
  }
  if (!why.empty()) {
    fail("the target came back with a different LUN (" + why + "); refusing it", true);
    return;
  }
  if (target_->options.fencing == IscsiOptions::Fencing::persistent_reservation) {
    start_fencing();
    return;
  }
  // The same LUN, maybe resized while the session was down.
  adopt_size(now.blocks, "after logging in again");
  finish_login();
}

// fencing: persistent-reservation: this login registers a new key and preempts the slot's stale
// ones (its previous login's nexus can then no longer write) before the session carries I/O.
void IscsiSession::start_fencing() noexcept {
  const PrSlot slot{pr_owner(target_->options, uri()), static_cast<std::uint16_t>(session_number(index_, path_))};
  const auto seed = static_cast<std::uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                    (static_cast<std::uint32_t>(generation_) << 8);
  const std::uint64_t generation = generation_;
  const bool queued = pr_.join(ctx_, uri().lun, slot, false, seed, [this, generation](bool ok, const std::string &why) {
    if (closing_ || generation != generation_ || phase_ != Phase::probing)
      return;
    if (!ok) {
      fail("the fence (persistent reservation) could not be set up: " + why, true);
      return;
    }
    pr_key_ = pr_.key();
    if (pr_.preempted() > 0)
      VB_LOG_INFO("%s: fenced %zu earlier session(s) of this queue and path (their persistent-reservation keys "
                  "preempted): what they still send is refused",
                  name_.c_str(), pr_.preempted());
    adopt_size(probed_.blocks, "after logging in again");
    finish_login();
  });
  if (!queued)
    fail("cannot queue PERSISTENT RESERVE: " + iscsi_error(ctx_));
}

bool IscsiSession::preempt(std::uint64_t victim, PrSteps::Done done) noexcept {
  if (!ctx_ || !core_.ready() || pr_key_ == 0 || pr_preempt_.busy())
    return false;
  if (!pr_preempt_.preempt(ctx_, uri().lun, pr_key_, victim, std::move(done)))
    return false;
  if (!in_service_)
    flush_.schedule(); // queued outside iscsi_service(): written on the next turn of the loop
  return true;
}

// A clean close (the device removed, the daemon stopping): this nexus unregisters, so that the
// LUN is not left reserved for nobody. Bounded: a target that does not answer keeps the key.
void IscsiSession::leave_reservation() noexcept {
  if (!ctx_ || !core_.ready() || pr_key_ == 0 || closing_)
    return;
  pr_.cancel();
  pr_preempt_.cancel();
  bool left = false;
  if (!pr_.leave(ctx_, uri().lun, pr_key_, [&left](bool, const std::string &) { left = true; }))
    return;
  std::string why;
  if (poll_context_until(
          ctx_, [&left] { return left; }, 1, {}, why))
    pr_key_ = 0;
  pr_.cancel();
}

// CAPACITY DATA HAS CHANGED: read the capacity again, without holding anything up (the command
// that got the unit attention is retried at once; requests are checked against the new size once
// it is known).
void IscsiSession::check_capacity() noexcept {
  if (!ctx_ || !core_.ready() || failure_)
    return; // a new session reads the capacity when it logs in
  if (capacity_task_) {
    capacity_again_ = true; // announced again while reading: read once more afterwards
    return;
  }
  capacity_task_ = iscsi_readcapacity16_task(ctx_, target_->uri.lun, &on_capacity, this);
  if (!capacity_task_)
    fail("cannot queue READ CAPACITY(16): " + iscsi_error(ctx_));
}

void IscsiSession::on_capacity(iscsi_context * /*iscsi*/, int status, void *command_data, void *private_data) noexcept {
  auto *self = static_cast<IscsiSession *>(private_data);
  auto *task = static_cast<scsi_task *>(command_data);
  const bool current = task && !self->closing_ && task == self->capacity_task_;
  LunInfo info;
  bool parsed = false;
  bool attention = false;
  std::string why;
  if (current) {
    self->capacity_task_ = nullptr;
    attention = status == SCSI_STATUS_CHECK_CONDITION && task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
    parsed = !attention && parse_read_capacity16(task, info);
    if (!parsed && !attention)
      why = failure_text(status, task);
  }
  if (task)
    scsi_free_scsi_task(task);
  if (!current)
    return;
  if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR || status == SCSI_STATUS_TIMEOUT)
    return; // the session is lost: the next one reads the capacity when it logs in
  if (attention) {
    // Another unit attention (a reset, the capacity again): ask again, a bounded number of times.
    if (self->capacity_attentions_++ < kMaxUnitAttentionRetries) {
      self->check_capacity();
      return;
    }
    why = "unit attentions";
  }
  self->capacity_attentions_ = 0;
  if (parsed) {
    if (info.block_size != self->target_->lun.block_size) {
      self->fail("the LUN's block size changed from " + std::to_string(self->target_->lun.block_size) + " to " +
                     std::to_string(info.block_size) + " bytes; refusing it",
                 true);
      return;
    }
    self->adopt_size(info.blocks, "after CAPACITY DATA HAS CHANGED");
  } else if (self->target_->first_report("READ CAPACITY(16) after a capacity change")) {
    VB_LOG_WARN("%s: reading the new capacity failed (%s); the disk keeps its size (reported once)",
                self->name_.c_str(), why.c_str());
  }
  if (self->capacity_again_) {
    self->capacity_again_ = false;
    self->check_capacity();
  }
}

// The LUN now has this many blocks (of the size it always had): a new size is recorded for every
// session and reported to the engine once, by whichever session saw it first.
void IscsiSession::adopt_size(std::uint64_t blocks, const char *how) noexcept {
  const std::uint64_t bs = target_->caps.logical_block_size;
  if (blocks == 0 || blocks > std::numeric_limits<std::uint64_t>::max() / bs)
    return;
  const std::uint64_t was = target_->size.get();
  const std::uint64_t bytes = blocks * bs;
  if (bytes == was)
    return;
  if (target_->size.observe(bytes)) {
    try {
      VB_LOG_INFO("%s: the LUN's size changed %s: %s, it was %s (%llu blocks of %llu bytes)", name_.c_str(), how,
                  format_size(bytes).c_str(), format_size(was).c_str(), static_cast<unsigned long long>(blocks),
                  static_cast<unsigned long long>(bs));
    } catch (...) {
    }
  }
}

// Multipath with ALUA: the path's state is known before it carries I/O (a standby path
// would refuse it).
void IscsiSession::finish_login() noexcept {
  tpgs_ = probed_.tpgs;
  alua_port_ = probed_.alua_port;
  if (!observer_ || tpgs_ == 0) {
    set_access(AluaState::none, "at login");
    become_ready();
    return;
  }
  alua_login_ = true;
  alua_attentions_ = 0;
  if (!issue_rtpg())
    fail("cannot queue REPORT TARGET PORT GROUPS: " + iscsi_error(ctx_));
}

// Multipath only (one path has nothing to choose): the next read of the ALUA state.
void IscsiSession::refresh_access() noexcept {
  if (!observer_ || !ctx_ || !core_.ready() || failure_ || tpgs_ == 0)
    return;
  if (alua_task_) {
    alua_again_ = true; // asked again while reading: read once more afterwards
    return;
  }
  if (!issue_rtpg()) {
    fail("cannot queue REPORT TARGET PORT GROUPS: " + iscsi_error(ctx_));
    return;
  }
  if (!in_service_)
    flush_.schedule();
}

bool IscsiSession::issue_rtpg() noexcept {
  unsigned char cdb[12];
  rtpg_cdb(cdb, kRtpgBytes);
  scsi_task *task = scsi_create_task(sizeof cdb, cdb, SCSI_XFER_READ, static_cast<int>(kRtpgBytes));
  if (!task)
    return false;
  if (iscsi_scsi_command_async(ctx_, target_->uri.lun, task, &on_alua, nullptr, this) != 0) {
    scsi_free_scsi_task(task);
    return false;
  }
  alua_task_ = task;
  alua_read_at_ = SessionClock::now();
  return true;
}

void IscsiSession::on_alua(iscsi_context * /*iscsi*/, int status, void *command_data, void *private_data) noexcept {
  auto *self = static_cast<IscsiSession *>(private_data);
  auto *task = static_cast<scsi_task *>(command_data);
  const bool current = task && !self->closing_ && task == self->alua_task_;
  std::optional<AluaState> state;
  bool attention = false;
  std::string why;
  if (current) {
    self->alua_task_ = nullptr;
    attention = status == SCSI_STATUS_CHECK_CONDITION && task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
    if (status == SCSI_STATUS_GOOD) {
      state = parse_rtpg(task->datain.data, static_cast<std::size_t>(std::max(0, task->datain.size)), self->alua_port_);
      if (!state)
        why = "its data does not list this path's port group with a known state";
    } else if (!attention) {
      why = failure_text(status, task);
    }
  }
  if (task)
    scsi_free_scsi_task(task);
  if (!current)
    return;
  const bool login = self->alua_login_;
  if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR || status == SCSI_STATUS_TIMEOUT) {
    if (login)
      self->fail("the session failed while reading its ALUA state");
    return; // otherwise the session is lost: the next login reads it
  }
  if (attention && self->alua_attentions_++ < kMaxUnitAttentionRetries) {
    if (!self->issue_rtpg())
      self->fail("cannot queue REPORT TARGET PORT GROUPS: " + iscsi_error(self->ctx_));
    return;
  }
  self->alua_attentions_ = 0;
  self->alua_login_ = false;
  if (!state && (login || attention)) {
    if (self->target_->first_report("REPORT TARGET PORT GROUPS"))
      VB_LOG_WARN("%s: REPORT TARGET PORT GROUPS failed (%s); the path is used as if the target had no ALUA "
                  "(reported once)",
                  self->name_.c_str(), attention ? "unit attentions" : why.c_str());
    if (login)
      state = AluaState::none;
  }
  // NOT READY is taken as a state only where REPORT TARGET PORT GROUPS reads one (else it could
  // stick: nothing would ever read another).
  if (login)
    self->alua_readable_ = state.has_value();
  else if (state)
    self->alua_readable_ = true;
  if (state) // a failed read later keeps what the last one said
    self->set_access(*state, login ? "at login" : "REPORT TARGET PORT GROUPS");
  if (login) {
    self->become_ready();
    return;
  }
  if (self->alua_again_) {
    self->alua_again_ = false;
    self->refresh_access();
  }
}

void IscsiSession::set_access(AluaState state, const char *how) noexcept {
  if (state == alua_)
    return;
  const AluaState was = alua_;
  alua_ = state;
  if (state != AluaState::none)
    VB_LOG_INFO("%s: ALUA state %s%s%s (%s)", name_.c_str(), alua_state_name(state),
                was == AluaState::none ? "" : ", it was ", alua_state_name(was), how);
  if (observer_)
    observer_->access_changed();
}

void IscsiSession::become_ready() noexcept {
  phase_ = Phase::none;
  core_.connected();
}

// Called wherever a failure is noticed; acted on once iscsi_service() has returned (the context
// cannot be destroyed under it) or, outside it, from the loop.
void IscsiSession::fail(std::string why, bool refused) noexcept {
  if (failure_)
    return;
  failure_ = Failure{std::move(why), refused};
  if (!in_service_)
    failure_timer_.arm(std::chrono::milliseconds(0));
}

void IscsiSession::handle_failure() noexcept {
  failure_timer_.cancel();
  if (!failure_)
    return;
  const Failure f = std::move(*failure_);
  failure_.reset();
  if (core_.ready())
    core_.lost(f.why);
  else
    core_.attempt_failed(f.why, f.refused);
}

void IscsiSession::requeue(SessionJob *lost) noexcept {
  for (Part &p : static_cast<Job *>(lost)->parts)
    if (p.state != Part::State::done)
      p.state = Part::State::pending;
}

void IscsiSession::disconnect() noexcept {
  close_context();
  phase_ = Phase::none;
  retry_timer_.cancel();
  failure_timer_.cancel();
  failure_.reset(); // whatever it was, this connection is gone now
}

void IscsiSession::close_context() noexcept {
  flush_.cancel();
  watch_.reset();
  watch_fd_ = -1;
  pr_.cancel(); // their tasks go with the context
  pr_preempt_.cancel();
  if (ctx_) {
    closing_ = true;
    iscsi_destroy_context(ctx_); // cancels its commands; their callbacks see closing_
    closing_ = false;
    ctx_ = nullptr;
  }
  probe_tasks_ = {};
  probes_left_ = 0;
  capacity_task_ = nullptr; // cancelled with the context
  capacity_again_ = false;
  capacity_attentions_ = 0;
  alua_task_ = nullptr; // likewise
  alua_again_ = false;
  alua_attentions_ = 0;
  alua_login_ = false;
}

void IscsiSession::service(int revents) noexcept {
  if (!ctx_)
    return;
  in_service_ = true;
  int rc = iscsi_service(ctx_, revents);
  // Commands queued meanwhile (new requests submitted from completions, retries): written now,
  // while the socket most likely has room, rather than after another trip through the loop.
  if (rc >= 0 && !failure_ && (revents & POLLOUT) == 0 && core_.ready() && (iscsi_which_events(ctx_) & POLLOUT) != 0)
    rc = iscsi_service(ctx_, POLLOUT);
  in_service_ = false;
  if (rc < 0 && !failure_)
    fail((core_.ready() ? "connection lost: " : "cannot log in: ") + iscsi_error(ctx_));
  if (failure_) {
    handle_failure();
    return;
  }
  update_events();
}

void IscsiSession::flush() noexcept {
  if (ctx_ && core_.ready() && (iscsi_which_events(ctx_) & POLLOUT) != 0)
    service(POLLOUT); // writes what it can; POLLOUT is watched only if the socket is full
  else
    update_events();
}

void IscsiSession::update_events() noexcept {
  if (!ctx_)
    return;
  // libiscsi may change sockets during a login (a redirect to another portal).
  const int fd = iscsi_get_fd(ctx_);
  if (fd != watch_fd_ || !watch_) {
    watch_.reset();
    watch_fd_ = fd;
    if (fd < 0)
      return;
    try {
      watch_ = std::make_unique<IoWatch>(loop_, fd, [this](short ev) {
        int revents = 0;
        if (ev & EV_READ)
          revents |= POLLIN;
        if (ev & EV_WRITE)
          revents |= POLLOUT;
        service(revents);
      });
    } catch (const std::exception &e) {
      fail(std::string("cannot watch the socket: ") + e.what());
      return;
    }
  }
  const int which = iscsi_which_events(ctx_);
  short ev = 0;
  if (which & POLLIN)
    ev |= EV_READ;
  if (which & POLLOUT)
    ev |= EV_WRITE;
  try {
    watch_->set_events(ev);
  } catch (const std::exception &e) {
    fail(std::string("cannot watch the socket: ") + e.what());
  }
}

// libiscsi does its own timekeeping (timeouts of its PDUs) only when serviced.
void IscsiSession::on_tick() noexcept {
  service(0);
  check_alive();
  if (observer_ && tpgs_ != 0 && core_.ready() && !alua_task_ &&
      SessionClock::now() - alua_read_at_ >= (alua_rank(alua_) < 0 ? kAluaPollRefused : kAluaPollActive))
    refresh_access();
}

// A hung target or path (a frozen link, a stalled portal) answers nothing, and without a
// request-timeout nothing would notice: a NOP-Out every nop-interval must be answered within
// nop-timeout, or the session counts as lost, like a cut connection.
void IscsiSession::check_alive() noexcept {
  if (!ctx_ || !core_.ready() || failure_ || nop_interval_.count() <= 0 || target_->options.nop_timeout.count() <= 0)
    return;
  const auto now = SessionClock::now();
  if (nop_generation_ != generation_) { // a new context: counted from its first tick
    nop_generation_ = generation_;
    nop_outstanding_ = false;
    nop_sent_ = now;
    return;
  }
  if (nop_outstanding_) {
    if (now - nop_sent_ >= target_->options.nop_timeout)
      fail("no answer to a NOP-Out within " + format_duration(target_->options.nop_timeout) +
           " (nop-timeout): the target or the path is hung");
    return;
  }
  if (now - nop_sent_ < nop_interval_)
    return;
  if (iscsi_nop_out_async(ctx_, &on_nop, nullptr, 0, this) != 0)
    return; // tried again on the next tick
  nop_outstanding_ = true;
  nop_sent_ = now;
  if (!in_service_)
    flush_.schedule();
}

void IscsiSession::on_nop(iscsi_context * /*iscsi*/, int status, void * /*command_data*/, void *private_data) noexcept {
  auto *self = static_cast<IscsiSession *>(private_data);
  if (self->closing_ || status != SCSI_STATUS_GOOD)
    return; // the context goes (or failed): a new one starts over
  self->nop_outstanding_ = false;
}

bool IscsiSession::overdue(const SessionJob &job, Clock::time_point issued_before) const noexcept {
  for (const Part &p : static_cast<const Job &>(job).parts)
    if (p.state == Part::State::issued && p.issued_at < issued_before)
      return true;
  return false;
}

// A part answered BUSY or UNIT ATTENTION was not executed: sending it again now would be the old
// driver's I/O after the reset.
std::size_t IscsiSession::fence_job(SessionJob *fenced) noexcept {
  auto *job = static_cast<Job *>(fenced);
  std::size_t dropped = 0;
  const std::size_t parts = job->parts.size();
  for (std::size_t i = 0; i < parts; ++i) {
    Part &p = job->parts[i];
    if (p.state == Part::State::waiting || p.state == Part::State::pending) {
      ++dropped;
      const bool last = job->parts_left == 1;
      complete_part(&p, ECANCELED);
      if (last)
        break; // the job is retired: its completion may already have reused it
    }
  }
  return dropped;
}

} // namespace vb
