// Maps the driver's IOVA space into this process for one VDUSE device: asks the kernel for the
// region around an address (VDUSE_IOTLB_GET_FD), mmaps it once and keeps it until the kernel
// says the range changed (UPDATE_IOTLB) or the device is reset.
//
// Threading: map()/map_contiguous() may be called from every queue thread at once;
// invalidate() and reset() from the control thread. A region that is invalidated while a request
// still points into it is replaced in place by anonymous memory (not unmapped), so a late access
// from the backend can never fault; that placeholder is released when the cache is destroyed.
#pragma once

#include "virtio/guest_memory.h"

#include <cstdint>
#include <mutex>
#include <vector>

namespace vb::vduse {

class IotlbCache final : public virtio::GuestMemory {
public:
  explicit IotlbCache(int device_fd) : fd_(device_fd) {}
  ~IotlbCache() override;
  IotlbCache(const IotlbCache &) = delete;
  IotlbCache &operator=(const IotlbCache &) = delete;

  bool map(std::uint64_t iova, std::uint64_t len, bool write, iovec *out, unsigned &n, unsigned cap) noexcept override;
  void *map_contiguous(std::uint64_t iova, std::uint64_t len, bool write) noexcept override;

  // Drops every cached mapping that overlaps [start, last].
  void invalidate(std::uint64_t start, std::uint64_t last) noexcept;
  // Drops everything (device reset).
  void reset() noexcept;

  std::size_t cached_regions() const;

private:
  struct Region {
    std::uint64_t start;
    std::uint64_t last;
    std::uint8_t *addr; // mapping of start
    std::size_t length; // of the mmap
    std::uint8_t perm;  // VDUSE_ACCESS_*
  };
  const Region *lookup(std::uint64_t iova) noexcept; // mu_ held
  void retire(const Region &r) noexcept;             // mu_ held

  int fd_;
  mutable std::mutex mu_;
  std::vector<Region> regions_;
  std::vector<std::pair<void *, std::size_t>> retired_;
};

} // namespace vb::vduse
