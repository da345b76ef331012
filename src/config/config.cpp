#include "config/config.h"
#include "common/text.h"

#include "common/errors.h"
#include "common/small_file.h"
#include "common/units.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <optional>
#include <span>
#include <sstream>
#include <string_view>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <unordered_map>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

namespace vb {

namespace {

constexpr std::size_t max_name_bytes = 64;   // well under VDUSE_NAME_MAX and the vDPA netlink limit
constexpr std::size_t max_serial_bytes = 20; // VIRTIO_BLK_ID_BYTES, what GET_ID returns
// Items of a list in a backend kept for its checks (one more than any backend takes, so that it
// can say there are too many).
constexpr std::size_t kMaxSequenceItems = 64;
constexpr unsigned max_queues = 64;             // one per CPU is plenty; each queue costs a thread's share
constexpr unsigned max_queue_size = 1024;       // VDUSE's limit on virtqueue size
constexpr unsigned max_busy_poll_us = 10000;    // a 10 ms spin already costs a core for every pause
constexpr std::size_t max_file_bytes = 1 << 20; // a config file is a few KiB; stop /dev/zero early

using Position = ConfigPosition;
using Value = ConfigValue;

Position position_of(const YAML::Mark &mark) {
  if (mark.is_null())
    return {};
  return {mark.line + 1, mark.column + 1};
}

Position position_of(const YAML::Node &node) { return position_of(node.Mark()); }

// key_node is the node the value hangs from, for the position of an empty value (yaml-cpp puts
// the mark of "key:" with nothing after it on the next token, often the next line).
Value value_of(const YAML::Node &node, const YAML::Node &key_node, std::string name, std::string key) {
  Value v;
  v.name = std::move(name);
  v.key = std::move(key);
  v.at = position_of(node);
  v.key_at = position_of(key_node);
  switch (node.Type()) {
  case YAML::NodeType::Scalar:
    v.kind = Value::Kind::scalar;
    v.text = node.Scalar();
    v.tag = node.Tag();
    break;
  case YAML::NodeType::Sequence:
    v.kind = Value::Kind::sequence;
    break;
  case YAML::NodeType::Map:
    v.kind = Value::Kind::map;
    break;
  case YAML::NodeType::Null:
  case YAML::NodeType::Undefined:
    v.kind = Value::Kind::null;
    v.at = position_of(key_node);
    break;
  }
  return v;
}

// ---- Step one: the shape of the document --------------------------------------------------

struct RawBackend {
  Value self;                 // the backend map itself (missing, or kind map)
  Value type;                 // backend.type
  std::vector<Value> options; // every other key, in file order; which are allowed depends on type
};

struct RawDevice {
  Position at;
  std::string key; // devices[N]
  Value name, queues, queue_size, logical_block_size, read_only, serial, attach, control_timeout, busy_poll;
  RawBackend backend;
  bool backend_reported = false; // its problems are recorded already: step two skips it
};

struct DeviceKey {
  std::string_view name;
  Value RawDevice::*field;
};

constexpr std::array<DeviceKey, 9> device_scalar_keys{{
    {"name", &RawDevice::name},
    {"queues", &RawDevice::queues},
    {"queue-size", &RawDevice::queue_size},
    {"logical-block-size", &RawDevice::logical_block_size},
    {"read-only", &RawDevice::read_only},
    {"serial", &RawDevice::serial},
    {"attach", &RawDevice::attach},
    {"control-timeout", &RawDevice::control_timeout},
    {"busy-poll-us", &RawDevice::busy_poll},
}};

constexpr auto &device_keys = config_device_keys;
constexpr auto &top_keys = config_top_keys;

// Every backend module's keys (with "type"), for "'uri' belongs under backend:".
std::span<const std::string_view> all_backend_keys() {
  static const std::vector<std::string_view> keys = [] {
    std::vector<std::string_view> out{"type"};
    for (const BackendModule *m : backend_modules())
      for (auto k : m->keys)
        if (std::find(out.begin(), out.end(), k) == out.end())
          out.push_back(k);
    return out;
  }();
  return keys;
}

// One key: value pair of a map, the key already known to be a scalar seen once.
struct Entry {
  std::string name;
  YAML::Node key;
  YAML::Node value;
};

// Where each document of a stream starts and where its root node is, from the parser's events.
// Not YAML::LoadAll(): yaml-cpp 0.7 (bookworm's) loops there forever, adding an empty document
// each round until memory runs out, on a token no node can start with (",", "]", "}" where a
// node belongs: the 4 bytes ",:))" take all memory; upstream yaml-cpp #1319). Such a document
// consumes nothing: the next one starts where it did, which is how this is caught.
class DocumentMarks : public YAML::EventHandler {
public:
  struct Document {
    YAML::Mark start;
    YAML::Mark root;
    bool has_root = false;
  };
  std::vector<Document> documents;

