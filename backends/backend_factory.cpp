#include "backend_factory.h"

#include "iscsi/iscsi_backend.h"
#include "memory/memory_backend.h"
#include "nbd/nbd_backend.h"

#include <stdexcept>

namespace vb {

std::unique_ptr<Backend> make_backend(const DeviceConfig &device) {
  switch (device.backend.type) {
  case BackendConfig::Type::memory:
    // logical-block-size 0 means "the backend's"; a memory disk's own is 512.
    // Contents in /dev/shm, so that the disk survives a daemon restart as a tmpfs would.
    return std::make_unique<MemoryBackend>(device.backend.memory.size,
                                           device.logical_block_size ? device.logical_block_size : 512,
                                           std::string(kMemoryDiskDir) + "/" + device.name + ".mem");
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
    o.resize_poll_interval = c.resize_poll_interval;
    return std::make_unique<NbdBackend>(std::move(o));
  }
  case BackendConfig::Type::iscsi: {
    const IscsiBackendConfig &c = device.backend.iscsi;
    IscsiOptions o;
    o.uri = c.uri;
    o.initiator_name = c.initiator_name;
    o.chap_username = c.chap.username;
    o.chap_password_file = c.chap.password_file;
    o.target_username = c.chap.target_username;
    o.target_password_file = c.chap.target_password_file;
    switch (c.header_digest) {
    case IscsiBackendConfig::HeaderDigest::none:
      o.header_digest = IscsiOptions::HeaderDigest::none;
      break;
    case IscsiBackendConfig::HeaderDigest::crc32c:
      o.header_digest = IscsiOptions::HeaderDigest::crc32c;
      break;
    case IscsiBackendConfig::HeaderDigest::prefer_crc32c:
      o.header_digest = IscsiOptions::HeaderDigest::prefer_crc32c;
      break;
    }
    o.reconnect_timeout = c.reconnect_timeout;
    o.request_timeout = c.request_timeout;
    return std::make_unique<IscsiBackend>(std::move(o));
  }
  }
  throw std::runtime_error(std::string("backend type '") + to_string(device.backend.type) +
                           "' is not available in this version");
}

} // namespace vb
