// A userspace stand-in for a virtio driver, for unit tests of the device side: it lays out a
// split ring in an ordinary buffer ("guest memory" at a made-up IOVA), builds descriptor
// chains (direct or indirect) and reads the used ring. Hostile chains are built by writing
// descriptors directly.
#pragma once

#include "virtio/guest_memory.h"
#include "virtio/ring.h"
#include "virtio/split_queue.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace vb::test {

// Guest memory: one buffer at IOVA base, cut into regions at the given boundaries (so buffers
// can span regions), optionally with a read-only range. relocate() models the kernel retiring
// every mapping (UPDATE_IOTLB): the contents move to a new buffer, and the old one keeps them
// only while pins taken before the move are held, then is poisoned (0xEE), as a mapping the
// daemon must no longer use.
class ArenaMemory : public virtio::GuestMemory {
public:
  static constexpr std::uint8_t kPoison = 0xEE;

  explicit ArenaMemory(std::size_t size, std::uint64_t base = 0x100000) : base_(base), size_(size) {
    buffers_.push_back({std::make_unique<std::uint8_t[]>(size), 0, false});
    data_.store(buffers_.back().bytes.get());
  }

  std::uint64_t base() const { return base_; }
  std::uint64_t end() const { return base_ + size_; }
  std::uint8_t *ptr(std::uint64_t iova) { return data_.load() + (iova - base_); }

  // Region boundaries: IOVAs where one mapping ends and the next begins.
  void split_at(std::uint64_t iova) { cuts_.push_back(iova); }
  // Device may only read [start, end).
  void read_only(std::uint64_t start, std::uint64_t end) { ro_.push_back({start, end}); }

  // Moves the contents; the old buffer is poisoned once no pin from before needs it.
  void relocate() {
    std::lock_guard lock(pin_mu_);
    auto fresh = std::make_unique<std::uint8_t[]>(size_);
    std::memcpy(fresh.get(), data_.load(), size_);
    buffers_.back().retired_epoch = epoch_++;
    buffers_.back().retired = true;
    buffers_.push_back({std::move(fresh), 0, false});
    data_.store(buffers_.back().bytes.get());
    poison_unpinned();
  }
  // Old buffers still intact because a pin needs them.
  std::size_t retired_alive() {
    std::lock_guard lock(pin_mu_);
    std::size_t n = 0;
    for (const auto &b : buffers_)
      n += b.retired && !b.poisoned ? 1 : 0;
    return n;
  }
  std::size_t pins() {
    std::lock_guard lock(pin_mu_);
    std::size_t n = 0;
    for (const auto &p : pins_)
      n += p.second;
    return n;
  }

  std::uint64_t pin() noexcept override {
    std::lock_guard lock(pin_mu_);
    ++pins_[epoch_];
    return epoch_;
  }
  void unpin(std::uint64_t token) noexcept override {
    std::lock_guard lock(pin_mu_);
    auto it = pins_.find(token);
    if (it == pins_.end() || it->second == 0)
      std::abort(); // an unpin without its pin: the bug these tests look for
    if (--it->second == 0)
      pins_.erase(it);
    poison_unpinned();
  }

  bool map(std::uint64_t iova, std::uint64_t len, bool write, iovec *out, unsigned &n, unsigned cap) noexcept override {
    if (len == 0)
      return true;
    if (iova < base_ || iova >= end() || len > end() - iova)
      return false;
    if (write && overlaps_ro(iova, iova + len))
      return false;
    std::uint64_t pos = iova;
    const std::uint64_t stop = iova + len;
    while (pos < stop) {
      std::uint64_t piece_end = stop;
      for (auto c : cuts_)
        if (c > pos && c < piece_end)
          piece_end = c;
      if (n >= cap)
        return false;
      out[n].iov_base = ptr(pos);
      out[n].iov_len = piece_end - pos;
      ++n;
      pos = piece_end;
    }
    return true;
  }

  void *map_contiguous(std::uint64_t iova, std::uint64_t len, bool write) noexcept override {
    if (iova < base_ || iova >= end() || len > end() - iova)
      return nullptr;
    for (auto c : cuts_)
      if (c > iova && c < iova + len)
        return nullptr;
    if (write && overlaps_ro(iova, iova + len))
      return nullptr;
    return ptr(iova);
  }

private:
  struct Buffer {
    std::unique_ptr<std::uint8_t[]> bytes;
    std::uint64_t retired_epoch;
    bool retired;
    bool poisoned = false;
  };
  bool overlaps_ro(std::uint64_t a, std::uint64_t b) const {
    for (auto [s, e] : ro_)
      if (a < e && s < b)
        return true;
    return false;
  }
  void poison_unpinned() { // pin_mu_ held
    const std::uint64_t oldest = pins_.empty() ? UINT64_MAX : pins_.begin()->first;
    for (auto &b : buffers_)
      if (b.retired && !b.poisoned && b.retired_epoch < oldest) {
        std::memset(b.bytes.get(), kPoison, size_);
        b.poisoned = true;
      }
  }

