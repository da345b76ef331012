#include "virtio_blk/blk_device.h"

#include "virtio/chain.h"
#include "virtio/ring.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <endian.h>
#include <limits>
#include <linux/virtio_config.h>
#include <stdexcept>

namespace vb::blk {
namespace {

constexpr std::uint64_t bit(unsigned n) noexcept { return std::uint64_t{1} << n; }

// The largest per-segment discard/write-zeroes size the device advertises, in sectors: the
// backend's limit, or else what still fits a 32-bit byte count (NBD and SCSI requests carry
// one), rounded down to whole logical blocks.
std::uint32_t max_zeroing_sectors(std::uint32_t backend_limit, std::uint32_t logical_block_size) noexcept {
  std::uint32_t bytes = backend_limit != 0 ? backend_limit : std::numeric_limits<std::uint32_t>::max();
  bytes -= bytes % logical_block_size;
  return bytes >> kSectorShift;
}

} // namespace

DeviceParams make_device_params(const BackendCapabilities &caps, const DeviceSettings &settings) {
  DeviceParams p;

  if (settings.queues == 0 || settings.queues > std::numeric_limits<std::uint16_t>::max())
    throw std::invalid_argument("queues must be 1..65535, got " + std::to_string(settings.queues));
  p.num_queues = static_cast<std::uint16_t>(settings.queues);

  // A split ring is a power of two no larger than 32768 (virtio 1.2, 2.7).
  const unsigned qs = settings.queue_size;
  if (qs < 2 || qs > 32768 || !std::has_single_bit(qs))
    throw std::invalid_argument("queue_size must be a power of two in 2..32768, got " + std::to_string(qs));
  p.queue_size = static_cast<std::uint16_t>(qs);
  // Linux takes seg_max as data segments per request; the header and the status byte take two
  // more descriptors, and a chain may not exceed the ring (nor kMaxChainDescriptors).
  p.seg_max = std::clamp<std::uint32_t>(qs - 2, 1, kMaxSegments);
  p.size_max = settings.size_max != 0 ? settings.size_max : kDefaultSizeMax;
  if (p.size_max < 4096)
    throw std::invalid_argument("size_max must be at least 4096, got " + std::to_string(p.size_max));
  p.max_data_bytes = p.seg_max * p.size_max;

  const unsigned lbs = settings.logical_block_size != 0 ? settings.logical_block_size : caps.logical_block_size;
  if (lbs < kSectorSize || lbs > 65536 || !std::has_single_bit(lbs))
    throw std::invalid_argument("logical block size must be a power of two in 512..65536, got " + std::to_string(lbs));
  // A smaller block than the backend's would pass requests the backend cannot serve.
  if (lbs < caps.logical_block_size)
    throw std::invalid_argument("logical block size " + std::to_string(lbs) + " is smaller than the backend's " +
                                std::to_string(caps.logical_block_size));
  p.logical_block_size = lbs;
  p.physical_block_size = std::max(caps.physical_block_size, p.logical_block_size);
  p.opt_io_size = caps.optimal_io_size - caps.optimal_io_size % lbs;
  p.capacity = caps.size - caps.size % lbs;

  if (settings.serial.size() > kIdBytes)
    throw std::invalid_argument("serial must be at most 20 bytes, got " + std::to_string(settings.serial.size()));
  for (char c : settings.serial)
    if (c < 0x20 || c > 0x7e)
      throw std::invalid_argument("serial must be printable ASCII");
  std::copy(settings.serial.begin(), settings.serial.end(), p.serial.begin());

  p.read_only = settings.read_only || caps.read_only;
  // FLUSH is harmless on a read-only device and keeps its meaning (the driver may still flush).
  p.flush = caps.can_flush;
  // Nothing to gain from advertising write-like operations on a read-only disk.
  const std::uint32_t zeroing_sectors = max_zeroing_sectors(caps.max_discard, lbs);
  const bool can_zero = !p.read_only && zeroing_sectors != 0;
  p.discard = can_zero && caps.can_discard;
  p.write_zeroes = can_zero && caps.can_write_zeroes;
  p.zero_unmap = p.write_zeroes && caps.can_zero_unmap;
  p.max_discard_sectors = p.discard ? zeroing_sectors : 0;
  p.max_write_zeroes_sectors = p.write_zeroes ? zeroing_sectors : 0;
  return p;
}

std::uint64_t device_features(const DeviceParams &params) noexcept {
  std::uint64_t f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM) | bit(virtio::kFeatureIndirectDesc) |
                    bit(virtio::kFeatureEventIdx) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) |
                    bit(VIRTIO_BLK_F_TOPOLOGY);
  if (params.flush)
    f |= bit(VIRTIO_BLK_F_FLUSH);
  if (params.read_only)
    f |= bit(VIRTIO_BLK_F_RO);
  if (params.discard)
    f |= bit(VIRTIO_BLK_F_DISCARD);
  if (params.write_zeroes)
    f |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
  if (params.num_queues > 1)
    f |= bit(VIRTIO_BLK_F_MQ);
  if (params.size_max > 0)
    f |= bit(VIRTIO_BLK_F_SIZE_MAX);
  return f;
}

std::vector<std::uint8_t> config_space(const DeviceParams &params) {
  virtio_blk_config c;
  std::memset(&c, 0, sizeof c); // geometry, writeback, padding and secure erase stay zero
  const std::uint32_t lbs = std::max(params.logical_block_size, kSectorSize);

  c.capacity = htole64(params.capacity >> kSectorShift);
  c.size_max = htole32(params.size_max);
  c.seg_max = htole32(params.seg_max);
  c.blk_size = htole32(lbs);
  // Topology, in logical blocks. An I/O smaller than a physical block costs a read-modify-write,
  // so the physical block is also the minimum efficient I/O.
  const std::uint32_t blocks_per_physical = std::max<std::uint32_t>(params.physical_block_size / lbs, 1);
  c.physical_block_exp = static_cast<std::uint8_t>(std::bit_width(blocks_per_physical) - 1);
  c.alignment_offset = 0;
  c.min_io_size = htole16(static_cast<std::uint16_t>(std::min<std::uint32_t>(blocks_per_physical, 0xffff)));
  c.opt_io_size = htole32(params.opt_io_size / lbs);
  c.num_queues = htole16(params.num_queues);
  if (params.discard) {
    c.max_discard_sectors = htole32(params.max_discard_sectors);
    c.max_discard_seg = htole32(1);
    c.discard_sector_alignment = htole32(lbs >> kSectorShift);
  }
  if (params.write_zeroes) {
    c.max_write_zeroes_sectors = htole32(params.max_write_zeroes_sectors);
    c.max_write_zeroes_seg = htole32(1);
    c.write_zeroes_may_unmap = params.zero_unmap ? 1 : 0;
  }

  std::vector<std::uint8_t> bytes(sizeof c);
  std::memcpy(bytes.data(), &c, sizeof c);
  return bytes;
}

std::array<std::uint8_t, 8> capacity_le(std::uint64_t capacity_bytes) noexcept {
  const std::uint64_t le = htole64(capacity_bytes >> kSectorShift);
  std::array<std::uint8_t, 8> out{};
  std::memcpy(out.data(), &le, sizeof le);
  return out;
}

} // namespace vb::blk
