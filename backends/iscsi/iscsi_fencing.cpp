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
constexpr int kAllRegistrants = SCSI_PERSISTENT_RESERVE_TYPE_WRITE_EXCLUSIVE_ALL_REGISTRANTS;

std::uint64_t be64(const unsigned char *p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v = (v << 8) | p[i];
  return v;
}

bool attention(int status, const scsi_task *task) noexcept {
  return status == SCSI_STATUS_CHECK_CONDITION && task && task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
}
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
  if (cb)
    return iscsi_persistent_reserve_out_task(ctx, lun, sa, SCSI_PERSISTENT_RESERVE_SCOPE_LU, type, &params, cb, data);
  return iscsi_persistent_reserve_out_sync(ctx, lun, sa, SCSI_PERSISTENT_RESERVE_SCOPE_LU, type, &params);
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
  // A list longer than what arrived is cut to what arrived (the allocation length was ours).
  const std::size_t n = std::min({length / 8, (size - 8) / 8, max});
  keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    keys.push_back(be64(data + 8 + 8 * i));
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

bool PrSteps::join(iscsi_context *ctx, int lun, PrSlot slot, std::uint32_t seed, Done done) noexcept {
  cancel();
  ctx_ = ctx;
  lun_ = lun;
  slot_ = slot;
  seed_ = seed;
  join_ = true;
  key_ = 0;
  preempted_ = 0;
  victims_.clear();
  attentions_ = 0;
  done_ = std::move(done);
  step_ = Step::read_keys;
  return issue();
}

bool PrSteps::preempt(iscsi_context *ctx, int lun, std::uint64_t own_key, std::uint64_t victim, Done done) noexcept {
  cancel();
  ctx_ = ctx;
  lun_ = lun;
  join_ = false;
  key_ = own_key;
  victims_.clear();
  try {
    victims_.push_back(victim);
  } catch (...) {
    return false;
  }
  attentions_ = 0;
  done_ = std::move(done);
  step_ = Step::preempt;
  return issue();
}

void PrSteps::cancel() noexcept {
  // The task belongs to the context, which cancels it when it goes; it is only forgotten here.
  task_ = nullptr;
  step_ = Step::idle;
  done_ = nullptr;
}

bool PrSteps::issue() noexcept {
  scsi_task *t = nullptr;
  switch (step_) {
  case Step::read_keys:
    t = iscsi_persistent_reserve_in_task(ctx_, lun_, SCSI_PERSISTENT_RESERVE_READ_KEYS, kReadKeysBytes, &on_done, this);
    break;
  case Step::reg:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, key_, &on_done, this);
    break;
  case Step::preempt:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_PREEMPT_AND_ABORT, kAllRegistrants, key_, victims_.back(), &on_done,
               this);
    break;
  case Step::preempt_plain:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_PREEMPT, kAllRegistrants, key_, victims_.back(), &on_done, this);
    break;
  case Step::reserve:
    t = pr_out(ctx_, lun_, SCSI_PERSISTENT_RESERVE_RESERVE, kAllRegistrants, key_, 0, &on_done, this);
    break;
  case Step::idle:
    return false;
  }
  if (!t) {
    step_ = Step::idle;
    done_ = nullptr;
    return false;
  }
  task_ = t;
  return true;
}

void PrSteps::on_done(iscsi_context * /*iscsi*/, int status, void *command_data, void *private_data) noexcept {
  auto *self = static_cast<PrSteps *>(private_data);
  auto *task = static_cast<scsi_task *>(command_data);
  if (task && task == self->task_) {
    self->task_ = nullptr;
    self->next(status, task);
  }
  if (task)
    scsi_free_scsi_task(task);
}

