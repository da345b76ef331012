// Split virtqueue memory layout (virtio 1.2, 2.7), little-endian in memory. Our own
// definitions: <linux/virtio_ring.h> has C-only inline code that does not compile as C++.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vb::virtio {

struct VringDesc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};
static_assert(sizeof(VringDesc) == 16);

struct VringUsedElem {
  std::uint32_t id;
  std::uint32_t len;
};
static_assert(sizeof(VringUsedElem) == 8);

inline constexpr std::uint16_t kDescNext = 1;
inline constexpr std::uint16_t kDescWrite = 2;
inline constexpr std::uint16_t kDescIndirect = 4;
inline constexpr std::uint16_t kAvailNoInterrupt = 1;
inline constexpr std::uint16_t kUsedNoNotify = 1;

inline constexpr unsigned kFeatureIndirectDesc = 28;
inline constexpr unsigned kFeatureEventIdx = 29;
inline constexpr unsigned kFeatureVersion1 = 32;
inline constexpr unsigned kFeatureAccessPlatform = 33;

// Available ring: le16 flags, le16 idx, le16 ring[num], le16 used_event.
struct AvailRing {
  std::uint16_t *base;
  std::uint16_t *flags() const { return base; }
  std::uint16_t *idx() const { return base + 1; }
  std::uint16_t *entry(unsigned i) const { return base + 2 + i; }
  std::uint16_t *used_event(unsigned num) const { return base + 2 + num; }
  static constexpr std::uint64_t bytes(unsigned num) { return 6ULL + 2ULL * num; }
};

// Used ring: le16 flags, le16 idx, {le32 id, le32 len} ring[num], le16 avail_event.
struct UsedRing {
  std::uint16_t *base;
  std::uint16_t *flags() const { return base; }
  std::uint16_t *idx() const { return base + 1; }
  VringUsedElem *entry(unsigned i) const { return reinterpret_cast<VringUsedElem *>(base + 2) + i; }
  std::uint16_t *avail_event(unsigned num) const { return base + 2 + std::size_t{4} * num; }
  static constexpr std::uint64_t bytes(unsigned num) { return 6ULL + 8ULL * num; }
};

// The EVENT_IDX rule (2.7.10): notify iff new_idx has moved past event since old.
constexpr bool need_event(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old) {
  return static_cast<std::uint16_t>(new_idx - event - 1) < static_cast<std::uint16_t>(new_idx - old);
}

} // namespace vb::virtio
