#include "backend_factory.h"

#include "memory/memory_backend.h"

#include <stdexcept>

namespace vb {

std::unique_ptr<Backend> make_backend(const DeviceConfig &device) {
  switch (device.backend.type) {
  case BackendConfig::Type::memory:
    return std::make_unique<MemoryBackend>(device.backend.memory.size, device.logical_block_size);
  case BackendConfig::Type::nbd:
  case BackendConfig::Type::iscsi:
    break;
  }
  throw std::runtime_error(std::string("backend type '") + to_string(device.backend.type) +
                           "' is not available in this version");
}

} // namespace vb