  std::uint64_t base_;
  std::size_t size_;
  std::vector<Buffer> buffers_; // every buffer ever used, so a late access is never a use-after-free
  std::atomic<std::uint8_t *> data_{nullptr};
  std::vector<std::uint64_t> cuts_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ro_;
  std::mutex pin_mu_;
  std::uint64_t epoch_ = 0;
  std::map<std::uint64_t, std::size_t> pins_;
};

struct Buf {
  std::uint64_t iova;
  std::uint32_t len;
  bool write;
};

class RingDriver {
public:
  // Lays out a ring of num entries at the start of mem; data buffers come from alloc().
  RingDriver(ArenaMemory &mem, std::uint16_t num) : mem_(mem), num_(num) {
    layout_.num = num;
    layout_.desc = alloc(16ULL * num, 16);
    layout_.avail = alloc(6ULL + 2ULL * num, 2);
    layout_.used = alloc(6ULL + 8ULL * num, 4);
  }

  const virtio::RingLayout &layout() const { return layout_; }

  // Bump allocator over the arena (zeroed memory).
  std::uint64_t alloc(std::uint64_t len, std::uint64_t align = 8) {
    next_ = (next_ + align - 1) / align * align;
    const std::uint64_t iova = mem_.base() + next_;
    next_ += len;
    if (iova + len > mem_.end())
      throw std::runtime_error("arena full");
    std::memset(mem_.ptr(iova), 0, len);
    return iova;
  }

  virtio::VringDesc *desc(unsigned i) { return reinterpret_cast<virtio::VringDesc *>(mem_.ptr(layout_.desc)) + i; }
  virtio::AvailRing avail() { return {reinterpret_cast<std::uint16_t *>(mem_.ptr(layout_.avail))}; }
  virtio::UsedRing used() { return {reinterpret_cast<std::uint16_t *>(mem_.ptr(layout_.used))}; }

  // Writes descriptor i of a table.
  static void set_desc(virtio::VringDesc *d, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                       std::uint16_t next) {
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
  }

  // Puts a chain of direct descriptors at indices first, first+1... and makes it available.
  std::uint16_t add_chain(const std::vector<Buf> &bufs) {
    const std::uint16_t head = next_desc_;
    for (std::size_t k = 0; k < bufs.size(); ++k) {
      const std::uint16_t i = slot();
      const bool last = k + 1 == bufs.size();
      set_desc(desc(i), bufs[k].iova, bufs[k].len,
               static_cast<std::uint16_t>((bufs[k].write ? virtio::kDescWrite : 0) | (last ? 0 : virtio::kDescNext)),
               static_cast<std::uint16_t>(last ? 0 : (i + 1) % num_));
    }
    publish(head);
    return head;
  }

  // One ring descriptor pointing at an indirect table holding bufs.
  std::uint16_t add_indirect(const std::vector<Buf> &bufs) {
    const std::uint64_t table = alloc(16ULL * bufs.size(), 16);
    auto *t = reinterpret_cast<virtio::VringDesc *>(mem_.ptr(table));
    for (std::size_t k = 0; k < bufs.size(); ++k) {
      const bool last = k + 1 == bufs.size();
      set_desc(&t[k], bufs[k].iova, bufs[k].len,
               static_cast<std::uint16_t>((bufs[k].write ? virtio::kDescWrite : 0) | (last ? 0 : virtio::kDescNext)),
               static_cast<std::uint16_t>(last ? 0 : k + 1));
    }
    const std::uint16_t head = slot();
    set_desc(desc(head), table, static_cast<std::uint32_t>(16 * bufs.size()), virtio::kDescIndirect, 0);
    publish(head);
    return head;
  }

  // Makes an already written head available.
  void publish(std::uint16_t head) {
    *avail().entry(avail_idx_ % num_) = head;
    ++avail_idx_;
    __atomic_store_n(avail().idx(), avail_idx_, __ATOMIC_RELEASE);
  }

  std::uint16_t used_idx() { return __atomic_load_n(used().idx(), __ATOMIC_ACQUIRE); }
  virtio::VringUsedElem used_elem(std::uint16_t idx) { return *used().entry(idx % num_); }

  std::uint16_t &used_event() { return *avail().used_event(num_); }
  // The device writes it concurrently (the driver reads it like READ_ONCE).
  std::uint16_t avail_event() { return __atomic_load_n(used().avail_event(num_), __ATOMIC_ACQUIRE); }

  std::uint16_t slot() {
    const std::uint16_t i = next_desc_;
    next_desc_ = static_cast<std::uint16_t>((next_desc_ + 1) % num_);
    return i;
  }
  // Lets tests start the driver's indices anywhere (wraparound tests).
  void set_avail_idx(std::uint16_t v) {
    avail_idx_ = v;
    *avail().idx() = v;
  }

private:
  ArenaMemory &mem_;
  std::uint16_t num_;
  virtio::RingLayout layout_;
  std::uint64_t next_ = 0;
  std::uint16_t next_desc_ = 0;
  std::uint16_t avail_idx_ = 0;
};

} // namespace vb::test