  void OnDocumentStart(const YAML::Mark &mark) override { documents.push_back({mark, mark, false}); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark &mark, YAML::anchor_t) override { node(mark); }
  void OnAlias(const YAML::Mark &mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark &mark, const std::string &, YAML::anchor_t, const std::string &) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark &mark, const std::string &, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark &mark, const std::string &, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnMapEnd() override {}

private:
  void node(const YAML::Mark &mark) {
    if (!documents.empty() && !documents.back().has_root) {
      documents.back().root = mark;
      documents.back().has_root = true;
    }
  }
};

class ShapeReader {
public:
  explicit ShapeReader(const ConfigChecker &report) : report_(report) {}

  std::vector<RawDevice> document(const std::string &text) const {
    YAML::Node top;
    try {
      check_one_document(text);
      top = YAML::Load(text); // the first document only, now known to be the only one
    } catch (const YAML::Exception &e) {
      report_.fail(position_of(e.mark), {}, "invalid YAML: " + config_escaped(e.msg));
    }
    if (top.IsNull())
      report_.fail({1, 1}, {}, "expected a map with the key 'devices', got an empty file");

    const Value whole = value_of(top, top, {}, {});
    if (whole.kind != Value::Kind::map)
      report_.expected(whole, "a map with the key 'devices'");
    const std::array<ConfigKeyPlace, 2> top_elsewhere{
        {{"under a device in devices:", device_keys}, {"under a device's backend:", all_backend_keys()}}};
    const std::size_t before = report_.recorded();
    const std::vector<Entry> top_entries = entries(top, {}, "top-level", top_keys, top_elsewhere);
    // A wrong top-level key may be a misspelt devices: "devices is missing" would only repeat it.
    if (top_entries.empty() && report_.recorded() > before)
      throw ConfigErrorsRecorded{};
    if (top_entries.empty()) // "devices" is the only key entries() lets through
      report_.expected(missing_config_value({}, "devices", position_of(top)), "a sequence of devices");
    const YAML::Node &sequence = top_entries.front().value;
    const Value list_value = value_of(sequence, top_entries.front().key, "devices", "devices");
    if (list_value.kind != Value::Kind::sequence)
      report_.expected(list_value, "a sequence of devices");
    // An empty list is a daemon that serves nothing yet: devices come with a reload or `add`.

    std::vector<RawDevice> out;
    for (std::size_t i = 0; i < sequence.size(); ++i)
      (void)report_.attempt([&] { out.push_back(device(sequence[i], "devices[" + std::to_string(i) + "]")); });
    return out;
  }

private:
  // Parses up to three documents (which also reports a syntax error in the first two).
  void check_one_document(const std::string &text) const {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentMarks marks;
    while (marks.documents.size() < 3 && parser.HandleNextDocument(marks)) {
      const auto &d = marks.documents;
      if (d.size() >= 2 && d[d.size() - 1].start.pos == d[d.size() - 2].start.pos)
        report_.fail(position_of(d[d.size() - 2].start), {}, "invalid YAML: no value can start here");
    }
    if (marks.documents.size() > 1)
      report_.fail(position_of(marks.documents[1].root), {}, "expected one YAML document, got a second one");
  }

