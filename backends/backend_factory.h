// Builds the backend a device's configuration asks for.
#pragma once

#include "config/config.h"
#include "vduse-bridge/backend.h"

#include <memory>

namespace vb {

// Where memory disks keep their contents (NAME.mem), so they survive a daemon restart.
inline constexpr const char *kMemoryDiskDir = "/dev/shm/vduse-bridge";

// Not yet opened (Backend::open() connects). Throws if the type is not available.
std::unique_ptr<Backend> make_backend(const DeviceConfig &device);

} // namespace vb
