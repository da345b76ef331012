#include "iscsi/iscsi_fencing.h"

#include <algorithm>
#include <bitset>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <memory>
#include <stdexcept>

namespace vb {
namespace {

constexpr unsigned kMaxAttentions = 8;
constexpr std::uint16_t kReadKeysBytes = 65528; // 8 header bytes and 8190 keys
constexpr int kRegistrantsOnly = SCSI_PERSISTENT_RESERVE_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
constexpr std::uint16_t kReadReservationBytes = 24;

std::uint64_t be64(const unsigned char *p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v = (v << 8) | p[i];
  return v;
}

bool attention(int status, const scsi_task *task) noexcept {
  return status == SCSI_STATUS_CHECK_CONDITION && task && task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
}
bool conflict(int status) noexcept { return status == SCSI_STATUS_RESERVATION_CONFLICT; }
bool illegal_request(int status, const scsi_task *task) noexcept {
  return status == SCSI_STATUS_CHECK_CONDITION && task && task->sense.key == SCSI_SENSE_ILLEGAL_REQUEST;
}

std::string what_failed(const char *step, int status, const scsi_task *task) {
  std::string why = std::string(step) + " failed: ";
  if (status == SCSI_STATUS_RESERVATION_CONFLICT)
    return why + "RESERVATION CONFLICT (another initiator holds a reservation of another kind on the LUN)";
  if (status == SCSI_STATUS_CHECK_CONDITION && task)
    return why + describe_sense(task->sense);
  return why + describe_status(status);
}

scsi_task *pr_out(iscsi_context *ctx, int lun, int sa, int type, std::uint64_t key, std::uint64_t sa_key,
                  iscsi_command_cb cb, void *data) {
  scsi_persistent_reserve_out_basic params{};
  params.reservation_key = key;
  params.service_action_reservation_key = sa_key;
  return iscsi_persistent_reserve_out_task(ctx, lun, sa, SCSI_PERSISTENT_RESERVE_SCOPE_LU, type, &params, cb, data);
}

std::size_t datain_size(const scsi_task *task) noexcept {
  return task ? static_cast<std::size_t>(std::max(0, task->datain.size)) : 0;
}

} // namespace

std::uint32_t pr_owner(const IscsiOptions &options, const IscsiUri &uri) {
  const std::string initiator = options.initiator_name.empty() ? default_initiator_name() : options.initiator_name;
  std::uint32_t h = 2166136261u; // FNV-1a: the same on every run and build
  for (const std::string &part : {std::string("vduse-bridge pr"), initiator, uri.target, std::to_string(uri.lun)}) {
    for (const unsigned char c : part)
      h = (h ^ c) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
  }
  return h;
}

bool parse_pr_keys(const unsigned char *data, std::size_t size, std::vector<std::uint64_t> &keys, std::size_t max) {
  keys.clear();
  if (!data || size < 8)
    return false;
  const std::size_t length =
      (std::size_t{data[4]} << 24) | (std::size_t{data[5]} << 16) | (std::size_t{data[6]} << 8) | std::size_t{data[7]};
  if (length % 8 != 0)
    return false;
  // A list longer than what arrived (or than max) is not the whole list: a key past the cut
  // would be neither preempted nor found, so the data is refused rather than cut.
  if (length / 8 > (size - 8) / 8 || length / 8 > max)
    return false;
  const std::size_t n = length / 8;
  keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    keys.push_back(be64(data + 8 + 8 * i));
  return true;
}

bool parse_pr_reservation(const unsigned char *data, std::size_t size, PrReservation &out) noexcept {
  out = {};
  if (!data || size < 8)
    return false;
  const std::size_t length =
      (std::size_t{data[4]} << 24) | (std::size_t{data[5]} << 16) | (std::size_t{data[6]} << 8) | std::size_t{data[7]};
  if (length == 0)
    return true; // no reservation
  if (length < 16 || size < 8 + 16)
    return false;
  out.held = true;
  out.key = be64(data + 8);
  out.type = data[8 + 13] & 0x0f;
  return true;
}

std::uint64_t pr_new_key(PrSlot s, const std::vector<std::uint64_t> &listed, std::uint32_t seed) noexcept {
  std::bitset<65536> used; // the slot's tags taken
  for (std::uint64_t k : listed)
    if (pr_in_slot(k, s))
      used.set(static_cast<std::uint16_t>(k));
  // From a tag the seed picks, the first one free (and never the key 0).
  const auto start = static_cast<std::uint16_t>((seed * 2654435761u) >> 16);
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto tag = static_cast<std::uint16_t>(start + i);
    if (!used.test(tag) && pr_key(s, tag) != 0)
      return pr_key(s, tag);
  }
  return pr_key(s, start) | 1u; // every tag listed: READ KEYS cannot list that many
}