  // The entries of a map, each key a scalar seen once and, if known is not empty, one of known.
  // A key that is not is recorded (with a hint from elsewhere) and left out.
  std::vector<Entry> entries(const YAML::Node &map, const std::string &path, std::string_view kind,
                             std::span<const std::string_view> known,
                             std::span<const ConfigKeyPlace> elsewhere = {}) const {
    std::vector<Entry> out;
    std::unordered_map<std::string, int> first_line;
    for (auto it = map.begin(); it != map.end(); ++it) {
      (void)report_.attempt([&] {
        const YAML::Node key = it->first;
        if (!key.IsScalar())
          report_.expected(value_of(key, key, {}, path), "a key name");
        const std::string &name = key.Scalar();
        const Position at = position_of(key);
        if (!known.empty() && std::find(known.begin(), known.end(), name) == known.end())
          report_.fail(at, config_join(path, name),
                       "expected a " + std::string(kind) + " key (" + config_list(known) + "), got " +
                           config_quoted(name, '\'') + config_key_hint(name, known, elsewhere));
        if (auto [seen, inserted] = first_line.emplace(name, at.line); !inserted)
          report_.fail(at, config_join(path, name),
                       "expected each key once in a map, got it again (first on line " + std::to_string(seen->second) +
                           ")");
        out.push_back({name, key, it->second});
      });
    }
    return out;
  }

  RawDevice device(const YAML::Node &node, const std::string &path) const {
    RawDevice raw;
    raw.key = path;
    raw.at = position_of(node);
    const Value self = value_of(node, node, {}, path);
    if (self.kind != Value::Kind::map)
      report_.expected(self, "a map of device keys (name, backend, ...)");
    for (const auto &k : device_scalar_keys)
      raw.*k.field = missing_config_value(path, k.name, raw.at);
    raw.backend.self = missing_config_value(path, "backend", raw.at);
    const std::array<ConfigKeyPlace, 2> elsewhere{
        {{"under backend:", all_backend_keys()}, {"at the top level, above devices:", top_keys}}};
    for (const auto &entry : entries(node, path, "device", device_keys, elsewhere)) {
      if (entry.name == "backend") {
        if (!report_.attempt([&] { raw.backend = backend(entry, path); }))
          raw.backend_reported = true;
        continue;
      }
      for (const auto &k : device_scalar_keys)
        if (entry.name == k.name)
          raw.*k.field = value_of(entry.value, entry.key, entry.name, config_join(path, entry.name));
    }
    return raw;
  }

  RawBackend backend(const Entry &entry, const std::string &device_path) const {
    const std::string path = config_join(device_path, "backend");
    RawBackend raw;
    raw.self = value_of(entry.value, entry.key, "backend", path);
    if (raw.self.kind != Value::Kind::map)
      report_.expected(raw.self, "a map with the key 'type'");
    raw.type = missing_config_value(path, "type", raw.self.at);
    // Which other keys are allowed depends on the type, so step two checks them.
    for (const auto &option : entries(entry.value, path, "backend", {})) {
      Value v = value_of(option.value, option.key, option.name, config_join(path, option.name));
      if (v.kind == Value::Kind::map)
        for (const auto &child : entries(option.value, v.key, "", {}))
          v.children.push_back(value_of(child.value, child.key, child.name, config_join(v.key, child.name)));
      if (v.kind == Value::Kind::sequence) // iscsi's portals: items named [0], [1]...
        for (std::size_t i = 0; i < option.value.size() && i <= kMaxSequenceItems; ++i) {
          const std::string index = "[" + std::to_string(i) + "]";
          v.children.push_back(value_of(option.value[i], option.value[i], index, v.key + index));
        }
      if (option.name == "type")
        raw.type = std::move(v);
      else
        raw.options.push_back(std::move(v));
    }
    return raw;
  }

  const ConfigChecker &report_;
};

// ---- Step two: the values -----------------------------------------------------------------

// Spelled out rather than isalnum(), which depends on the locale.
bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

class Validator {
public:
  explicit Validator(const ConfigChecker &report) : report_(report) {}

  // Every device, each key checked even when another failed (the problems go to the checker).
  Config config(const std::vector<RawDevice> &raw_devices, const std::string &source) const {
    Config config;
    config.path = source;
    std::unordered_map<std::string, int> first_line;
    for (const auto &raw : raw_devices) {
      bool named = false;
      DeviceConfig device = this->device(raw, named);
      if (named)
        (void)report_.attempt([&] {
          if (auto [seen, inserted] = first_line.emplace(device.name, raw.name.at.line); !inserted)
            report_.expected(raw.name, "a name no other device has",
                             " (also the name of the device on line " + std::to_string(seen->second) + ")");
        });
      config.devices.push_back(std::move(device));
    }
    return config;
  }

