// What the virtio-blk device offers the driver: the parameters fixed when the device is created
// (from the backend's capabilities and the device's configuration), the feature bits, and the
// device configuration space (struct virtio_blk_config) as little-endian bytes.
//
// Pure functions, no I/O; any thread may call them. make_device_params() is setup code and may
// throw; the others never throw.
#pragma once

#include "vduse-bridge/backend.h"

#include <array>
#include <cstdint>
#include <linux/virtio_blk.h>
#include <string>
#include <vector>

namespace vb::blk {

// virtio-blk addresses the disk in 512-byte sectors whatever the logical block size.
inline constexpr unsigned kSectorShift = 9;
inline constexpr std::uint32_t kSectorSize = 1U << kSectorShift;
inline constexpr std::size_t kIdBytes = VIRTIO_BLK_ID_BYTES;
// The config space as the bookworm (6.1) uAPI defines it, which is what the 6.12 driver reads.
inline constexpr std::size_t kConfigSize = sizeof(virtio_blk_config);
// Where a resize writes the new capacity (DEV_SET_CONFIG, 8 bytes little-endian).
inline constexpr std::uint32_t kCapacityOffset = 0;

// The per-device choices from the configuration file.
struct DeviceSettings {
  unsigned queues = 1;             // 1..65535 virtqueues; more than one offers VIRTIO_BLK_F_MQ
  unsigned queue_size = 256;       // ring size offered to the driver, 2..32768
  unsigned logical_block_size = 0; // power of two >= 512; 0 = the backend's
  bool read_only = false;          // read-only even if the backend is writable
  std::string serial;              // GET_ID answer: printable ASCII, <= 20 bytes
  std::uint32_t size_max = 0;      // largest segment in bytes; 0 = kDefaultSizeMax
};

// What one request may carry, advertised and enforced (the guest decides request sizes, and a
// few descriptors naming one buffer would otherwise make one request as large as 4 GiB): at most
// kMaxSegments segments of at most size_max bytes, i.e. 7.9 MiB of data with the default.
inline constexpr std::uint32_t kDefaultSizeMax = 64 * 1024;
inline constexpr std::uint32_t kMaxSegments = 126;

// Everything the virtio-blk layer needs about one device. Constant after creation, except
// capacity, which the owner may change on resize (then SET_CONFIG with capacity_le()); the
// queue threads read it, so a resize must reach them the way the owner shares other state.
struct DeviceParams {
  std::uint64_t capacity = 0;              // bytes, a multiple of logical_block_size
  std::uint32_t logical_block_size = 512;  // power of two, >= 512
  std::uint32_t physical_block_size = 512; // >= logical_block_size
  std::uint32_t opt_io_size = 0;           // bytes, a multiple of logical_block_size; 0 = unknown
  std::uint16_t num_queues = 1;
  std::uint16_t queue_size = 256;
  std::uint32_t seg_max = kMaxSegments;     // data segments per request the driver may use
  std::uint32_t size_max = kDefaultSizeMax; // bytes per segment (SIZE_MAX)
  // Data bytes one read or write may carry (seg_max * size_max): more is failed with IOERR.
  std::uint32_t max_data_bytes = kMaxSegments * kDefaultSizeMax;
  bool read_only = false;
  bool flush = false;                         // offer FLUSH (backend has a volatile cache)
  bool discard = false;                       // offer DISCARD
  bool write_zeroes = false;                  // offer WRITE_ZEROES
  bool zero_unmap = false;                    // WRITE_ZEROES with UNMAP may deallocate
  std::uint32_t max_discard_sectors = 0;      // per segment, 512-byte sectors
  std::uint32_t max_write_zeroes_sectors = 0; // per segment, 512-byte sectors
  std::array<char, kIdBytes> serial{};        // NUL padded; no terminator when 20 bytes long
};

// Combines the backend's capabilities with the device settings. Read-only if either says so;
// discard and write-zeroes are offered only on a writable device whose backend can do them.
// The capacity is the backend's size rounded down to whole logical blocks (it may be 0).
// Throws std::invalid_argument when a setting cannot describe a device (queues outside
// 1..65535, a queue size that is not a power of two in 2..32768, a block size that is not a
// power of two in 512..65536 or is smaller than the backend's, a serial longer than 20 bytes or
// not printable ASCII): the configuration step should have caught these with a message naming
// the file and line; this is the last line of defence.
DeviceParams make_device_params(const BackendCapabilities &caps, const DeviceSettings &settings);

// The feature bits to offer (VDUSE_CREATE_DEV): VERSION_1, ACCESS_PLATFORM, INDIRECT_DESC,
// EVENT_IDX, SEG_MAX, BLK_SIZE, TOPOLOGY, and FLUSH, RO, DISCARD, WRITE_ZEROES, MQ, SIZE_MAX as
// params say. Never CONFIG_WCE (VDUSE ignores config writes), RING_PACKED, GEOMETRY or
// SECURE_ERASE.
std::uint64_t device_features(const DeviceParams &params) noexcept;

// struct virtio_blk_config, little-endian, kConfigSize bytes.
std::vector<std::uint8_t> config_space(const DeviceParams &params);

// The capacity field (512-byte sectors, little-endian) for a device of capacity_bytes, to write
// at kCapacityOffset on resize.
std::array<std::uint8_t, 8> capacity_le(std::uint64_t capacity_bytes) noexcept;

} // namespace vb::blk
