// Fencing with SCSI-3 persistent reservations (backend key fencing: persistent-reservation).
//
// A request sent again on a new session (after a reconnect, or on another path) is only safe if
// the old session can no longer run its copy later: a target that does not end the old session
// at the new login (tgtd does not reinstate sessions; a path is a session of its own) may still
// receive the old copy from the network, or from a frozen path, after a newer write to the same
// blocks. So every session slot (one queue's session on one path: session_number) registers a
// key of its own at each login,
//     owner (32 bits: initiator, target, LUN) | slot (16 bits) | tag (16 bits, new each login),
// then reads the keys again and preempts every other key of the same slot (the slot's previous
// login: a connection given up on, a frozen path). The first login of a device (open()) preempts
// every other key of the owner: what a daemon that died left behind. The LUN is held reserved
// Write Exclusive - Registrants Only: a preempted I_T nexus is no longer registered, and what it
// sends later fails (UNIT ATTENTION, then RESERVATION CONFLICT) instead of writing. A path set
// preempts a dead path's key from a live path before it sends that path's writes again.
//
// Target differences handled here:
// - Where the same ISID is the same I_T nexus (LIO, arrays), the new REGISTER replaces the old key
//   (and the old session was reinstated away): the second READ KEYS no longer lists it.
// - A PREEMPT whose key is already gone gets RESERVATION CONFLICT: READ KEYS decides (gone: done).
// - PREEMPT AND ABORT is asked first; a target without it (tgtd: INVALID FIELD IN CDB) gets PREEMPT.
// - Registrants Only, not All Registrants: preempting the holder hands the reservation to the
//   preempting nexus (tgtd loses track of an All Registrants holder that is preempted). A RESERVE
//   from a registrant that is not the holder conflicts: READ RESERVATION then shows ours.
//
// The price: while the reservation is held, initiators that are not registered (another host
// without this fencing, open-iscsi on this one) cannot write to the LUN. A clean close of a
// device unregisters its keys; the last one releases the reservation. Off by default.
//
// Threading: PrSteps runs on the owning context's thread (libiscsi callbacks); the rest is pure.
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
// The owner part of this host's keys for the LUN (initiator name, target, LUN).
std::uint32_t pr_owner(const IscsiOptions &options, const IscsiUri &uri);
constexpr std::uint64_t pr_key(PrSlot s, std::uint16_t tag) noexcept {
  return (std::uint64_t{s.owner} << 32) | (std::uint64_t{s.slot} << 16) | tag;
}
constexpr bool pr_in_slot(std::uint64_t key, PrSlot s) noexcept { return (key >> 16) == (pr_key(s, 0) >> 16); }
constexpr bool pr_of_owner(std::uint64_t key, PrSlot s) noexcept { return (key >> 32) == s.owner; }
// PERSISTENT RESERVE IN / READ KEYS parameter data (hostile): the keys; false when it is
// malformed or lists more than arrived or than max (8190: what the allocation holds).
bool parse_pr_keys(const unsigned char *data, std::size_t size, std::vector<std::uint64_t> &keys,
                   std::size_t max = 8190);
// PERSISTENT RESERVE IN / READ RESERVATION parameter data (hostile): whether a reservation is
// held, its type and the key shown; false when malformed.
struct PrReservation {
  bool held = false;
  int type = 0;
  std::uint64_t key = 0;
};
bool parse_pr_reservation(const unsigned char *data, std::size_t size, PrReservation &out) noexcept;
// A key of slot s that none of listed is (and never 0), from seed.
std::uint64_t pr_new_key(PrSlot s, const std::vector<std::uint64_t> &listed, std::uint32_t seed) noexcept;
// The keys to preempt for own: listed keys of own's slot (or of its owner, whole_owner), once
// each, never own and never 0 (a PREEMPT of key 0 means "every registration").
std::vector<std::uint64_t> pr_victims(const std::vector<std::uint64_t> &listed, std::uint64_t own, bool whole_owner);

// A short sequence of PERSISTENT RESERVE commands on one logged-in context, driven by
// libiscsi's callbacks: join() (READ KEYS, REGISTER AND IGNORE EXISTING KEY with a new key, READ
// KEYS, PREEMPT of the others, RESERVE), preempt() (one victim key) or leave() (unregister).
// UNIT ATTENTIONs (which every registration change makes) are retried, a bounded number of
// times. done runs once, from a callback, unless cancel() came first.
class PrSteps {
public:
  using Done = std::function<void(bool ok, const std::string &why)>;
  PrSteps() = default;
  PrSteps(const PrSteps &) = delete;
  PrSteps &operator=(const PrSteps &) = delete;
  ~PrSteps() { cancel(); }

  // False (done not called) when the first command cannot be queued.
  bool join(iscsi_context *ctx, int lun, PrSlot slot, bool whole_owner, std::uint32_t seed, Done done) noexcept;
  bool preempt(iscsi_context *ctx, int lun, std::uint64_t own_key, std::uint64_t victim, Done done) noexcept;
  bool leave(iscsi_context *ctx, int lun, std::uint64_t own_key, Done done) noexcept;
  // The context is going (its tasks are cancelled with it): done never runs. The object must
  // outlive the context, or be abandon()ed.
  void cancel() noexcept;
  // For an object on the heap whose context lives on: it deletes itself (now, or at its
  // command's callback).
  void abandon() noexcept;
  bool busy() const noexcept { return step_ != Step::idle; }
  std::uint64_t key() const noexcept { return key_; }           // join(): the key registered
  std::size_t preempted() const noexcept { return preempted_; } // keys fenced (join: of earlier logins)

private:
  enum class Step { idle, read_keys, reg, victims, preempt, preempt_plain, check_gone, reserve, check_reserved, leave };
  bool start(iscsi_context *ctx, int lun, Step first, Done done) noexcept;
  bool issue() noexcept;
  static void on_done(iscsi_context *iscsi, int status, void *command_data, void *private_data) noexcept;
  void next(int status, scsi_task *task);
  bool after_preempt() noexcept;
  void finish(bool ok, const std::string &why) noexcept;

  iscsi_context *ctx_ = nullptr;
  int lun_ = 0;
  PrSlot slot_{};
  bool whole_owner_ = false;
  std::uint32_t seed_ = 0;
  Step step_ = Step::idle;
  bool join_ = false;
  bool abandoned_ = false;
  std::uint64_t key_ = 0;
  std::vector<std::uint64_t> victims_; // keys to preempt, the next one last
  scsi_task *task_ = nullptr;
  unsigned attentions_ = 0;
  std::size_t preempted_ = 0;
  Done done_;
};

// open()'s first login (setup, blocking): join() with whole_owner, polled on ctx; gives up after
// seconds or within 100 ms of cancelled(). Throws std::runtime_error saying which step failed.
struct PrJoined {
  std::uint64_t key = 0;     // registered
  std::size_t preempted = 0; // the owner's other keys fenced
};
PrJoined pr_join_blocking(iscsi_context *ctx, int lun, PrSlot slot, std::uint32_t seed, int seconds,
                          const std::function<bool()> &cancelled);

} // namespace vb