  const ConfigChecker &report() const { return report_; }

private:
  DeviceConfig device(const RawDevice &raw, bool &named) const {
    DeviceConfig d;
    d.line = raw.at.line;
    named = report_.attempt([&] { d.name = name(raw.name); });
    const auto key = [&](const Value &v, auto &&apply) {
      if (v.present())
        (void)report_.attempt(apply);
    };
    key(raw.queues, [&] { d.queues = report_.count(raw.queues, 1, max_queues); });
    key(raw.queue_size, [&] { d.queue_size = report_.power_of_two(raw.queue_size, 2, max_queue_size); });
    key(raw.logical_block_size,
        [&] { d.logical_block_size = report_.power_of_two(raw.logical_block_size, 512, 4096); });
    key(raw.read_only, [&] { d.read_only = report_.boolean(raw.read_only); });
    if (raw.serial.present())
      (void)report_.attempt([&] { d.serial = serial(raw.serial); });
    else
      d.serial = d.name.substr(0, max_serial_bytes);
    key(raw.attach, [&] {
      static constexpr std::array<std::pair<std::string_view, DeviceConfig::Attach>, 3> attaches{{
          {"virtio-vdpa", DeviceConfig::Attach::virtio_vdpa},
          {"vhost-vdpa", DeviceConfig::Attach::vhost_vdpa},
          {"none", DeviceConfig::Attach::none},
      }};
      d.attach = report_.choice(raw.attach, attaches);
    });
    key(raw.control_timeout, [&] { d.control_timeout = control_timeout(raw.control_timeout); });
    key(raw.busy_poll,
        [&] { d.busy_poll = std::chrono::microseconds(report_.count(raw.busy_poll, 0, max_busy_poll_us)); });
    // Last: backend values may depend on the device's (the memory size on the block size).
    if (!raw.backend_reported)
      (void)report_.attempt([&] { d.backend = backend(raw.backend, d); });
    return d;
  }

  // VDUSE's msg_timeout, in whole seconds; 0 and forever: the kernel waits for ever.
  std::chrono::seconds control_timeout(const Value &v) const {
    const auto parsed = report_.duration(v, std::chrono::milliseconds(0));
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(parsed);
    if (parsed.count() > 0 && seconds.count() == 0)
      report_.expected(v, "whole seconds (the kernel counts msg_timeout in seconds), 0 or forever");
    // max_duration (1000000h) is 3.6e9 s: it fits the kernel's 32-bit msg_timeout.
    static_assert(std::chrono::duration_cast<std::chrono::seconds>(max_duration).count() <= 0xffffffffLL);
    return seconds;
  }

  std::string name(const Value &v) const {
    const std::string what = "a name of 1 to " + std::to_string(max_name_bytes) + " letters, digits, '_' or '-'";
    const std::string &text = report_.scalar(v, what);
    if (text.empty() || text.size() > max_name_bytes)
      report_.expected(v, what);
    for (char c : text)
      if (!is_name_char(c))
        report_.expected(v, what);
    return text;
  }

  // Printable ASCII so that it shows as is in sysfs (/sys/block/vdX/serial) and in logs.
  std::string serial(const Value &v) const {
    const std::string what = "at most " + std::to_string(max_serial_bytes) + " bytes of printable ASCII";
    const std::string &text = report_.scalar(v, what);
    if (text.size() > max_serial_bytes)
      report_.expected(v, what, text.size() > config_shown_bytes ? "" : " (" + std::to_string(text.size()) + " bytes)");
    for (unsigned char c : text)
      if (c < 0x20 || c > 0x7e)
        report_.expected(v, what);
    return text;
  }

  BackendConfig backend(const RawBackend &raw, const DeviceConfig &device) const;

