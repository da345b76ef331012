#include "backend_factory.h"

#include "memory/memory_backend.h"
#include "nbd/nbd_backend.h"

#include <stdexcept>

namespace vb {

std::unique_ptr<Backend> make_backend(const DeviceConfig &device) {
  switch (device.backend.type) {
  case BackendConfig::Type::memory:
    // logical-block-size 0 means "the backend's"; a memory disk's own is 512.
    return std::make_unique<MemoryBackend>(device.backend.memory.size,
                                           device.logical_block_size ? device.logical_block_size : 512);
  case BackendConfig::Type::nbd: {
    const NbdBackendConfig &c = device.backend.nbd;
    NbdOptions o;
    o.uri = c.uri;
    o.connections = c.connections;
    o.tls_certificates = c.tls_certificates;
    o.tls_psk_file = c.tls_psk_file;
    o.reconnect_timeout = c.reconnect_timeout;
    o.request_timeout = c.request_timeout;
    o.structured_replies = c.structured_replies;
    return std::make_unique<NbdBackend>(std::move(o));
  }
  case BackendConfig::Type::iscsi:
    break;
  }
  throw std::runtime_error(std::string("backend type '") + to_string(device.backend.type) +
                           "' is not available in this version");
}

} // namespace vb
