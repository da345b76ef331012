#include "virtio/split_queue.h"

#include <cstring>
#include <endian.h>

namespace vb::virtio {
namespace {

// The driver may write ring memory at any time, from another CPU: every shared field is read
// and written with atomic operations of the right ordering, and descriptors are copied once.
std::uint16_t load_acquire(const std::uint16_t *p) noexcept { return le16toh(__atomic_load_n(p, __ATOMIC_ACQUIRE)); }
std::uint16_t load_relaxed(const std::uint16_t *p) noexcept { return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED)); }
void store_relaxed(std::uint16_t *p, std::uint16_t v) noexcept { __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED); }
void store_release(std::uint16_t *p, std::uint16_t v) noexcept { __atomic_store_n(p, htole16(v), __ATOMIC_RELEASE); }
void full_fence() noexcept { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

VringDesc read_desc(const VringDesc *table, unsigned i) noexcept {
  VringDesc d;
  // A plain copy through a volatile-free memcpy is one read of each byte; fields are then
  // checked on the private copy only (no time-of-check/time-of-use window).
  std::memcpy(&d, &table[i], sizeof d);
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  d.addr = le64toh(d.addr);
  d.len = le32toh(d.len);
  d.flags = le16toh(d.flags);
  d.next = le16toh(d.next);
  return d;
}

} // namespace

const char *to_string(ChainError e) noexcept {
  switch (e) {
  case ChainError::none:
    return "no error";
  case ChainError::bad_head:
    return "head index out of range";
  case ChainError::too_long:
    return "chain too long (or looped)";
  case ChainError::bad_next:
    return "next index out of range";
  case ChainError::unmapped:
    return "buffer address not mapped or not accessible";
  case ChainError::too_many_pieces:
    return "buffers split into too many pieces";
  case ChainError::write_then_read:
    return "device-readable descriptor after a device-writable one";
  case ChainError::bad_indirect:
    return "malformed indirect table";
  case ChainError::nested_indirect:
    return "nested indirect table";
  case ChainError::indirect_next:
    return "indirect descriptor with NEXT set";
  case ChainError::length_overflow:
    return "total length overflows 32 bits";
  }
  return "unknown";
}

bool SplitQueue::map_rings(GuestMemory &mem, const RingLayout &layout) noexcept {
  const std::uint16_t num = layout.num;
  auto *desc = static_cast<const VringDesc *>(mem.map_contiguous(layout.desc, 16ULL * num, false));
  auto *avail = static_cast<std::uint16_t *>(mem.map_contiguous(layout.avail, AvailRing::bytes(num), false));
  auto *used = static_cast<std::uint16_t *>(mem.map_contiguous(layout.used, UsedRing::bytes(num), true));
  if (!desc || !avail || !used)
    return false;
  mem_ = &mem;
  layout_ = layout;
  desc_ = desc;
  avail_.base = avail;
  used_.base = used;
  num_ = num;
  return true;
}

bool SplitQueue::start(GuestMemory &mem, const RingLayout &layout, std::uint16_t next_avail, bool event_idx) noexcept {
  stop();
  const std::uint16_t num = layout.num;
  if (num == 0 || (num & (num - 1)) != 0 || num > 32768)
    return false;
  // Alignment required by the spec (2.7): also what makes the atomic accesses well-defined.
  if (layout.desc % 16 != 0 || layout.avail % 2 != 0 || layout.used % 4 != 0)
    return false;
  if (!map_rings(mem, layout))
    return false;
  last_avail_ = next_avail;
  used_idx_ = load_relaxed(used_.idx());
  signalled_used_valid_ = false;
  event_idx_ = event_idx;
  last_error_ = ChainError::none;
  return true;
}

bool SplitQueue::remap() noexcept {
  if (!started())
    return false;
  GuestMemory &mem = *mem_;
  const RingLayout layout = layout_;
  if (map_rings(mem, layout))
    return true;
  stop();
  return false;
}

void SplitQueue::stop() noexcept {
  mem_ = nullptr;
  desc_ = nullptr;
  avail_.base = nullptr;
  used_.base = nullptr;
  num_ = 0;
}

