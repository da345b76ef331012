// A validated descriptor chain, mapped into this process: what the split-ring code hands to
// the virtio-blk layer. Device-readable buffers come first, then device-writable ones (the
// ring code rejects chains that interleave them). Descriptors that span several IOTLB
// regions are split, so there can be more iovecs than descriptors.
#pragma once

#include <cstdint>
#include <sys/uio.h>

namespace vb::virtio {

// Upper bound on descriptors in one chain, direct and indirect together. The device offers
// seg_max below this, so a well-behaved driver never comes close.
inline constexpr unsigned kMaxChainDescriptors = 256;
// Upper bound on iovecs after splitting at IOTLB region boundaries.
inline constexpr unsigned kMaxChainIovecs = 512;

struct Chain {
  std::uint16_t head = 0;    // id to return in the used ring
  unsigned num_readable = 0; // iov[0, num_readable) are device-readable
  unsigned num_writable = 0; // iov[num_readable, num_readable + num_writable) are device-writable
  std::uint64_t readable_bytes = 0;
  std::uint64_t writable_bytes = 0;
  // Only for chains that failed validation: the last byte of the chain's final descriptor, if
  // that descriptor is device-writable and mapped, so the request can still be failed properly.
  std::uint8_t *bad_status = nullptr;
  iovec iov[kMaxChainIovecs];

  const iovec *readable() const { return iov; }
  const iovec *writable() const { return iov + num_readable; }
  void clear() {
    num_readable = num_writable = 0;
    readable_bytes = writable_bytes = 0;
    bad_status = nullptr;
  }
};

} // namespace vb::virtio
