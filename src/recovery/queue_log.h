// The in-flight log of one virtqueue: what a successor needs, after the daemon died at any
// instruction, to complete every request the driver made available exactly once (none lost, none
// completed twice). It lives in the device's state file (recovery_state.h), mapped MAP_SHARED, so
// every store is in the page cache the moment it executes and survives the process (SIGKILL, a
// crash). A power loss loses the guest too: no msync/fsync.
//
// Contents (layout in state_layout.h):
//   started      1 between start() and stop(): the ring is live and the log describes it
//   pop_seq      64-bit pop sequence, the number the next pop gets; its low 16 bits are the next
//                avail index the device will consume (so the counter says where a head came from)
//   entry[head]  in_flight: head was popped and its completion is not known to be published;
//                counter: the pop_seq it was popped with (unique: oldest first is a sort)
//   used         the used index last published, as far as the log knows
//   batch        {head, used_before}: the completion being published right now
//   baseline     (pop_seq - used - heads in flight) mod 2^16, constant between start() and stop()
//
// Stores, in this order (single aligned atomic stores; every one that must not become visible
// before an earlier one is a release store, which orders it after all earlier stores, both for
// the compiler and the CPU):
//   popped(h)          P1 entry[h].counter = pop_seq   P2 entry[h].in_flight = 1   P3 ++pop_seq
//   before_publish(h)  B1 batch = {h, used}
//   (SplitQueue::push) the used element, then used->idx = used + 1 in guest memory     ("R")
//   after_publish(h)   A1 entry[h].in_flight = 0       A2 used = used + 1
//
// What recover(R), given the used->idx really in the ring, concludes from each cut:
//   before P2       h not in flight, pop_seq not advanced: the successor pops avail[pop_seq]
//                   again. Nothing was done with the request (P1 alone changes nothing: a
//                   counter means nothing without the flag).
//   P2 .. P3        h in flight with counter == pop_seq, which a completed pop never leaves
//                   (every counter is < pop_seq then): the pop happened, do P3. The avail ring
//                   need not be read: the counter records which slot h came from.
//   P3 .. R         R == used: nothing published, h in flight: resubmitted. B1 changes nothing.
//   R .. A2         R == used + 1 and batch == {h, used}: the driver has the completion. Do A1
//                   (clear h: NOT resubmitted) and A2.
//   after A2        consistent.
// Any other R (not used or used + 1, or used + 1 without the matching batch) means the ring is
// not the one this log describes, or the driver wrote its used ring: recover() throws rather than
// guess. recover() checks everything first, then repairs with the same stores in the same order
// (A1, A2, P3), so dying during recover() leaves a log that the next recover() repairs the same
// way. Resubmission is oldest first: in-flight heads sorted by counter.
//
// start() is S1 started = 0, then every field (in-flight flags cleared), then started = 1
// (release). Dying in between leaves started == 0: no pop happened in that start, so the
// successor starts afresh from the kernel's vq state (VQ_GET_INFO's avail_index is still what
// this start was given). Counters grow across starts too (start_seq > every older counter).
//
// Rules for the caller (the queue worker):
//   - every consumed head goes through popped() right after it was read from the avail ring,
//     also a chain that turns out malformed (it is completed like any other);
//   - every used->idx store is one completion: before_publish(head, idx) before it,
//     after_publish(head, idx + 1) after it (no batching several elements into one idx store);
//   - stop() before answering SET_STATUS(0) (a reset): once the kernel has the answer the
//     driver may reuse every head, and a log still started would resubmit stale requests;
//   - on DRIVER_OK answer first, then start() (as the queue is started);
//   - a successor calls recover() before serving the queue: resubmits what it returns in that
//     order (the heads stay in flight and complete through before/after_publish), starts the
//     ring at next_avail and scans it once. started == false: start() afresh if the vq is ready.
//
// Threading: one thread at a time per queue (the queue's worker; recover() before the worker
// serves the queue). popped/before_publish/after_publish are the data path: a few stores, no
// allocation, no system call, never throw.
#pragma once

#include "recovery/state_layout.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace vb::recovery {

struct QueueLogCrashHook;

class QueueLog {
public:
  QueueLog(const QueueLog &) = delete;
  QueueLog &operator=(const QueueLog &) = delete;

