// A backend module: everything the rest of the daemon knows about one backend type, so that the
// configuration parser, the factory and the command line name no backend.
//
// Each directory under backends/ defines one BackendModule (its `type:` name, its configuration
// keys and their checks, its options struct, how to create it, and optionally a --discover
// handler) and registers it with one line in backends/CMakeLists.txt:
//
//   vb_backend(nbd)   # backends/nbd/, module object vb::nbd_backend_module
//
// which builds the directory and lists the module in the generated registry (backend_modules()).
// Adding a backend is therefore one directory and that one line, plus its tests and docs.
#pragma once

#include "vduse-bridge/backend.h"
#include "vduse-bridge/config_checker.h"

#include <array>
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace vb {

// What a backend's configuration and creation may depend on: the device it serves.
struct BackendDevice {
  std::string name;                // the device's name (also of files a backend keeps for it)
  unsigned logical_block_size = 0; // what the file gives; 0 = the backend's own
  bool read_only = false;
  unsigned queues = 1;
};

// A backend's parsed options. Each module has one options struct deriving from
// BackendOptionsOf<Itself> with a defaulted operator==, which is what a reload compares.
class BackendOptions {
public:
  virtual ~BackendOptions() = default;
  // Same type and same values: a reload keeps the device as it is.
  virtual bool same_as(const BackendOptions &other) const = 0;
};

template <typename Self> class BackendOptionsOf : public BackendOptions {
public:
  bool same_as(const BackendOptions &other) const final {
    const auto *o = dynamic_cast<const Self *>(&other);
    return o != nullptr && *o == static_cast<const Self &>(*this);
  }
  bool operator==(const BackendOptionsOf &) const { return true; }
};

// The backend map of one device as the file has it, for BackendModule::parse.
struct BackendKeys {
  const ConfigChecker &check;
  const ConfigValue &map;              // the backend map itself (for missing keys' positions)
  std::span<const ConfigValue> values; // its keys but "type", in file order
  const BackendDevice &device;
};

// One finding of a pre-flight check (vduse-bridge --check; logged as warnings at start-up):
// something on this machine a device's configuration needs. key is the dotted key it is about
// ("tls-psk-file" from a module; the caller adds the device's path); message says what is wrong.
struct PreflightFinding {
  enum class Severity { warning, error };
  Severity severity = Severity::error;
  std::string key;
  std::string message;
};

struct BackendModule {
  std::string_view type;    // the value of backend.type: "nbd"
  std::string_view article; // "an": for messages such as "expected an nbd backend key"
  // Every key its map accepts but "type", keys of nested maps too: what vduse-bridge.yaml(5)
  // must document (a test checks).
  std::span<const std::string_view> keys;
  // Checks and reads the keys; throws ConfigError (through in.check) on a problem, or
  // ConfigErrorsRecorded after recording every problem (apply_backend_keys does).
  std::unique_ptr<BackendOptions> (*parse)(const BackendKeys &in);
  // A backend for these options (from parse), not yet opened. May throw.
  std::unique_ptr<Backend> (*create)(const BackendOptions &options, const BackendDevice &device);
  // Optional: `vduse-bridge --discover URI` for URIs of these schemes; returns what the server
  // offers as text for the terminal, throws on failure.
  std::span<const std::string_view> discover_schemes = {};
  std::string (*discover)(const std::string &uri) = nullptr;
  // Optional: what the options need from this machine that is not there (secret files, their
  // modes, certificate directories, socket directories), for vduse-bridge --check. Never throws
  // for what it finds; errors are what would make the backend fail, warnings what may be fixed
  // by the time it connects (a socket the server creates later).
  void (*preflight)(const BackendOptions &options, std::vector<PreflightFinding> &out) = nullptr;
};

// Every registered module, in the order of backends/CMakeLists.txt (generated).
std::span<const BackendModule *const> backend_modules();
// The module of that type, or nullptr.
const BackendModule *find_backend_module(std::string_view type);
// `vduse-bridge --discover URI`: what the module that discovers URIs of that scheme says.
// Throws (std::invalid_argument when no module discovers that scheme).
std::string discover(const std::string &uri);

// For a module's parse(): one key, what it must hold and where it goes. apply() also runs, with
// a missing value, for a required key that is absent, so that it reports what was expected.
template <typename Options> struct BackendKey {
  std::string_view name;
  bool required;
  void (*apply)(const ConfigChecker &check, const ConfigValue &v, const BackendDevice &device, Options &out);
};

// The names of a key table, in its order (for BackendModule::keys).
template <typename Options, std::size_t N>
constexpr std::array<std::string_view, N> names_of(const std::array<BackendKey<Options>, N> &keys) {
  std::array<std::string_view, N> names{};
  for (std::size_t i = 0; i < N; ++i)
    names[i] = keys[i].name;
  return names;
}

// Keys that only store what the checker read, for key tables:
//   {"reconnect-timeout", false, &apply_duration<NbdOptions, &NbdOptions::reconnect_timeout>}
template <typename Options, std::chrono::milliseconds Options::*member>
void apply_duration(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/, Options &out) {
  out.*member = check.duration(v);
}
// A timeout that may be "forever". Forever::unlimited stores milliseconds::max() (vb::forever_duration:
// reconnect-timeout, where 0 means "fail at once"); Forever::zero stores 0 (request-timeout,
// where 0 already means no limit).
enum class Forever { unlimited, zero };
template <typename Options, std::chrono::milliseconds Options::*member, Forever as>
void apply_timeout(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/, Options &out) {
  out.*member =
      check.duration(v, as == Forever::unlimited ? std::chrono::milliseconds::max() : std::chrono::milliseconds(0));
}
template <typename Options, bool Options::*member>
void apply_boolean(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/, Options &out) {
  out.*member = check.boolean(v);
}
template <typename Options, std::string Options::*member>
void apply_absolute_path(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                         Options &out) {
  out.*member = check.absolute_path(v);
}

// A configuration check run on a value from elsewhere (the command line, a backend's options
// built by hand): the same words, thrown as std::invalid_argument ("SOURCE: KEY: expected ...").
void check_outside_file(const std::string &source, const std::string &key, const std::string &text,
                        void (*check)(const ConfigChecker &, const ConfigValue &));

// Refuses each key that is not one of names (with a near miss, or the device level, suggested),
// naming the module's keys: records them all in in.check and returns false if there were any.
bool refuse_unknown_backend_keys(const BackendKeys &in, const BackendModule &module,
                                 std::span<const std::string_view> names);
// The value of that key, or nullptr.
const ConfigValue *find_backend_key(const BackendKeys &in, std::string_view name);

// The usual parse(): unknown keys refused, then each key of the table applied in table order
// (so that a key may depend on one before it), required ones even when absent. Every problem
// is recorded in in.check; if there was any, throws ConfigErrorsRecorded once all keys are
// checked, so that the module's checks of keys together only run on keys that are fine.
template <typename Options, std::size_t N>
void apply_backend_keys(const BackendKeys &in, const BackendModule &module,
                        const std::array<BackendKey<Options>, N> &keys, Options &out) {
  std::array<std::string_view, N> names{};
  for (std::size_t i = 0; i < N; ++i)
    names[i] = keys[i].name;
  bool ok = refuse_unknown_backend_keys(in, module, names);
  for (const auto &key : keys) {
    ok = in.check.attempt([&] {
      if (const ConfigValue *v = find_backend_key(in, key.name))
        key.apply(in.check, *v, in.device, out);
      else if (key.required)
        key.apply(in.check, missing_config_value(in.map.key, key.name, in.map.at), in.device, out);
    }) && ok;
  }
  if (!ok)
    throw ConfigErrorsRecorded{};
}

} // namespace vb
