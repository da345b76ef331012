// The device side of one split virtqueue (virtio 1.2, 2.7): pops validated descriptor chains
// from the available ring, publishes completions on the used ring, and decides when the driver
// must be notified (EVENT_IDX or the NO_INTERRUPT flag).
//
// Everything in the rings is written by the driver, which may be a hostile VM guest or may change
// memory while we read it: every descriptor is copied once before it is checked, every index is
// bounded, and a malformed chain fails that request only.
//
// Threading: one thread (the queue's loop) owns a SplitQueue.
#pragma once

#include "virtio/chain.h"
#include "virtio/guest_memory.h"

#include "virtio/ring.h"

#include <cstdint>

namespace vb::virtio {

struct RingLayout {
  std::uint64_t desc = 0;  // IOVA of the descriptor table
  std::uint64_t avail = 0; // IOVA of the available (driver) ring
  std::uint64_t used = 0;  // IOVA of the used (device) ring
  std::uint16_t num = 0;   // ring size, a power of two
};

enum class PopResult {
  empty,     // nothing available
  ok,        // chain is valid
  bad_chain, // chain.head was consumed but is malformed: complete it with fail_bad_chain()
  broken,    // the available ring itself is corrupt (bad index or head): stop using the queue
};

// Why the last bad_chain was bad, for a log line.
enum class ChainError {
  none,
  bad_head,
  too_long,        // more descriptors than allowed: also what a loop looks like
  bad_next,        // next index outside the table
  unmapped,        // a buffer outside the mapped IOVA space or without the needed permission
  too_many_pieces, // more iovecs than kMaxChainIovecs after splitting at region boundaries
  write_then_read, // a device-readable descriptor after a device-writable one
  bad_indirect,    // indirect table: size not a multiple of 16, empty, too big, or unmapped
  nested_indirect, // an indirect descriptor inside an indirect table
  indirect_next,   // INDIRECT together with NEXT
  length_overflow, // the total length does not fit in 32 bits
};

const char *to_string(ChainError e) noexcept;

class SplitQueue {
public:
  SplitQueue() = default;
  SplitQueue(const SplitQueue &) = delete;
  SplitQueue &operator=(const SplitQueue &) = delete;

  // Maps the three rings and starts consuming at next_avail (0 for a fresh queue; the value
  // from the kernel's VQ state or the recovery log after a reconnect). used_idx is read back
  // from the used ring. Returns false if a ring is not mapped or num is not a power of two.
  bool start(GuestMemory &mem, const RingLayout &layout, std::uint16_t next_avail, bool event_idx) noexcept;
  void stop() noexcept;
  bool started() const noexcept { return desc_ != nullptr; }
  // Translates the ring addresses again, keeping the indices: after the kernel retired the
  // mappings (UPDATE_IOTLB), the rings may live elsewhere in this process. Returns false (the
  // queue is stopped) if a ring is no longer mapped.
  bool remap() noexcept;

  // Pops the next chain. With ok or bad_chain the head is consumed and must be completed once,
  // with push() or fail_bad_chain().
  PopResult pop(Chain &chain) noexcept;
  ChainError last_error() const noexcept { return last_error_; }

  // Walks the chain at head again without touching the available ring: a request that was in
  // flight when a predecessor daemon died. ok, bad_chain (complete it like a popped one), or
  // broken if head is not a descriptor index.
  PopResult chain_at(std::uint16_t head, Chain &chain) noexcept;

  // Publishes one completion: the used element, then (release) the used index.
  void push(std::uint16_t head, std::uint32_t written_len) noexcept;

  // For a malformed chain: writes status to its status byte if chain.bad_status is set and
  // returns the used.len to publish with push() (1, else 0).
  std::uint32_t mark_bad_chain(const Chain &chain, std::uint8_t status) noexcept;

  // Completes a head whose chain was malformed. If chain.bad_status is set (the chain's last
  // descriptor is a mapped, device-writable buffer) that byte gets status (e.g.
  // VIRTIO_BLK_S_IOERR) and used.len is 1; otherwise nothing is written and used.len is 0.
  void fail_bad_chain(const Chain &chain, std::uint8_t status) noexcept;

  // After a batch of push(): whether the driver wants an interrupt now.
  bool should_notify() noexcept;

  // Asks the driver to kick when it adds more buffers; returns true if buffers were added
  // meanwhile (the caller must pop again, or it would sleep on a kick that never comes).
  bool enable_notifications() noexcept;
  // Tells the driver kicks are not needed while we are popping anyway (no-op with EVENT_IDX).
  void disable_notifications() noexcept;

  std::uint16_t next_avail() const noexcept { return last_avail_; }
  std::uint16_t used_idx() const noexcept { return used_idx_; }
  std::uint16_t size() const noexcept { return num_; }
  // Buffers the driver has made available that we have not popped yet.
  std::uint16_t pending() const noexcept;

private:
  bool map_rings(GuestMemory &mem, const RingLayout &layout) noexcept;
  bool walk(std::uint16_t head, Chain &chain) noexcept;
  bool add_buffer(const VringDesc &d, bool write, Chain &chain) noexcept;
  std::uint8_t *find_status_byte(std::uint16_t head) noexcept;

  GuestMemory *mem_ = nullptr;
  RingLayout layout_;
  const VringDesc *desc_ = nullptr;
  AvailRing avail_{nullptr};
  UsedRing used_{nullptr};
  std::uint16_t num_ = 0;
  std::uint16_t last_avail_ = 0;
  std::uint16_t used_idx_ = 0;
  std::uint16_t signalled_used_ = 0;
  bool signalled_used_valid_ = false;
  bool event_idx_ = false;
  ChainError last_error_ = ChainError::none;
};

} // namespace vb::virtio
