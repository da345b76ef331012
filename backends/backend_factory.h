// Builds the backend a device's configuration asks for, through its backend module.
#pragma once

#include "config/config.h"
#include "vduse-bridge/backend.h"

#include <memory>

namespace vb {

// Not yet opened (Backend::open() connects). May throw.
std::unique_ptr<Backend> make_backend(const DeviceConfig &device);

} // namespace vb
