// The byte layout of a device's state file (NAME.state, see recovery_state.h).
//
// The file is read only by a later vduse-bridge process on the same machine (the daemon's
// successor after a crash or restart), never copied elsewhere: fields are in the host's byte
// order and natural alignment, and the byte-order mark and the layout version refuse a file from
// another machine or an incompatible build instead of misreading it. Change anything below and
// bump kVersion.
//
//   offset  size  file header (all of it written once, before the file gets its name)
//   0       8     magic "VBSTATE\0"
//   8       4     byte-order mark 0x01020304 as the host stores it
//   12      4     layout version
//   16      4     header size (4096), queue header size (64), entry size (16), queue stride:
//   ...           4 bytes each, so that a file with other sizes is refused, not misread
//   32      8     file size
//   40      4     number of queues
//   44      4     queue size (the largest ring: entries per queue)
//   48      8     capacity in bytes (the only header field that changes: resize)
//   56      4     logical block size
//   60      4     reserved, 0
//   64      8     virtio features offered
//   72      32    backend kind, NUL-padded ("nbd")
//   104     256   device name, NUL-padded
//   360     256   backend identity, NUL-padded (e.g. the NBD URI, never a secret)
//   616     ...   zero up to 4096
//
//   4096 + i * queue stride: queue i (64-byte aligned, so queues never share a cache line)
//   0       4     started: 1 between start() and stop()
//   4       4     ring size of the current start (<= queue size)
//   8       8     pop sequence: the number the next pop gets; low 16 bits = next avail index
//   16      8     start sequence: the pop sequence start() set (every counter is >= it)
//   24      8     last batch: bit 32 valid, bits 16..31 the used index before, bits 0..15 head
//   32      4     used index the log last recorded as published
//   36      4     baseline: (pop sequence - used index - heads in flight) mod 2^16, set by start()
//   40      24    reserved, 0
//   64 + 16 * head: entry of that head: 8 order counter, 4 in-flight flag (0/1), 4 reserved
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace vb::recovery::layout {

inline constexpr char kMagic[8] = {'V', 'B', 'S', 'T', 'A', 'T', 'E', '\0'};
inline constexpr std::uint32_t kByteOrderMark = 0x01020304;
inline constexpr std::uint32_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 4096;
inline constexpr std::size_t kBackendKindSize = 32;
inline constexpr std::size_t kNameSize = 256;
inline constexpr std::size_t kBackendIdentitySize = 256;
inline constexpr std::uint32_t kMaxQueues = 1024;
inline constexpr std::uint32_t kMaxQueueSize = 32768; // the split ring's limit

struct FileHeader {
  char magic[8];
  std::uint32_t byte_order;
  std::uint32_t version;
  std::uint32_t header_size;
  std::uint32_t queue_header_size;
  std::uint32_t entry_size;
  std::uint32_t queue_stride;
  std::uint64_t file_size;
  std::uint32_t num_queues;
  std::uint32_t queue_size;
  std::uint64_t capacity;
  std::uint32_t logical_block_size;
  std::uint32_t reserved0;
  std::uint64_t features;
  char backend_kind[kBackendKindSize];
  char name[kNameSize];
  char backend_identity[kBackendIdentitySize];
};
static_assert(offsetof(FileHeader, byte_order) == 8);
static_assert(offsetof(FileHeader, version) == 12);
static_assert(offsetof(FileHeader, file_size) == 32);
static_assert(offsetof(FileHeader, capacity) == 48);
static_assert(offsetof(FileHeader, features) == 64);
static_assert(offsetof(FileHeader, backend_kind) == 72);
static_assert(offsetof(FileHeader, name) == 104);
static_assert(offsetof(FileHeader, backend_identity) == 360);
static_assert(sizeof(FileHeader) == 616 && sizeof(FileHeader) <= kHeaderSize);

struct alignas(64) QueueHeader {
  std::uint32_t started;
  std::uint32_t ring_size;
  std::uint64_t pop_seq;
  std::uint64_t start_seq;
  std::uint64_t batch;
  std::uint32_t used_idx;
  std::uint32_t baseline;
  std::uint8_t reserved[24];
};
static_assert(offsetof(QueueHeader, pop_seq) == 8);
static_assert(offsetof(QueueHeader, batch) == 24);
static_assert(offsetof(QueueHeader, used_idx) == 32);
static_assert(sizeof(QueueHeader) == 64);

struct Entry {
  std::uint64_t counter;
  std::uint32_t in_flight;
  std::uint32_t reserved;
};
static_assert(sizeof(Entry) == 16);

// Stores to the mapped file are single aligned atomic stores: they must be lock-free to mean the
// same thing to another process.
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint64_t>::required_alignment <= alignof(std::uint64_t));

constexpr std::uint64_t queue_stride(std::uint32_t queue_size) {
  return (sizeof(QueueHeader) + sizeof(Entry) * std::uint64_t{queue_size} + 63) / 64 * 64;
}
constexpr std::uint64_t queue_offset(std::uint32_t index, std::uint32_t queue_size) {
  return kHeaderSize + index * queue_stride(queue_size);
}
constexpr std::uint64_t file_size(std::uint32_t num_queues, std::uint32_t queue_size) {
  return queue_offset(num_queues, queue_size);
}

inline constexpr std::uint64_t kBatchValid = 1ULL << 32;
constexpr std::uint64_t pack_batch(std::uint16_t head, std::uint16_t used_before) {
  return kBatchValid | (std::uint64_t{used_before} << 16) | head;
}
constexpr bool batch_valid(std::uint64_t batch) { return (batch & kBatchValid) != 0; }
constexpr std::uint16_t batch_head(std::uint64_t batch) { return static_cast<std::uint16_t>(batch); }
constexpr std::uint16_t batch_used_before(std::uint64_t batch) { return static_cast<std::uint16_t>(batch >> 16); }

} // namespace vb::recovery::layout