std::vector<std::uint64_t> pr_victims(const std::vector<std::uint64_t> &listed, std::uint64_t own, bool whole_owner) {
  const PrSlot s{static_cast<std::uint32_t>(own >> 32), static_cast<std::uint16_t>(own >> 16)};
  std::vector<std::uint64_t> out;
  for (std::uint64_t k : listed)
    if (k != 0 && k != own && (whole_owner ? pr_of_owner(k, s) : pr_in_slot(k, s)) &&
        std::find(out.begin(), out.end(), k) == out.end())
      out.push_back(k);
  return out;
}

bool PrSteps::start(iscsi_context *ctx, int lun, Step first, Done done) noexcept {
  cancel();
  ctx_ = ctx;
  lun_ = lun;
  attentions_ = 0;
  preempted_ = 0;
  done_ = std::move(done);
  step_ = first;
  if (issue())
    return true;
  done_ = nullptr; // the caller hears false instead
  return false;
}

bool PrSteps::join(iscsi_context *ctx, int lun, PrSlot slot, bool whole_owner, std::uint32_t seed, Done done) noexcept {
  slot_ = slot;
  whole_owner_ = whole_owner;
  seed_ = seed;
  join_ = true;
  key_ = 0;
  victims_.clear();
  return start(ctx, lun, Step::read_keys, std::move(done));
}

bool PrSteps::preempt(iscsi_context *ctx, int lun, std::uint64_t own_key, std::uint64_t victim, Done done) noexcept {
  join_ = false;
  key_ = own_key;
  victims_.clear();
  if (victim == 0)
    return false; // key 0 would preempt every registration
  try {
    victims_.push_back(victim);
  } catch (...) {
    return false;
  }
  return start(ctx, lun, Step::preempt, std::move(done));
}

bool PrSteps::leave(iscsi_context *ctx, int lun, std::uint64_t own_key, Done done) noexcept {
  join_ = false;
  key_ = own_key;
  victims_.clear();
  return start(ctx, lun, Step::leave, std::move(done));
}

void PrSteps::cancel() noexcept {
  // The task belongs to the context, which cancels it when it goes; it is only forgotten here.
  task_ = nullptr;
  step_ = Step::idle;
  done_ = nullptr;
}

void PrSteps::abandon() noexcept {
  done_ = nullptr;
  if (!task_) {
    delete this;
    return;
  }
  abandoned_ = true; // on_done deletes it
}