std::uint16_t SplitQueue::pending() const noexcept {
  if (!avail_.base)
    return 0;
  return static_cast<std::uint16_t>(load_acquire(avail_.idx()) - last_avail_);
}

PopResult SplitQueue::pop(Chain &chain) noexcept {
  if (!desc_)
    return PopResult::empty;
  // Acquire: the ring entry and the descriptors are read only after the index that published them.
  const std::uint16_t avail_idx = load_acquire(avail_.idx());
  const auto waiting = static_cast<std::uint16_t>(avail_idx - last_avail_);
  if (waiting == 0)
    return PopResult::empty;
  if (waiting > num_) {
    last_error_ = ChainError::bad_head;
    return PopResult::broken;
  }
  const std::uint16_t head = load_relaxed(avail_.entry(last_avail_ & (num_ - 1u)));
  if (head >= num_) {
    // Not even an id we could hand back: the driver broke the ring.
    last_error_ = ChainError::bad_head;
    return PopResult::broken;
  }
  ++last_avail_;
  if (walk(head, chain))
    return PopResult::ok;
  chain.bad_status = find_status_byte(head);
  return PopResult::bad_chain;
}

bool SplitQueue::add_buffer(const VringDesc &d, bool write, Chain &chain) noexcept {
  if (d.len == 0)
    return true; // nothing to map; harmless
  unsigned n = chain.num_readable + chain.num_writable;
  const unsigned before = n;
  if (!mem_->map(d.addr, d.len, write, chain.iov, n, kMaxChainIovecs)) {
    last_error_ = n >= kMaxChainIovecs ? ChainError::too_many_pieces : ChainError::unmapped;
    return false;
  }
  const unsigned added = n - before;
  if (write) {
    chain.num_writable += added;
    chain.writable_bytes += d.len;
  } else {
    chain.num_readable += added;
    chain.readable_bytes += d.len;
  }
  if (chain.readable_bytes + chain.writable_bytes > UINT32_MAX) {
    last_error_ = ChainError::length_overflow;
    return false;
  }
  return true;
}

bool SplitQueue::walk(std::uint16_t head, Chain &chain) noexcept {
  chain.clear();
  chain.head = head;
  const VringDesc *table = desc_;
  unsigned table_len = num_;
  unsigned i = head;
  bool in_indirect = false;
  bool seen_write = false;
  // Counting every buffer descriptor visited bounds the walk, which is also what catches loops.
  // The descriptor that points at an indirect table is not a buffer and is not counted.
  for (unsigned count = 0;;) {
    const VringDesc d = read_desc(table, i);
    if (!(d.flags & kDescIndirect) && ++count > kMaxChainDescriptors) {
      last_error_ = ChainError::too_long;
      return false;
    }
    if (d.flags & kDescIndirect) {
      if (in_indirect) {
        last_error_ = ChainError::nested_indirect;
        return false;
      }
      if (d.flags & kDescNext) {
        last_error_ = ChainError::indirect_next;
        return false;
      }
      if (d.len == 0 || d.len % sizeof(VringDesc) != 0 || d.len / sizeof(VringDesc) > kMaxChainDescriptors) {
        last_error_ = ChainError::bad_indirect;
        return false;
      }
      table = static_cast<const VringDesc *>(mem_->map_contiguous(d.addr, d.len, false));
      if (!table || reinterpret_cast<std::uintptr_t>(table) % alignof(VringDesc) != 0) {
        last_error_ = ChainError::bad_indirect;
        return false;
      }
      table_len = d.len / sizeof(VringDesc);
      in_indirect = true;
      i = 0;
      continue;
    }
    const bool write = (d.flags & kDescWrite) != 0;
    if (!write && seen_write) {
      last_error_ = ChainError::write_then_read;
      return false;
    }
    seen_write = seen_write || write;
    if (!add_buffer(d, write, chain))
      return false;
    if (!(d.flags & kDescNext))
      return true;
    i = d.next;
    if (i >= table_len) {
      last_error_ = ChainError::bad_next;
      return false;
    }
  }
}

