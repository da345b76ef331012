// The nbd backend's options (backend.type: nbd in the configuration file, vduse-bridge.yaml(5)).
// The file holds no secrets: TLS keys and certificates are named by path and read when
// connecting, and a URI with a password is refused.
#pragma once

#include "vduse-bridge/backend_module.h"

#include <chrono>
#include <string>

namespace vb {

struct NbdOptions : BackendOptionsOf<NbdOptions> {
  // nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH, nbds+unix://...,
  // nbd+vsock://cid[:port]/export, nbds+vsock://...; as written in the file. Never holds a
  // password, nor the tls-certificates or tls-psk-file query parameters (those are the keys
  // below); nbd+unix and nbds+unix URIs have a socket= query parameter.
  std::string uri;
  unsigned connections = 1; // 1..16; an upper bound, used only if the server offers multi-conn
  // At most one of the two, and only with an nbds scheme; absolute paths, read when connecting.
  std::string tls_certificates; // a directory of X.509 certificates and keys
  std::string tls_psk_file;     // a PSK key file (psktool format)
  // How long I/O is held while the server is unreachable before it fails; 0 = fail at once;
  // forever (the key's "forever": vb::forever_duration, milliseconds::max()) = hold it until the peer is back.
  std::chrono::milliseconds reconnect_timeout{60000};
  // A request without a reply by then counts the connection as dead; 0 (also
  // written "forever") = no timeout (the
  // default: NBD cannot stop a slow server from running the first copy after the resent one).
  // Also bounds the handshake (30 s when 0).
  std::chrono::milliseconds request_timeout{0};
  // Ask the server for structured replies. Off by default: a simple reply is one header and the
  // data, a structured one takes twice the receive calls, and nothing here needs them (no block
  // status, no DF reads); measured +7% IOPS at 4k qd1 and +13% at qd32 without them.
  bool structured_replies = false;
  // Plaintext connections: after libnbd's handshake the daemon sends and receives the commands
  // itself (nbd_transport.h): requests of one drain in one sendmsg, many replies per receive.
  bool direct_transmission = true;
  // How often a short extra connection asks the server for the export's size, so a resized
  // export resizes the disk without waiting for a reconnect; 0 = only on reconnect.
  std::chrono::milliseconds resize_poll_interval{30000};
  bool operator==(const NbdOptions &) const = default;
};

extern const BackendModule nbd_backend_module;

// Throws std::invalid_argument explaining why a URI cannot be used (the same checks, and the same
// words, as the configuration file's uri key): credentials in it, a secret-bearing query
// parameter, a scheme that is not NBD's, a unix URI without its socket.
void check_nbd_uri(const std::string &uri);

} // namespace vb