bool PrSteps::issue() noexcept {
  scsi_task *t = nullptr;
  switch (step_) {
  case Step::read_keys:
  case Step::victims:
  case Step::check_gone:
    t = iscsi_persistent_reserve_in_task(ctx_, lun_, SCSI_PERSISTENT_RESERVE_READ_KEYS, kReadKeysBytes, &on_done, this);
    break;
  case Step::check_reserved:
    t = iscsi_persistent_reserve_in_task(ctx_, lun_, SCSI_PERSISTENT_RESERVE_READ_RESERVATION, kReadReservationBytes,
                                         &on_done, this);
    break;
  case Step::reg:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, key_, &on_done, this);
    break;
  case Step::preempt:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_PREEMPT_AND_ABORT, kRegistrantsOnly, key_, victims_.back(), &on_done,
               this);
    break;
  case Step::preempt_plain:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_PREEMPT, kRegistrantsOnly, key_, victims_.back(), &on_done, this);
    break;
  case Step::reserve:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_RESERVE, kRegistrantsOnly, key_, 0, &on_done, this);
    break;
  case Step::leave: // REGISTER with a service action key of 0: unregister (the holder's releases)
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 0, &on_done, this);
    break;
  case Step::idle:
    return false;
  }
  if (!t) {
    step_ = Step::idle; // done_ is kept: a step after the first reports the failure through it
    return false;
  }
  task_ = t;
  return true;
}

void PrSteps::on_done(iscsi_context * /*iscsi*/, int status, void *command_data, void *private_data) noexcept {
  auto *self = static_cast<PrSteps *>(private_data);
  auto *task = static_cast<scsi_task *>(command_data);
  if (self->abandoned_) {
    if (task)
      scsi_free_scsi_task(task);
    delete self;
    return;
  }
  if (task && task == self->task_) {
    self->task_ = nullptr;
    try {
      self->next(status, task);
    } catch (...) {
      self->finish(false, "out of memory during PERSISTENT RESERVE");
    }
  }
  if (task)
    scsi_free_scsi_task(task);
}

// The victim just preempted (or found gone): the next one, or what follows. True when the
// sequence finished (done has run, and may have started another one on this object).
bool PrSteps::after_preempt() noexcept {
  victims_.pop_back();
  ++preempted_;
  if (!victims_.empty()) {
    step_ = Step::preempt; // the next victim, asked the same way
    return false;
  }
  if (!join_) {
    finish(true, {});
    return true;
  }
  step_ = Step::reserve;
  return false;
}