std::uint8_t *SplitQueue::find_status_byte(std::uint16_t head) noexcept {
  // Walks the links only, with the same bounds as walk(), to find the chain's final descriptor.
  const VringDesc *table = desc_;
  unsigned table_len = num_;
  unsigned i = head;
  bool in_indirect = false;
  for (unsigned count = 0;;) {
    const VringDesc d = read_desc(table, i);
    if (!(d.flags & kDescIndirect) && ++count > kMaxChainDescriptors)
      return nullptr;
    if (d.flags & kDescIndirect) {
      if (in_indirect || (d.flags & kDescNext) || d.len == 0 || d.len % sizeof(VringDesc) != 0 ||
          d.len / sizeof(VringDesc) > kMaxChainDescriptors)
        return nullptr;
      table = static_cast<const VringDesc *>(mem_->map_contiguous(d.addr, d.len, false));
      if (!table || reinterpret_cast<std::uintptr_t>(table) % alignof(VringDesc) != 0)
        return nullptr;
      table_len = d.len / sizeof(VringDesc);
      in_indirect = true;
      i = 0;
      continue;
    }
    if (!(d.flags & kDescNext)) {
      if (!(d.flags & kDescWrite) || d.len == 0)
        return nullptr;
      return static_cast<std::uint8_t *>(mem_->map_contiguous(d.addr + d.len - 1, 1, true));
    }
    i = d.next;
    if (i >= table_len)
      return nullptr;
  }
}

void SplitQueue::push(std::uint16_t head, std::uint32_t written_len) noexcept {
  VringUsedElem *e = used_.entry(used_idx_ & (num_ - 1u));
  __atomic_store_n(&e->id, htole32(head), __ATOMIC_RELAXED);
  __atomic_store_n(&e->len, htole32(written_len), __ATOMIC_RELAXED);
  // Release: the element is visible before the index that publishes it.
  store_release(used_.idx(), ++used_idx_);
}

std::uint32_t SplitQueue::mark_bad_chain(const Chain &chain, std::uint8_t status) noexcept {
  if (!chain.bad_status)
    return 0;
  __atomic_store_n(chain.bad_status, status, __ATOMIC_RELAXED);
  return 1;
}

void SplitQueue::fail_bad_chain(const Chain &chain, std::uint8_t status) noexcept {
  push(chain.head, mark_bad_chain(chain, status));
}

PopResult SplitQueue::chain_at(std::uint16_t head, Chain &chain) noexcept {
  if (!desc_ || head >= num_) {
    last_error_ = ChainError::bad_head;
    return PopResult::broken;
  }
  if (walk(head, chain))
    return PopResult::ok;
  chain.bad_status = find_status_byte(head);
  return PopResult::bad_chain;
}

bool SplitQueue::should_notify() noexcept {
  if (!used_.base)
    return false;
  // Our used->idx store must be visible before we read the driver's suppression state, or we
  // could both decide the other will act (2.7.10.1).
  full_fence();
  if (!event_idx_)
    return (load_relaxed(avail_.flags()) & kAvailNoInterrupt) == 0;
  const std::uint16_t old = signalled_used_;
  const bool valid = signalled_used_valid_;
  signalled_used_ = used_idx_;
  signalled_used_valid_ = true;
  if (!valid)
    return true;
  return need_event(load_relaxed(avail_.used_event(num_)), used_idx_, old);
}

bool SplitQueue::enable_notifications() noexcept {
  if (!used_.base)
    return false;
  if (event_idx_)
    store_relaxed(used_.avail_event(num_), last_avail_);
  else
    store_relaxed(used_.flags(), 0);
  // Publish the request for kicks before looking again, or a buffer added in between is missed.
  full_fence();
  return load_acquire(avail_.idx()) != last_avail_;
}

void SplitQueue::disable_notifications() noexcept {
  if (used_.base && !event_idx_)
    store_relaxed(used_.flags(), kUsedNoNotify);
}

} // namespace vb::virtio
