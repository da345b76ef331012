// The memory backend's options (backend.type: memory in the configuration file).
#pragma once

#include "vduse-bridge/backend_module.h"

#include <cstdint>

namespace vb {

// Where memory disks keep their contents (NAME.mem), so they survive a daemon restart.
inline constexpr const char *kMemoryDiskDir = "/dev/shm/vduse-bridge";

struct MemoryOptions : BackendOptionsOf<MemoryOptions> {
  // bytes; > 0, a multiple of the device's logical block size (512 when the device gives none)
  std::uint64_t size = 0;
  bool operator==(const MemoryOptions &) const = default;
};

extern const BackendModule memory_backend_module;

} // namespace vb