void PrSteps::next(int status, scsi_task *task) noexcept {
  if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR || status == SCSI_STATUS_TIMEOUT) {
    finish(false, "the session failed during PERSISTENT RESERVE");
    return;
  }
  if (attention(status, task) && attentions_++ < kMaxAttentions) {
    if (!issue())
      finish(false, "cannot queue PERSISTENT RESERVE");
    return;
  }
  try {
    switch (step_) {
    case Step::read_keys: {
      std::vector<std::uint64_t> listed;
      if (status != SCSI_STATUS_GOOD ||
          !parse_pr_keys(task->datain.data, static_cast<std::size_t>(std::max(0, task->datain.size)), listed)) {
        finish(false, status == SCSI_STATUS_GOOD ? "READ KEYS: malformed parameter data"
                                                 : what_failed("PERSISTENT RESERVE IN (READ KEYS)", status, task));
        return;
      }
      key_ = pr_new_key(slot_, listed, seed_);
      for (std::uint64_t k : listed)
        if (pr_in_slot(k, slot_) && k != key_ && std::find(victims_.begin(), victims_.end(), k) == victims_.end() &&
            victims_.size() < 64)
          victims_.push_back(k);
      step_ = Step::reg;
      break;
    }
    case Step::reg:
      if (status != SCSI_STATUS_GOOD) {
        finish(false, what_failed("PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)", status, task));
        return;
      }
      step_ = victims_.empty() ? Step::reserve : Step::preempt;
      break;
    case Step::preempt:
    case Step::preempt_plain:
      if (step_ == Step::preempt && illegal_request(status, task)) {
        step_ = Step::preempt_plain; // no PREEMPT AND ABORT here (tgtd): PREEMPT
        break;
      }
      if (status != SCSI_STATUS_GOOD) {
        finish(false, what_failed("PERSISTENT RESERVE OUT (PREEMPT)", status, task));
        return;
      }
      victims_.pop_back();
      ++preempted_;
      if (!victims_.empty())
        break; // the next victim, asked the same way
      if (!join_) {
        finish(true, {});
        return;
      }
      step_ = Step::reserve;
      break;
    case Step::reserve:
      if (status != SCSI_STATUS_GOOD) {
        finish(false, what_failed("PERSISTENT RESERVE OUT (RESERVE)", status, task));
        return;
      }
      finish(true, {});
      return;
    case Step::idle:
      return;
    }
  } catch (...) {
    finish(false, "out of memory during PERSISTENT RESERVE");
    return;
  }
  attentions_ = 0;
  if (!issue())
    finish(false, "cannot queue PERSISTENT RESERVE");
}

void PrSteps::finish(bool ok, const std::string &why) noexcept {
  step_ = Step::idle;
  Done done = std::move(done_);
  done_ = nullptr;
  if (done)
    done(ok, why);
}

std::uint64_t pr_join_sync(iscsi_context *ctx, int lun, PrSlot slot, std::uint32_t seed) {
  struct Free {
    void operator()(scsi_task *t) const noexcept { scsi_free_scsi_task(t); }
  };
  using Task = std::unique_ptr<scsi_task, Free>;
  // Each command again while it fails with UNIT ATTENTION.
  auto run = [&](const char *what, auto command) {
    Task t(command());
    for (unsigned i = 0; i < kMaxAttentions && t && attention(t->status, t.get()); ++i)
      t.reset(command());
    if (!t)
      throw std::runtime_error(std::string(what) + " failed: " + iscsi_error(ctx));
    return t;
  };
  Task keys = run("PERSISTENT RESERVE IN (READ KEYS)", [&] {
    return iscsi_persistent_reserve_in_sync(ctx, lun, SCSI_PERSISTENT_RESERVE_READ_KEYS, kReadKeysBytes);
  });
  std::vector<std::uint64_t> listed;
  if (keys->status != SCSI_STATUS_GOOD ||
      !parse_pr_keys(keys->datain.data, static_cast<std::size_t>(std::max(0, keys->datain.size)), listed))
    throw std::runtime_error(what_failed("PERSISTENT RESERVE IN (READ KEYS)", keys->status, keys.get()));
  const std::uint64_t key = pr_new_key(slot, listed, seed);
  Task reg = run("REGISTER", [&] {
    return pr_out(ctx, lun, SCSI_PERSISTENT_RESERVE_REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, key, nullptr, nullptr);
  });
  if (reg->status != SCSI_STATUS_GOOD)
    throw std::runtime_error(
        what_failed("PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)", reg->status, reg.get()));
  for (std::uint64_t victim : listed) {
    if (!pr_in_slot(victim, slot) || victim == key)
      continue;
    Task p = run("PREEMPT", [&] {
      return pr_out(ctx, lun, SCSI_PERSISTENT_RESERVE_PREEMPT_AND_ABORT, kAllRegistrants, key, victim, nullptr,
                    nullptr);
    });
    if (illegal_request(p->status, p.get()))
      p = run("PREEMPT", [&] {
        return pr_out(ctx, lun, SCSI_PERSISTENT_RESERVE_PREEMPT, kAllRegistrants, key, victim, nullptr, nullptr);
      });
    if (p->status != SCSI_STATUS_GOOD)
      throw std::runtime_error(what_failed("PERSISTENT RESERVE OUT (PREEMPT)", p->status, p.get()));
  }
  Task res = run("RESERVE", [&] {
    return pr_out(ctx, lun, SCSI_PERSISTENT_RESERVE_RESERVE, kAllRegistrants, key, 0, nullptr, nullptr);
  });
  if (res->status != SCSI_STATUS_GOOD)
    throw std::runtime_error(what_failed("PERSISTENT RESERVE OUT (RESERVE)", res->status, res.get()));
  return key;
}

} // namespace vb
