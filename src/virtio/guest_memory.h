// Translation of driver (IOVA) addresses into this process's address space. The VDUSE device
// implements it with its IOTLB map cache; unit tests implement it over a plain buffer.
#pragma once

#include <cstdint>
#include <sys/uio.h>

namespace vb::virtio {

class GuestMemory {
public:
  virtual ~GuestMemory() = default;

  // Appends iovecs covering [iova, iova + len) to out[n], out[n+1]... (a range may span several
  // mapped regions), advancing n. write: the device will write there, so the region must
  // allow it. Returns false, leaving n unspecified within [old n, cap], if any byte is unmapped,
  // lacks the permission, or more than cap iovecs would be needed.
  virtual bool map(std::uint64_t iova, std::uint64_t len, bool write, iovec *out, unsigned &n,
                   unsigned cap) noexcept = 0;

  // A pointer to [iova, iova + len) when that range lies in one mapped region; nullptr otherwise.
  // For rings and indirect tables.
  virtual void *map_contiguous(std::uint64_t iova, std::uint64_t len, bool write) noexcept = 0;

  // Pins the mappings handed out from now on: a mapping the kernel retires (UPDATE_IOTLB, reset)
  // stays valid in this process until every pin taken before the retirement is released, so a
  // request in flight never touches freed memory and a held write never sends other bytes.
  // Returns a token for unpin(). Any thread; every pin() is matched by exactly one unpin().
  virtual std::uint64_t pin() noexcept { return 0; }
  virtual void unpin(std::uint64_t /*token*/) noexcept {}
};

} // namespace vb::virtio