void PrSteps::next(int status, scsi_task *task) {
  if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR || status == SCSI_STATUS_TIMEOUT) {
    finish(false, "the session failed during PERSISTENT RESERVE");
    return;
  }
  if (attention(status, task) && attentions_++ < kMaxAttentions) {
    if (!issue())
      finish(false, "cannot queue PERSISTENT RESERVE");
    return;
  }
  std::vector<std::uint64_t> listed;
  const bool keys_step = step_ == Step::read_keys || step_ == Step::victims || step_ == Step::check_gone;
  if (keys_step && (status != SCSI_STATUS_GOOD || !parse_pr_keys(task->datain.data, datain_size(task), listed))) {
    finish(false, status == SCSI_STATUS_GOOD ? "READ KEYS: malformed parameter data"
                                             : what_failed("PERSISTENT RESERVE IN (READ KEYS)", status, task));
    return;
  }
  switch (step_) {
  case Step::read_keys:
    key_ = pr_new_key(slot_, listed, seed_);
    step_ = Step::reg;
    break;
  case Step::reg:
    if (status != SCSI_STATUS_GOOD) {
      finish(false, what_failed("PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)", status, task));
      return;
    }
    step_ = Step::victims;
    break;
  case Step::victims:
    // Read after our REGISTER: where a new login is the old nexus, its old key is gone already.
    if (std::find(listed.begin(), listed.end(), key_) == listed.end()) {
      finish(false, "READ KEYS does not list the key just registered");
      return;
    }
    victims_ = pr_victims(listed, key_, whole_owner_);
    std::reverse(victims_.begin(), victims_.end());
    step_ = victims_.empty() ? Step::reserve : Step::preempt;
    break;
  case Step::preempt:
  case Step::preempt_plain:
    if (step_ == Step::preempt && illegal_request(status, task)) {
      step_ = Step::preempt_plain; // no PREEMPT AND ABORT here (tgtd): PREEMPT
      break;
    }
    if (conflict(status)) {
      step_ = Step::check_gone; // a key already gone conflicts: READ KEYS decides
      break;
    }
    if (status != SCSI_STATUS_GOOD) {
      finish(false, what_failed("PERSISTENT RESERVE OUT (PREEMPT)", status, task));
      return;
    }
    if (after_preempt())
      return;
    break;
  case Step::check_gone:
    if (std::find(listed.begin(), listed.end(), key_) == listed.end()) {
      finish(false, "PREEMPT refused: this session's own key is no longer registered");
      return;
    }
    if (std::find(listed.begin(), listed.end(), victims_.back()) != listed.end()) {
      finish(false, "PERSISTENT RESERVE OUT (PREEMPT) failed: RESERVATION CONFLICT, and the key is still registered");
      return;
    }
    if (after_preempt())
      return;
    break;
  case Step::reserve:
    if (conflict(status)) {
      step_ = Step::check_reserved; // held already, by another of the registrants?
      break;
    }
    if (status != SCSI_STATUS_GOOD) {
      finish(false, what_failed("PERSISTENT RESERVE OUT (RESERVE)", status, task));
      return;
    }
    finish(true, {});
    return;
  case Step::check_reserved: {
    PrReservation r;
    if (status != SCSI_STATUS_GOOD || !parse_pr_reservation(task->datain.data, datain_size(task), r)) {
      finish(false, status == SCSI_STATUS_GOOD ? "READ RESERVATION: malformed parameter data"
                                               : what_failed("PERSISTENT RESERVE IN (READ RESERVATION)", status, task));
      return;
    }
    if (!r.held || r.type != kRegistrantsOnly) {
      finish(false, r.held ? "RESERVE conflicts: another initiator holds a reservation of type " +
                                 std::to_string(r.type) + " on the LUN"
                           : "RESERVE conflicts, and no reservation is held");
      return;
    }
    finish(true, {}); // Registrants Only, held by a registrant: every registrant may write
    return;
  }
  case Step::leave:
    if (status != SCSI_STATUS_GOOD && !conflict(status)) { // conflict: not registered any more
      finish(false, what_failed("PERSISTENT RESERVE OUT (REGISTER, unregister)", status, task));
      return;
    }
    finish(true, {});
    return;
  case Step::idle:
    return;
  }
  attentions_ = 0;
  if (step_ != Step::idle && !issue())
    finish(false, "cannot queue PERSISTENT RESERVE");
}

void PrSteps::finish(bool ok, const std::string &why) noexcept {
  step_ = Step::idle;
  Done done = std::move(done_);
  done_ = nullptr;
  if (done)
    done(ok, why);
}

PrJoined pr_join_blocking(iscsi_context *ctx, int lun, PrSlot slot, std::uint32_t seed, int seconds,
                          const std::function<bool()> &cancelled) {
  // On the heap: given up on, its command's callback may still come (when the context goes).
  struct Result {
    bool done = false;
    bool ok = false;
    std::string why;
  };
  auto result = std::make_shared<Result>();
  auto *steps = new PrSteps;
  if (!steps->join(ctx, lun, slot, true, seed, [result](bool ok, const std::string &why) {
        result->done = true;
        result->ok = ok;
        result->why = why;
      })) {
    delete steps;
    throw std::runtime_error("cannot queue PERSISTENT RESERVE: " + iscsi_error(ctx));
  }
  std::string why;
  if (!poll_context_until(
          ctx, [&] { return result->done; }, seconds, cancelled, why)) {
    steps->abandon();
    throw std::runtime_error("the fence (persistent reservation) was not set up: " +
                             (why.empty() ? iscsi_error(ctx) : why));
  }
  const PrJoined joined{steps->key(), steps->preempted()};
  delete steps;
  if (!result->ok)
    throw std::runtime_error("the fence (persistent reservation) could not be set up: " + result->why);
  return joined;
}

} // namespace vb
