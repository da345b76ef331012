// Maps the driver's IOVA space into this process for one VDUSE device: asks the kernel for the
// region around an address (VDUSE_IOTLB_GET_FD), mmaps it once and keeps it until the kernel
// says the range changed (UPDATE_IOTLB) or the device is reset.
//
// Retired mappings: a region the kernel retires while requests still point into it (pinned,
// see GuestMemory::pin) stays mapped, with its real contents, until the last such request is
// released; then it is unmapped. Nothing is kept longer, so a guest that resets or remaps in a
// loop cannot grow the daemon's address space.
//
// A hostile VMM: with vhost-vdpa the regions are the VMM's own memory file. A region whose file
// is shorter than the region is refused; one truncated later makes an access fault with
// SIGBUS, which a process-wide handler turns into scratch memory for that region alone (reads
// see zeros, writes go nowhere) and marks poisoned: that device's requests fail from then on,
// the daemon and every other device carry on.
//
// Threading: map()/map_contiguous()/pin()/unpin() may be called from every queue thread at once;
// invalidate() and reset() from the control thread.
#pragma once

#include "virtio/guest_memory.h"

#include <cstdint>
#include <functional>
#include <linux/vduse.h>
#include <mutex>
#include <utility>
#include <vector>

namespace vb::vduse {

class IotlbCache final : public virtio::GuestMemory {
public:
  // Where regions come from: fills entry (start, last, offset, perm) for the region holding
  // entry.start and returns an fd of its file (the caller closes it), or -1. VDUSE_IOTLB_GET_FD
  // on the device; a memfd in unit tests.
  using RegionSource = std::function<int(vduse_iotlb_entry &entry)>;

  explicit IotlbCache(int device_fd);
  explicit IotlbCache(RegionSource source);
  ~IotlbCache() override;
  IotlbCache(const IotlbCache &) = delete;
  IotlbCache &operator=(const IotlbCache &) = delete;

  bool map(std::uint64_t iova, std::uint64_t len, bool write, iovec *out, unsigned &n, unsigned cap) noexcept override;
  void *map_contiguous(std::uint64_t iova, std::uint64_t len, bool write) noexcept override;
  std::uint64_t pin() noexcept override;
  void unpin(std::uint64_t token) noexcept override;

  // Drops every cached mapping that overlaps [start, last] (unmapped once no pin needs it).
  void invalidate(std::uint64_t start, std::uint64_t last) noexcept;
  // Drops everything (device reset).
  void reset() noexcept;

  std::size_t cached_regions() const;
  // Retired regions still mapped because a pin needs them.
  std::size_t retired_regions() const;
  // Regions whose file was truncated under us (SIGBUS caught); they stay refused until retired.
  std::size_t poisoned_regions() const;

private:
  struct Region {
    std::uint64_t start;
    std::uint64_t last;
    std::uint8_t *addr; // mapping of start
    std::size_t length; // of the mmap
    std::uint8_t perm;  // VDUSE_ACCESS_*
    int guard;          // slot in the SIGBUS guard table, or -1
  };
  struct Retired {
    Region region;
    std::uint64_t epoch; // retired during this epoch: pins of it or older may still use it
  };
  const Region *lookup(std::uint64_t iova) noexcept; // mu_ held
  void release_unpinned() noexcept;                  // mu_ held
  static void unmap(const Region &r) noexcept;

  RegionSource source_;
  mutable std::mutex mu_;
  std::vector<Region> regions_;
  std::vector<Retired> retired_;
  std::uint64_t epoch_ = 0;                                 // bumped when something is retired
  std::vector<std::pair<std::uint64_t, std::size_t>> pins_; // (epoch, count), oldest first
};

} // namespace vb::vduse