  struct Recovered {
    bool started = false; // false: the queue was not live (never started, reset, or died in start())
    std::uint16_t ring_size = 0;
    std::uint16_t next_avail = 0;                      // start the ring here
    std::uint16_t used_idx = 0;                        // what the used ring holds (the R given to recover())
    std::vector<std::uint16_t> in_flight_oldest_first; // resubmit these, in this order
    bool finished_publish = false;                     // the predecessor died between used->idx and after_publish
    bool finished_pop = false; // the predecessor died between the in-flight mark and the advance
  };

  unsigned index() const noexcept { return index_; }
  // Entries in the file: the largest ring this queue may have.
  std::uint16_t capacity() const noexcept { return capacity_; }
  bool started() const noexcept;
  std::uint16_t ring_size() const noexcept;
  std::uint16_t next_avail() const noexcept;
  std::uint16_t used_idx() const noexcept;
  bool in_flight(std::uint16_t head) const noexcept;

  // The ring was started (fresh DRIVER_OK) at next_avail with the used ring at used_idx: forgets
  // every request of the previous start. False (nothing written) if ring_size is not a power of
  // two within capacity().
  bool start(std::uint16_t ring_size, std::uint16_t next_avail, std::uint16_t used_idx) noexcept;
  // The ring was reset: nothing in flight is resubmitted any more.
  void stop() noexcept;

  // Data path. The device just read head from avail[next_avail()]. False (nothing written) if the
  // queue is not started, head is outside the ring, or head is already in flight (the driver
  // offered it twice: the caller must treat the ring as broken, as it does now).
  bool popped(std::uint16_t head) noexcept;
  // Data path. Right before used->idx = used_idx_before + 1 publishes head's completion.
  void before_publish(std::uint16_t head, std::uint16_t used_idx_before) noexcept;
  // Data path. Right after that store; used_idx_after == used_idx_before + 1.
  void after_publish(std::uint16_t head, std::uint16_t used_idx_after) noexcept;

  // Control thread of a successor, before the queue is served. used_idx_in_ring: used->idx as
  // read from guest memory now. Repairs the log (see the table above) and says what to resubmit
  // and where to continue. Throws StateError naming the file, queue and problem if the log is
  // corrupt or does not fit the ring; the queue must not be served then.
  Recovered recover(std::uint16_t used_idx_in_ring);

private:
  friend class RecoveryState;
  friend struct QueueLogCrashHook;
  QueueLog() = default;
  void attach(unsigned index, void *base, std::uint16_t capacity, std::string label) noexcept;

  // The mutators, with `die()` called after every store; the public ones pass a constant false
  // (compiled away), QueueLogCrashHook one that stops the mutator there, as a SIGKILL would.
  template <class Die>
  bool start_impl(std::uint16_t ring_size, std::uint16_t next_avail, std::uint16_t used, Die &&die);
  template <class Die> void stop_impl(Die &&die);
  template <class Die> bool popped_impl(std::uint16_t head, Die &&die);
  template <class Die> void before_publish_impl(std::uint16_t head, std::uint16_t used_before, Die &&die);
  template <class Die> void after_publish_impl(std::uint16_t head, std::uint16_t used_after, Die &&die);
  template <class Die> Recovered recover_impl(std::uint16_t used_in_ring, Die &&die);

  layout::QueueHeader *hdr_ = nullptr;
  layout::Entry *entries_ = nullptr;
  std::uint16_t capacity_ = 0;
  unsigned index_ = 0;
  std::string label_; // "PATH, queue N" for errors
};

// Test-only: runs one mutator but calls die() after each of its stores; die() returning true
// stops the mutator right there (the process "died" between two stores). The mutators are the
// same code as the public ones. Returns false if it was stopped; otherwise true (and the
// mutator's own result in *result where it has one).
struct QueueLogCrashHook {
  using Die = std::function<bool()>;
  static bool start(QueueLog &log, std::uint16_t ring_size, std::uint16_t next_avail, std::uint16_t used_idx,
                    const Die &die, bool *result = nullptr);
  static bool stop(QueueLog &log, const Die &die);
  static bool popped(QueueLog &log, std::uint16_t head, const Die &die, bool *result = nullptr);
  static bool before_publish(QueueLog &log, std::uint16_t head, std::uint16_t used_idx_before, const Die &die);
  static bool after_publish(QueueLog &log, std::uint16_t head, std::uint16_t used_idx_after, const Die &die);
  static std::optional<QueueLog::Recovered> recover(QueueLog &log, std::uint16_t used_idx_in_ring, const Die &die);
};

} // namespace vb::recovery