  const ConfigChecker &report_;
};

BackendConfig Validator::backend(const RawBackend &raw, const DeviceConfig &device) const {
  if (!raw.self.present())
    report_.expected(raw.self, "a map with the key 'type'");

  std::vector<std::string_view> types;
  for (const BackendModule *m : backend_modules())
    types.push_back(m->type);
  const std::string what = "a backend type (" + config_list(types) + ")";
  const std::string &type = report_.scalar(raw.type, what);
  const BackendModule *module = find_backend_module(type);
  if (!module)
    report_.expected(raw.type, what);

  BackendConfig out;
  out.module = module;
  const BackendDevice about = backend_device(device);
  out.options = module->parse(BackendKeys{report_, raw.self, raw.options, about});
  return out;
}

std::string read_file(const std::string &path) {
  SmallFile f = read_small_file(path, max_file_bytes);
  if (f.error != 0)
    throw ConfigError(path, 0, 0, {}, f.problem());
  if (f.too_large(max_file_bytes))
    throw ConfigError(path, 0, 0, {}, "expected a configuration file of at most 1 MiB, got more");
  return std::move(f.text);
}

} // namespace

ConfigCheck check_config_text(const std::string &text, const std::string &source_name) {
  const ConfigChecker report(source_name);
  std::vector<RawDevice> raw;
  // A problem with the document as a whole (its syntax, no devices) ends the check there.
  if (!report.attempt([&] { raw = ShapeReader(report).document(text); }))
    return {std::nullopt, report.errors()};
  Config config = Validator(report).config(raw, source_name);
  if (report.failed())
    return {std::nullopt, report.errors()};
  return {std::move(config), {}};
}

namespace {

ConfigCheck check_one_file(const std::string &path) {
  std::string text;
  try {
    text = read_file(path);
  } catch (const ConfigError &e) {
    return {std::nullopt, {e}};
  }
  ConfigCheck checked = check_config_text(text, path);
  if (checked.config)
    for (auto &d : checked.config->devices)
      d.file = path;
  return checked;
}

// The drop-in files, sorted: regular files (or links to them) named *.yaml; the rest is ignored
// (an editor's backup, a README). A missing directory is no drop-ins.
std::vector<std::string> dropin_files(const std::string &dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto &entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 5 && name.ends_with(".yaml") && name[0] != '.' && entry.is_regular_file(ec))
      files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

} // namespace

std::string dropin_dir(const std::string &path) {
  std::string base = path;
  for (const char *ext : {".yaml", ".yml"})
    if (base.size() > std::strlen(ext) && base.ends_with(ext)) {
      base.resize(base.size() - std::strlen(ext));
      break;
    }
  return base + ".d";
}

ConfigCheck check_config(const std::string &path) {
  ConfigCheck all = check_one_file(path);
  // A main file that cannot be read stops there; one with problems still has its drop-ins
  // checked, so that --check reports everything.
  if (!all.config && !all.errors.empty() && all.errors.front().line() == 0)
    return all;
  Config merged;
  merged.path = path;
  if (all.config)
    merged.devices = std::move(all.config->devices);
  for (const std::string &file : dropin_files(dropin_dir(path))) {
    ConfigCheck one = check_one_file(file);
    for (auto &e : one.errors)
      all.errors.push_back(std::move(e));
    if (!one.config)
      continue;
    for (auto &d : one.config->devices) {
      const auto twin = std::find_if(merged.devices.begin(), merged.devices.end(),
                                     [&](const DeviceConfig &o) { return o.name == d.name; });
      if (twin != merged.devices.end()) {
        all.errors.emplace_back(file, d.line, 0, "name",
                                "the device '" + d.name + "' is defined already, in " + twin->file + ":" +
                                    std::to_string(twin->line));
        continue;
      }
      merged.devices.push_back(std::move(d));
    }
  }
  if (!all.errors.empty())
    return {std::nullopt, std::move(all.errors)};
  return {std::move(merged), {}};
}

Config parse_config(const std::string &text, const std::string &source_name) {
  ConfigCheck checked = check_config_text(text, source_name);
  if (!checked.config)
    throw ConfigError(checked.errors);
  return std::move(*checked.config);
}

Config load_config(const std::string &path) {
  ConfigCheck checked = check_config(path);
  if (!checked.config)
    throw ConfigError(checked.errors);
  return std::move(*checked.config);
}

std::vector<PreflightFinding> preflight_config(const Config &config) {
  std::vector<PreflightFinding> out;
  for (std::size_t i = 0; i < config.devices.size(); ++i) {
    const DeviceConfig &d = config.devices[i];
    if (!d.backend.module || !d.backend.module->preflight || !d.backend.options)
      continue;
    std::vector<PreflightFinding> found;
    d.backend.module->preflight(*d.backend.options, found);
    for (auto &f : found) {
      f.key = "devices[" + std::to_string(i) + "].backend." + f.key;
      f.message = config.path + ":" + std::to_string(d.line) + ": " + f.key + ": " + f.message;
      out.push_back(std::move(f));
    }
  }
  return out;
}

namespace {

bool path_exists(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// Whether modules.dep or modules.builtin lists NAME.ko (compressed or not; '-' and '_' alike).
bool module_listed(const std::string &modules_dir, const std::string &name) {
  for (const char *list : {"/modules.builtin", "/modules.dep"}) {
    const SmallFile f = read_small_file(modules_dir + list, 16 << 20);
    if (f.error != 0)
      continue;
    std::string text = f.text;
    std::replace(text.begin(), text.end(), '-', '_');
    for (const char *suffix : {".ko:", ".ko\n", ".ko.xz:", ".ko.zst:", ".ko.gz:"}) {
      if (text.find("/" + name + suffix) != std::string::npos)
        return true;
    }
  }
  return false;
}

} // namespace

std::vector<PreflightFinding> preflight_host(const Config &config, bool strict, const std::string &root) {
  using S = PreflightFinding::Severity;
  const S severity = strict ? S::error : S::warning;
  std::vector<PreflightFinding> out;
  std::vector<std::string> modules{"vduse", "virtio_vdpa"};
  if (std::any_of(config.devices.begin(), config.devices.end(),
                  [](const DeviceConfig &d) { return d.attach == DeviceConfig::Attach::vhost_vdpa; }))
    modules.emplace_back("vhost_vdpa");
  struct utsname un {};
  const std::string modules_dir = root + "/lib/modules/" + (::uname(&un) == 0 ? un.release : "");
  for (const auto &m : modules) {
    std::string loaded = root;
    loaded.append("/sys/module/").append(m);
    if (path_exists(loaded))
      continue;
    std::string text = "host: the kernel module ";
    text += m;
    if (module_listed(modules_dir, m))
      text.append(" is not loaded (modprobe ").append(m).append(")");
    else
      text.append(" is neither loaded nor in ")
          .append(modules_dir)
          .append(" (a kernel without ")
          .append(m == "vduse" ? "VDUSE" : m)
          .append(" support?)");
    out.push_back({severity, {}, text});
  }
  if (!path_exists(root + "/dev/vduse/control"))
    out.push_back(
        {severity, {}, "host: " + root + "/dev/vduse/control does not exist (load the vduse module: modprobe vduse)"});
  return out;
}

const char *to_string(DeviceConfig::Attach attach) noexcept {
  switch (attach) {
  case DeviceConfig::Attach::virtio_vdpa:
    return "virtio-vdpa";
  case DeviceConfig::Attach::vhost_vdpa:
    return "vhost-vdpa";
  case DeviceConfig::Attach::none:
    return "none";
  }
  return "?";
}

BackendDevice backend_device(const DeviceConfig &device) {
  BackendDevice d;
  d.name = device.name;
  d.logical_block_size = device.logical_block_size;
  d.read_only = device.read_only;
  d.queues = device.queues;
  return d;
}

bool DeviceConfig::same_settings(const DeviceConfig &o) const {
  return name == o.name && backend == o.backend && queues == o.queues && queue_size == o.queue_size &&
         logical_block_size == o.logical_block_size && read_only == o.read_only && serial == o.serial &&
         attach == o.attach && control_timeout == o.control_timeout && busy_poll == o.busy_poll;
}

std::vector<std::string> config_keys() {
  std::vector<std::string> keys(top_keys.begin(), top_keys.end());
  keys.insert(keys.end(), device_keys.begin(), device_keys.end());
  keys.emplace_back("type");
  for (const BackendModule *m : backend_modules())
    for (const auto name : m->keys)
      if (std::find(keys.begin(), keys.end(), name) == keys.end())
        keys.emplace_back(name);
  return keys;
}

} // namespace vb
