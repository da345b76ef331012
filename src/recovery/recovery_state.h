// The daemon's crash-recovery state for one device: DIR/NAME.state (DIR is /run/vduse-bridge by
// default, a tmpfs), mapped MAP_SHARED for the daemon's lifetime. It holds the device's identity,
// so that a restarted daemon serves the device the kernel still has only with the parameters it
// was created with (the kernel cannot report them back), and one in-flight log per queue
// (queue_log.h). The file outlives the daemon on purpose; remove() it on a clean teardown, when
// the device is destroyed. Layout: state_layout.h.
//
// The file is created complete under a temporary name and then renamed into place, so a reader
// never sees a half-written header; it is mode 0600, opened with O_CLOEXEC | O_NOFOLLOW, and
// held with an exclusive flock() so a second daemon for the same device is refused (the lock
// goes away with the process, however it dies).
//
// Threading: open, remove and set_capacity belong to the control thread; each QueueLog to its
// queue's thread (see queue_log.h).
#pragma once

#include "recovery/queue_log.h"
#include "recovery/state_error.h"

#include <cstdint>
#include <memory>
#include <string>

namespace vb::recovery {

inline constexpr const char *kDefaultStateDir = "/run/vduse-bridge";

// What the device is; all of it but the capacity must match for a restarted daemon to take the
// device over (a storage resized while no daemon ran is a resize, not another device).
struct DeviceIdentity {
  std::string name;               // the VDUSE name: 1..245 of [A-Za-z0-9_-]
  std::uint32_t num_queues = 1;   // 1..1024
  std::uint16_t queue_size = 256; // the largest ring: a power of two up to 32768
  std::uint64_t capacity = 0;     // bytes
  std::uint32_t logical_block_size = 512;
  std::uint64_t features = 0;   // virtio features offered
  std::string backend_kind;     // "memory", "nbd", "iscsi": at most 31 bytes
  std::string backend_identity; // what the data is, e.g. the URI without secrets: at most 255 bytes

  bool operator==(const DeviceIdentity &) const = default;
};

class RecoveryState {
public:
  // Opens DIR/NAME.state, or creates it (and DIR, mode 0700, if missing) with every queue not
  // started. An existing file must be a state file of this layout version for exactly this
  // identity. Throws std::invalid_argument for an identity that cannot be stored, IdentityMismatch
  // naming each field that differs, StateError for anything else (not a state file, another
  // version or byte order, truncated, corrupt header, in use by another process, I/O errors).
  // Nothing is written to an existing file that is refused. For an existing file identity()
  // has the capacity recorded there (the device's), which may differ from identity.capacity.
  static std::unique_ptr<RecoveryState> open_or_create(const std::string &dir, const DeviceIdentity &identity);

  // Unmaps and closes; the file stays for a successor.
  ~RecoveryState();
  RecoveryState(const RecoveryState &) = delete;
  RecoveryState &operator=(const RecoveryState &) = delete;

  // True if this call created the file: nothing to recover. False: a predecessor's file; call
  // recover() on each queue before serving it.
  bool created() const noexcept { return created_; }
  const std::string &path() const noexcept { return path_; }
  const DeviceIdentity &identity() const noexcept { return identity_; }
  unsigned num_queues() const noexcept { return identity_.num_queues; }
  // index < num_queues(), else std::out_of_range.
  QueueLog &queue(unsigned index);

  // The device was resized (SET_CONFIG): the file follows, so a successor compares against the
  // capacity the kernel now has.
  void set_capacity(std::uint64_t bytes) noexcept;

  // Clean teardown (the device is being destroyed): unlinks the file. The mapping stays valid
  // until this object is destroyed. Throws StateError if unlink fails (other than ENOENT).
  void remove();
  // Same, without an open state; false if there was no file.
  static bool remove_file(const std::string &dir, const std::string &name);

  static std::string path_for(const std::string &dir, const std::string &name);

private:
  RecoveryState(std::string path, int fd, void *map, std::size_t size, const DeviceIdentity &identity, bool created);

  std::string path_;
  int fd_ = -1; // holds the flock
  void *map_ = nullptr;
  std::size_t size_ = 0;
  DeviceIdentity identity_;
  bool created_ = false;
  std::unique_ptr<QueueLog[]> queues_;
};

} // namespace vb::recovery
