// Fencing with SCSI-3 persistent reservations (backend key fencing: persistent-reservation).
//
// A request sent again on a new session (after a reconnect, or on another path) is only safe if
// the old session can no longer run its copy later: a target that does not end the old session
// at the new login (tgtd does not reinstate sessions; a path is a session of its own) may still
// receive the old copy from the network, or from a frozen path, after a newer write to the same
// blocks. So every session slot (one queue's session on one path: session_number) registers a
// key of its own at each login,
//     owner (32 bits: initiator, target, LUN) | slot (16 bits) | tag (16 bits, new each login),
// preempts every other key of the same owner and slot (the slot's previous login: a connection
// given up on, a frozen path, a daemon that died), and holds the LUN's reservation Write
// Exclusive - All Registrants with the other slots. A preempted I_T nexus is no longer
// registered: what it sends later fails (UNIT ATTENTION, then RESERVATION CONFLICT) instead of
// writing. A path set preempts a dead path's key from a live path before it sends that path's
// writes again. PREEMPT AND ABORT is asked first (it also ends what the target holds of the old
// nexus); a target without it (tgtd answers INVALID FIELD IN CDB) gets PREEMPT.
//
// The price: while the reservation is held, initiators that are not registered (another host,
// open-iscsi on this one) cannot write to the LUN. That is a fence for a node that lost the volume,
// and wrong for a LUN shared by several hosts: off by default.
//
// Threading: PrSteps runs on the owning session's loop (libiscsi callbacks); the rest is pure.
#pragma once

#include "iscsi/iscsi_options.h"
#include "iscsi/iscsi_target.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

struct iscsi_context;
struct scsi_task;

namespace vb {

struct PrSlot {
  std::uint32_t owner = 0;
  std::uint16_t slot = 0;
};
// The owner part of this host's keys for the LUN.
std::uint32_t pr_owner(const IscsiOptions &options, const IscsiUri &uri);
constexpr std::uint64_t pr_key(PrSlot s, std::uint16_t tag) noexcept {
  return (std::uint64_t{s.owner} << 32) | (std::uint64_t{s.slot} << 16) | tag;
}
constexpr bool pr_in_slot(std::uint64_t key, PrSlot s) noexcept { return (key >> 16) == (pr_key(s, 0) >> 16); }
// PERSISTENT RESERVE IN / READ KEYS parameter data (hostile): the keys, at most max of them;
// false when it is malformed.
bool parse_pr_keys(const unsigned char *data, std::size_t size, std::vector<std::uint64_t> &keys,
                   std::size_t max = 4096);
// A key of slot s that none of listed is (and never 0), from seed.
std::uint64_t pr_new_key(PrSlot s, const std::vector<std::uint64_t> &listed, std::uint32_t seed) noexcept;

// A short sequence of PERSISTENT RESERVE commands on one logged-in context, driven by
// libiscsi's callbacks: join() (READ KEYS, REGISTER AND IGNORE EXISTING KEY with a new key,
// PREEMPT of the slot's other keys, RESERVE) or preempt() (one victim key). UNIT ATTENTIONs
// (which every registration change makes) are retried, a bounded number of times. done runs once,
// from a callback, unless cancel() came first.
class PrSteps {
public:
  using Done = std::function<void(bool ok, const std::string &why)>;
  PrSteps() = default;
  PrSteps(const PrSteps &) = delete;
  PrSteps &operator=(const PrSteps &) = delete;
  ~PrSteps() { cancel(); }

  // False (done not called) when the first command cannot be queued.
  bool join(iscsi_context *ctx, int lun, PrSlot slot, std::uint32_t seed, Done done) noexcept;
  bool preempt(iscsi_context *ctx, int lun, std::uint64_t own_key, std::uint64_t victim, Done done) noexcept;
  // The context is going (its tasks are cancelled with it): done never runs.
  void cancel() noexcept;
  bool busy() const noexcept { return step_ != Step::idle; }
  std::uint64_t key() const noexcept { return key_; }           // join(): the key registered
  std::size_t preempted() const noexcept { return preempted_; } // join(): earlier keys of the slot fenced

private:
  enum class Step { idle, read_keys, reg, preempt, preempt_plain, reserve };
  bool issue() noexcept;
  static void on_done(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void next(int status, scsi_task *task) noexcept;
  void finish(bool ok, const std::string &why) noexcept;

  iscsi_context *ctx_ = nullptr;
  int lun_ = 0;
  PrSlot slot_{};
  std::uint32_t seed_ = 0;
  Step step_ = Step::idle;
  bool join_ = false;
  std::uint64_t key_ = 0;
  std::vector<std::uint64_t> victims_; // keys to preempt, the next one last
  scsi_task *task_ = nullptr;
  unsigned attentions_ = 0;
  std::size_t preempted_ = 0;
  Done done_;
};

// open()'s first login, synchronous (setup only): join() in one go. Returns the key; throws
// std::runtime_error saying which step failed.
std::uint64_t pr_join_sync(iscsi_context *ctx, int lun, PrSlot slot, std::uint32_t seed);

} // namespace vb
