// The configuration file (/etc/vduse-bridge/vduse-bridge.yaml, man vduse-bridge.yaml(5)):
// which virtio-blk devices to create and which backend serves each.
//
// Loading is setup code: it may throw, and only ConfigError. The file is parsed in two steps:
// first its shape (maps, sequences, known keys, each key once), then the value of every key,
// so that each problem is reported with the file, line, column and dotted key it is about.
// All functions here are pure apart from load_config() reading the file; any thread may call them.
#pragma once

#include "vduse-bridge/backend_module.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace vb {

// ConfigError (a configuration that cannot be used): vduse-bridge/config_checker.h.

// A device's backend: which module (backend.type) and the options its keys gave, parsed by that
// module (backends/NAME/NAME_options.h has the struct). Copies share the options.
struct BackendConfig {
  const BackendModule *module = nullptr;
  std::shared_ptr<const BackendOptions> options;

  std::string_view type() const noexcept { return module ? module->type : std::string_view(); }
  // The options as the module's struct; throws std::bad_cast for another module's.
  template <typename T> const T &as() const { return dynamic_cast<const T &>(*options); }
  bool operator==(const BackendConfig &o) const {
    return module == o.module && (options == o.options || (options && o.options && options->same_as(*o.options)));
  }
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
  // 0, or how long each queue's thread keeps polling its ring and its backend's events after
  // the last request instead of sleeping (microseconds; at most max_busy_poll_us): fewer wake-ups
  // per request for a core kept busy.
  std::chrono::microseconds busy_poll{0};
  int line = 0;     // where the device starts in the file, for later messages about it
  std::string file; // the file it is in: the main one or a drop-in (load_config, check_config)

  // The same device settings (where they are in the file does not count).
  bool same_settings(const DeviceConfig &other) const;
};

struct Config {
  std::string path;                  // the file it came from (the source name for parse_config)
  std::vector<DeviceConfig> devices; // names unique (across drop-ins too); may be empty
};

// What checking a file found: the configuration, or (when it cannot be used) every problem in
// it, in file order, one ConfigError each (FILE:LINE:COLUMN: KEY: ...). One pass finds them all:
// each key is checked even when another failed; only a problem with the document as a whole (a
// YAML syntax error, no devices) or an unreadable file stops the check, as the only error.
struct ConfigCheck {
  std::optional<Config> config; // set exactly when errors is empty
  std::vector<ConfigError> errors;
};

// What `vduse-bridge --check` reports: the file read and checked, never throwing ConfigError;
// then its drop-in directory's files (dropin_dir), each a configuration file of its own, whose
// devices are added in file-name order (a name defined twice is an error naming both places).
ConfigCheck check_config(const std::string &path);

// The drop-in directory of a main file: /etc/vduse-bridge/vduse-bridge.yaml ->
// /etc/vduse-bridge/vduse-bridge.d; files in it named *.yaml count (`vduse-bridge add` writes
// NAME.yaml there).
std::string dropin_dir(const std::string &path);
ConfigCheck check_config_text(const std::string &text, const std::string &source_name);

// Reads and parses the file and its drop-ins (as check_config), for the daemon (which refuses to start on any problem).
// Throws ConfigError naming the file (with the errno text when it cannot be read), or the file, line, column and key of
// the problem; with several, one ConfigError lists them all, a line each (what() joins them with '\n'; count() says how
// many).
Config load_config(const std::string &path);

// Parses configuration text; source_name stands for the file in messages and Config::path.
Config parse_config(const std::string &text, const std::string &source_name);

// The pre-flight checks of `vduse-bridge --check` on a configuration that parsed: what each
// device's backend needs from this machine (secret files present, regular, readable by us and
// not readable by group or others; TLS certificate directories complete; a unix socket's
// directory; a backing file's directory). The daemon calls it at start-up too and logs the
// findings as warnings. Each finding's key is the full dotted key and its message one line:
//   FILE:LINE: devices[0].backend.tls-psk-file: /etc/x is readable by its group (mode 0640): ...
// (LINE: where the device starts). Never throws for what it finds.
std::vector<PreflightFinding> preflight_config(const Config &config);

// The host's side: /dev/vduse/control exists, and the kernel modules vduse and virtio_vdpa
// (vhost_vdpa when a device has attach: vhost-vdpa) are loaded (/sys/module/NAME) or loadable
// (in /lib/modules/RELEASE/modules.dep or modules.builtin). Errors when strict, warnings
// otherwise. root prefixes every path (tests); empty for the real host.
std::vector<PreflightFinding> preflight_host(const Config &config, bool strict, const std::string &root = {});

// Every key the parser accepts (top level, device, every backend module's), each once: what
// the documentation must cover (a test checks vduse-bridge.yaml(5) names them all).
std::vector<std::string> config_keys();

// What the device's backend module is told about the device.
BackendDevice backend_device(const DeviceConfig &device);

// "virtio-vdpa": the spelling used in the file, for logs.
const char *to_string(DeviceConfig::Attach attach) noexcept;

} // namespace vb
