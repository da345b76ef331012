// The configuration file (/etc/vduse-bridge/vduse-bridge.yaml, man vduse-bridge.yaml(5)):
// which virtio-blk devices to create and which backend serves each.
//
// Loading is setup code: it may throw, and only ConfigError. The file is parsed in two steps:
// first its shape (maps, sequences, known keys, each key once), then the value of every key,
// so that each problem is reported with the file, line, column and dotted key it is about.
// All functions here are pure apart from load_config() reading the file; any thread may call them.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vb {

// A configuration that cannot be used. what() is one line:
//   FILE:LINE:COLUMN: KEY: expected ..., got ...
// LINE and COLUMN are 1-based. KEY is a dotted path such as devices[0].backend.size; it is
// empty (and left out of what()) for problems with the file as a whole, such as a YAML syntax
// error. line() is 0 (and LINE:COLUMN left out) when no position applies: an unreadable file.
class ConfigError : public std::runtime_error {
public:
  ConfigError(const std::string &file, int line, int column, const std::string &key, const std::string &problem);

  int line() const noexcept { return line_; }
  int column() const noexcept { return column_; }
  const std::string &key() const noexcept { return key_; }

private:
  int line_;
  int column_;
  std::string key_;
};

struct MemoryBackendConfig {
  // bytes; > 0, a multiple of the device's logical block size (512 when the device gives none)
  std::uint64_t size = 0;
  bool operator==(const MemoryBackendConfig &) const = default;
};

// A disk served by an NBD server. The file holds no secrets: TLS keys and certificates are
// named by path here and read when connecting, and a URI with a password is refused.
struct NbdBackendConfig {
  // nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH, nbds+unix://...,
  // nbd+vsock://cid[:port]/export, nbds+vsock://...; as written in the file. Never holds a
  // password, nor the tls-certificates or tls-psk-file query parameters (those are the keys
  // below); nbd+unix and nbds+unix URIs have a socket= query parameter.
  std::string uri;
  unsigned connections = 1; // 1..16; an upper bound, used only if the server offers multi-conn
  // At most one of the two, and only with an nbds scheme; absolute paths, not checked to exist
  // (that happens when connecting). Empty when not given.
  std::string tls_certificates; // a directory of X.509 certificates and keys
  std::string tls_psk_file;     // a PSK key file (psktool format)
  // How long I/O is held while the server is unreachable before it fails; 0 = fail at once.
  std::chrono::milliseconds reconnect_timeout{60000};
  // A request without a reply by then counts the connection as dead; 0 = no timeout (the
  // default: NBD cannot stop a slow server from running the first copy after the resent one).
  std::chrono::milliseconds request_timeout{0};
  // Ask the server for structured replies. Off by default: a simple reply is one header and the
  // data, a structured one takes twice the receive calls, and nothing here needs them (no block
  // status, no DF reads); measured +7% IOPS at 4k qd1 and +13% at qd32 without them.
  bool structured_replies = false;
  // How often a short extra connection asks the server for the export's size, so a resized
  // export resizes the disk without waiting for a reconnect; 0 = only on reconnect.
  std::chrono::milliseconds resize_poll_interval{30000};
  bool operator==(const NbdBackendConfig &) const = default;
};

// CHAP for an iSCSI login: the names are here, the passwords in files read when connecting.
struct IscsiChapConfig {
  std::string username;      // empty when the backend has no chap map (no CHAP)
  std::string password_file; // absolute path; given whenever username is
  // Mutual CHAP (the target proves itself too): both or neither; only with the two above.
  std::string target_username;
  std::string target_password_file;
  bool operator==(const IscsiChapConfig &) const = default;
};

// A LUN of an iSCSI target (libiscsi). Like nbd, the file holds no secrets: a URI with user
// information is refused, and CHAP passwords come from the files named in chap.
struct IscsiBackendConfig {
  enum class HeaderDigest { none, crc32c, prefer_crc32c };

  // iscsi://host[:port]/target-name/lun as written: no user information, query or fragment; the
  // host may be an IPv6 address in brackets; the LUN is 0..16383.
  std::string uri;
  // The initiator's iSCSI name (iqn., eui. or naa.); empty when not given, meaning one derived
  // from the host name when connecting.
  std::string initiator_name;
  IscsiChapConfig chap;
  HeaderDigest header_digest = HeaderDigest::none; // prefer-crc32c: crc32c if the target agrees
  // How long I/O is held while the target is unreachable before it fails; 0 = fail at once.
  std::chrono::milliseconds reconnect_timeout{60000};
  // A command without a response by then counts the session as dead; 0 = no timeout (the
  // default: only a target that reinstates sessions ends the first copy's session).
  std::chrono::milliseconds request_timeout{0};
  bool operator==(const IscsiBackendConfig &) const = default;
};

struct BackendConfig {
  enum class Type { memory, nbd, iscsi };
  Type type = Type::memory;
  MemoryBackendConfig memory; // meaningful when type == memory
  NbdBackendConfig nbd;       // meaningful when type == nbd
  IscsiBackendConfig iscsi;   // meaningful when type == iscsi
  bool operator==(const BackendConfig &) const = default;
};

struct DeviceConfig {
  enum class Attach { virtio_vdpa, vhost_vdpa, none };

  std::string name; // VDUSE and vDPA device name: [A-Za-z0-9_-], 1..64 bytes
  BackendConfig backend;
  unsigned queues = 1;       // 1..64; more than one offers VIRTIO_BLK_F_MQ
  unsigned queue_size = 256; // power of two, 2..1024
  // A power of two, 512..4096, when the file gives one; 0 when it does not, meaning the
  // backend's own (an NBD server or an iSCSI LUN may require 4096; the memory backend's is 512).
  unsigned logical_block_size = 0;
  bool read_only = false;
  std::string serial; // printable ASCII, <= 20 bytes; defaults to name cut to 20 bytes
  Attach attach = Attach::virtio_vdpa;
  // The kernel's wait for an answer to a control message (VDUSE msg_timeout). When it runs out
  // the device is broken for good, so the default 0 waits forever: a daemon that is restarting
  // (or stopped in a debugger) pauses the disk instead of killing it.
  std::chrono::seconds control_timeout{0};
  int line = 0; // where the device starts in the file, for later messages about it

  // The same device settings (where they are in the file does not count).
  bool same_settings(const DeviceConfig &other) const;
};

struct Config {
  std::string path;                  // the file it came from (the source name for parse_config)
  std::vector<DeviceConfig> devices; // at least one, names unique
};

// Reads and parses the file. Throws ConfigError naming the file (with the errno text when it
// cannot be read) or the file, line, column and key of the first problem in it.
Config load_config(const std::string &path);

// Parses configuration text; source_name stands for the file in messages and Config::path.
Config parse_config(const std::string &text, const std::string &source_name);

// Every key the parser accepts (top level, device, backend of any type, chap), each once: what
// the documentation must cover (a test checks vduse-bridge.yaml(5) names them all).
std::vector<std::string> config_keys();

// "virtio-vdpa", "memory": the spellings used in the file, for logs.
const char *to_string(DeviceConfig::Attach attach) noexcept;
const char *to_string(BackendConfig::Type type) noexcept;

} // namespace vb
