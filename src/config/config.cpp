#include "config/config.h"
#include "common/text.h"

#include "common/errors.h"
#include "common/units.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <fcntl.h>
#include <optional>
#include <span>
#include <sstream>
#include <string_view>
#include <unistd.h>
#include <unordered_map>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

namespace vb {

ConfigError::ConfigError(const std::string &file, int line, int column, const std::string &key,
                         const std::string &problem)
    : std::runtime_error(file + (line > 0 ? ":" + std::to_string(line) + ":" + std::to_string(column) : "") + ": " +
                         (key.empty() ? "" : key + ": ") + problem),
      line_(line), column_(column), key_(key) {}

namespace {

constexpr std::size_t max_name_bytes = 64;            // well under VDUSE_NAME_MAX and the vDPA netlink limit
constexpr std::size_t max_serial_bytes = 20;          // VIRTIO_BLK_ID_BYTES, what GET_ID returns
constexpr unsigned max_queues = 64;                   // one per CPU is plenty; each queue costs a thread's share
constexpr unsigned max_queue_size = 1024;             // VDUSE's limit on virtqueue size
constexpr std::uint64_t max_memory_size = 1ULL << 46; // 64 TiB: beyond that a memory disk is a typo
constexpr std::size_t max_file_bytes = 1 << 20;       // a config file is a few KiB; stop /dev/zero early
constexpr unsigned memory_block_size = 512;           // the memory backend's when the device gives none
constexpr unsigned max_nbd_connections = 16;          // per device; more buys nothing on one server

// 1-based, as editors count; {0, 0} when yaml-cpp knows no position.
struct Position {
  int line = 0;
  int column = 0;
};

Position position_of(const YAML::Mark &mark) {
  if (mark.is_null())
    return {};
  return {mark.line + 1, mark.column + 1};
}

Position position_of(const YAML::Node &node) { return position_of(node.Mark()); }

// One value as written in the file. Step one (shape) records it, step two (values) interprets it.
struct Value {
  enum class Kind { missing, null, scalar, sequence, map };

  std::string name; // the key, e.g. "size"
  std::string key;  // its dotted path, e.g. "devices[0].backend.size"
  Position at;      // the value; its key when empty; the enclosing map when missing
  Position key_at;  // the key; the enclosing map when missing
  Kind kind = Kind::missing;
  std::string text; // scalars only
  std::string tag;  // "?" plain, "!" quoted, else an explicit tag such as tag:yaml.org,2002:int
  // The entries of a map nested in a backend (iscsi's chap), in file order; empty otherwise.
  std::vector<Value> children;

  bool present() const { return kind != Kind::missing; }
  bool plain() const { return tag == "?"; }
};

// Text for a one-line message: control and non-ASCII bytes as \xNN, at most limit bytes shown.
std::string escaped(std::string_view text, std::size_t limit = std::string_view::npos) {
  static constexpr std::string_view hex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  return out;
}

// Values longer than this are cut short in messages, which then give their length.
constexpr std::size_t shown_bytes = 40;

// The dotted path of a key; names from the file are escaped to keep messages on one line.
std::string join(const std::string &path, std::string_view name) {
  return path.empty() ? escaped(name) : path + "." + escaped(name);
}

// 'text' (or "text"), escaped, long text cut short with its length.
std::string quoted(std::string_view text, char quote) {
  std::string out = quote + escaped(text, shown_bytes);
  if (text.size() > shown_bytes)
    return out + "..." + quote + " (" + std::to_string(text.size()) + " bytes)";
  return out + quote;
}

Value missing_value(const std::string &path, std::string_view name, Position enclosing) {
  Value v;
  v.name = name;
  v.key = join(path, name);
  v.at = enclosing;
  v.key_at = enclosing;
  return v;
}

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

// What the file has, for "got ...". Quoted (or explicitly tagged) scalars show in double quotes
// so that "got \"2\"" explains why a number was not accepted.
std::string describe(const Value &v) {
  switch (v.kind) {
  case Value::Kind::missing:
    return "nothing (the key is missing)";
  case Value::Kind::null:
    return "an empty value";
  case Value::Kind::sequence:
    return "a sequence";
  case Value::Kind::map:
    return "a map";
  case Value::Kind::scalar:
    break;
  }
  return quoted(v.text, v.plain() ? '\'' : '"');
}

std::string list(std::span<const std::string_view> names) {
  std::string out;
  for (auto name : names)
    out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

// "a", "a or b", "a, b or c".
std::string either(std::span<const std::string_view> names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + std::string(names[i]);
  return out;
}

// Throws the one error of a load. Both steps report through it.
class Reporter {
public:
  explicit Reporter(const std::string &source) : source_(source) {}

  [[noreturn]] void fail(Position at, const std::string &key, const std::string &problem) const {
    throw ConfigError(source_, at.line, at.column, key, problem);
  }
  [[noreturn]] void expected(const Value &v, const std::string &what, const std::string &note = {}) const {
    fail(v.at, v.key, "expected " + what + ", got " + describe(v) + note);
  }

private:
  const std::string &source_;
};

// ---- Step one: the shape of the document --------------------------------------------------

struct RawBackend {
  Value self;                 // the backend map itself (missing, or kind map)
  Value type;                 // backend.type
  std::vector<Value> options; // every other key, in file order; which are allowed depends on type
};

struct RawDevice {
  Position at;
  std::string key; // devices[N]
  Value name, queues, queue_size, logical_block_size, read_only, serial, attach, control_timeout;
  RawBackend backend;
};

struct DeviceKey {
  std::string_view name;
  Value RawDevice::*field;
};

constexpr std::array<DeviceKey, 8> device_scalar_keys{{
    {"name", &RawDevice::name},
    {"queues", &RawDevice::queues},
    {"queue-size", &RawDevice::queue_size},
    {"logical-block-size", &RawDevice::logical_block_size},
    {"read-only", &RawDevice::read_only},
    {"serial", &RawDevice::serial},
    {"attach", &RawDevice::attach},
    {"control-timeout", &RawDevice::control_timeout},
}};

constexpr std::array<std::string_view, 9> device_keys{
    "name",      "backend", "queues", "queue-size",     "logical-block-size",
    "read-only", "serial",  "attach", "control-timeout"};
constexpr std::array<std::string_view, 1> top_keys{"devices"};

// One key: value pair of a map, the key already known to be a scalar seen once.
struct Entry {
  std::string name;
  YAML::Node key;
  YAML::Node value;
};

// "queue_size" and "Queue-Size" are near misses of "queue-size".
std::optional<std::string_view> near_miss(std::string_view name, std::span<const std::string_view> known) {
  std::string folded(name);
  for (auto &c : folded)
    c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto k : known)
    if (folded == k)
      return k;
  return std::nullopt;
}

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
  explicit ShapeReader(const Reporter &report) : report_(report) {}

  std::vector<RawDevice> document(const std::string &text) const {
    YAML::Node top;
    try {
      check_one_document(text);
      top = YAML::Load(text); // the first document only, now known to be the only one
    } catch (const YAML::Exception &e) {
      report_.fail(position_of(e.mark), {}, "invalid YAML: " + escaped(e.msg));
    }
    if (top.IsNull())
      report_.fail({1, 1}, {}, "expected a map with the key 'devices', got an empty file");

    const Value whole = value_of(top, top, {}, {});
    if (whole.kind != Value::Kind::map)
      report_.expected(whole, "a map with the key 'devices'");
    const std::vector<Entry> top_entries = entries(top, {}, "top-level", top_keys);
    if (top_entries.empty()) // "devices" is the only key entries() lets through
      report_.expected(missing_value({}, "devices", position_of(top)), "a sequence of devices");
    const YAML::Node &sequence = top_entries.front().value;
    const Value list_value = value_of(sequence, top_entries.front().key, "devices", "devices");
    if (list_value.kind != Value::Kind::sequence)
      report_.expected(list_value, "a sequence of devices");
    if (sequence.size() == 0)
      report_.fail(list_value.at, "devices", "expected at least one device, got an empty sequence");

    std::vector<RawDevice> out;
    for (std::size_t i = 0; i < sequence.size(); ++i)
      out.push_back(device(sequence[i], "devices[" + std::to_string(i) + "]"));
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
  std::vector<Entry> entries(const YAML::Node &map, const std::string &path, std::string_view kind,
                             std::span<const std::string_view> known) const {
    std::vector<Entry> out;
    std::unordered_map<std::string, int> first_line;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar())
        report_.expected(value_of(key, key, {}, path), "a key name");
      const std::string &name = key.Scalar();
      const Position at = position_of(key);
      if (!known.empty() && std::find(known.begin(), known.end(), name) == known.end()) {
        std::string hint;
        if (auto k = near_miss(name, known))
          hint = " (did you mean '" + std::string(*k) + "'?)";
        report_.fail(at, join(path, name),
                     "expected a " + std::string(kind) + " key (" + list(known) + "), got " + quoted(name, '\'') +
                         hint);
      }
      if (auto [seen, inserted] = first_line.emplace(name, at.line); !inserted)
        report_.fail(at, join(path, name),
                     "expected each key once in a map, got it again (first on line " + std::to_string(seen->second) +
                         ")");
      out.push_back({name, key, it->second});
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
      raw.*k.field = missing_value(path, k.name, raw.at);
    raw.backend.self = missing_value(path, "backend", raw.at);
    for (const auto &entry : entries(node, path, "device", device_keys)) {
      if (entry.name == "backend") {
        raw.backend = backend(entry, path);
        continue;
      }
      for (const auto &k : device_scalar_keys)
        if (entry.name == k.name)
          raw.*k.field = value_of(entry.value, entry.key, entry.name, join(path, entry.name));
    }
    return raw;
  }

  RawBackend backend(const Entry &entry, const std::string &device_path) const {
    const std::string path = join(device_path, "backend");
    RawBackend raw;
    raw.self = value_of(entry.value, entry.key, "backend", path);
    if (raw.self.kind != Value::Kind::map)
      report_.expected(raw.self, "a map with the key 'type'");
    raw.type = missing_value(path, "type", raw.self.at);
    // Which other keys are allowed depends on the type, so step two checks them.
    for (const auto &option : entries(entry.value, path, "backend", {})) {
      Value v = value_of(option.value, option.key, option.name, join(path, option.name));
      if (v.kind == Value::Kind::map)
        for (const auto &child : entries(option.value, v.key, "", {}))
          v.children.push_back(value_of(child.value, child.key, child.name, join(v.key, child.name)));
      if (option.name == "type")
        raw.type = std::move(v);
      else
        raw.options.push_back(std::move(v));
    }
    return raw;
  }

  const Reporter &report_;
};

// ---- Step two: the values -----------------------------------------------------------------

std::optional<std::uint64_t> decimal(std::string_view s) {
  std::uint64_t n = 0;
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), n, 10);
  if (ec != std::errc{} || ptr != s.data() + s.size())
    return std::nullopt;
  return n;
}

// Spelled out rather than isalnum(), which depends on the locale.
bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

bool is_power_of_two(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

class Validator;

// A backend key: what it must hold and where it goes. apply() also runs, with a missing value,
// for a required key that is absent, so that it reports what was expected.
struct BackendOption {
  std::string_view name;
  bool required;
  void (*apply)(const Validator &check, const Value &v, const DeviceConfig &device, BackendConfig &out);
};

struct BackendKind {
  std::string_view name;
  std::string_view article; // "a memory backend key", "an nbd backend key"
  BackendConfig::Type type;
  bool available; // false: recognised, but refused as not available in this version
  std::span<const BackendOption> options;
  // Checks between keys, after every key has been applied on its own; may be null.
  void (*check_together)(const Validator &check, const RawBackend &raw, const BackendConfig &out);
};

class Validator {
public:
  explicit Validator(const Reporter &report) : report_(report) {}

  Config config(const std::vector<RawDevice> &raw_devices, const std::string &source) const {
    Config config;
    config.path = source;
    std::unordered_map<std::string, int> first_line;
    for (const auto &raw : raw_devices) {
      DeviceConfig device = this->device(raw);
      if (auto [seen, inserted] = first_line.emplace(device.name, raw.name.at.line); !inserted)
        report_.expected(raw.name, "a name no other device has",
                         " (also the name of the device on line " + std::to_string(seen->second) + ")");
      config.devices.push_back(std::move(device));
    }
    return config;
  }

  const Reporter &report() const { return report_; }

  const std::string &scalar(const Value &v, const std::string &what) const {
    if (v.kind != Value::Kind::scalar)
      report_.expected(v, what);
    return v.text;
  }

  // A plain decimal integer in [min, max]; quotes are refused so that numbers look like numbers.
  std::uint64_t integer(const Value &v, std::uint64_t min, std::uint64_t max, const std::string &what) const {
    const std::string &text = scalar(v, what);
    if (!v.plain() && v.tag != "tag:yaml.org,2002:int")
      report_.expected(v, what + " (without quotes)");
    auto n = decimal(text);
    if (!n || *n < min || *n > max)
      report_.expected(v, what);
    return *n;
  }

  unsigned count(const Value &v, unsigned min, unsigned max) const {
    return static_cast<unsigned>(
        integer(v, min, max, "an integer from " + std::to_string(min) + " to " + std::to_string(max)));
  }

  unsigned power_of_two(const Value &v, unsigned min, unsigned max) const {
    const std::string what = "a power of two from " + std::to_string(min) + " to " + std::to_string(max);
    const auto n = integer(v, min, max, what);
    if (!is_power_of_two(n))
      report_.expected(v, what);
    return static_cast<unsigned>(n);
  }

  // YAML 1.2 booleans only: yes/no/on/off are YAML 1.1 and too easy to write by accident.
  bool boolean(const Value &v) const {
    static constexpr std::string_view what = "true or false";
    const std::string &text = scalar(v, std::string(what));
    if (!v.plain() && v.tag != "tag:yaml.org,2002:bool")
      report_.expected(v, std::string(what) + " (without quotes)");
    if (text == "true" || text == "True" || text == "TRUE")
      return true;
    if (text == "false" || text == "False" || text == "FALSE")
      return false;
    report_.expected(v, std::string(what));
  }

  template <typename E, std::size_t N>
  E choice(const Value &v, const std::array<std::pair<std::string_view, E>, N> &choices) const {
    std::string what;
    for (std::size_t i = 0; i < N; ++i)
      what += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::string(choices[i].first);
    const std::string &text = scalar(v, what);
    for (const auto &[spelling, e] : choices)
      if (text == spelling)
        return e;
    report_.expected(v, what);
  }

private:
  DeviceConfig device(const RawDevice &raw) const {
    DeviceConfig d;
    d.line = raw.at.line;
    d.name = name(raw.name);
    if (raw.queues.present())
      d.queues = count(raw.queues, 1, max_queues);
    if (raw.queue_size.present())
      d.queue_size = power_of_two(raw.queue_size, 2, max_queue_size);
    if (raw.logical_block_size.present())
      d.logical_block_size = power_of_two(raw.logical_block_size, 512, 4096);
    if (raw.read_only.present())
      d.read_only = boolean(raw.read_only);
    d.serial = raw.serial.present() ? serial(raw.serial) : d.name.substr(0, max_serial_bytes);
    if (raw.attach.present()) {
      static constexpr std::array<std::pair<std::string_view, DeviceConfig::Attach>, 3> attaches{{
          {"virtio-vdpa", DeviceConfig::Attach::virtio_vdpa},
          {"vhost-vdpa", DeviceConfig::Attach::vhost_vdpa},
          {"none", DeviceConfig::Attach::none},
      }};
      d.attach = choice(raw.attach, attaches);
    }
    if (raw.control_timeout.present()) {
      const auto parsed =
          parse_duration(scalar(raw.control_timeout, "a duration such as 30s or 5m, or 0 (wait forever)"));
      if (!parsed)
        report_.fail(raw.control_timeout.at, raw.control_timeout.key, "expected " + escaped(parsed.error));
      d.control_timeout = std::chrono::duration_cast<std::chrono::seconds>(*parsed.value);
      if (parsed.value->count() > 0 && d.control_timeout.count() == 0)
        report_.expected(raw.control_timeout, "whole seconds (the kernel counts msg_timeout in seconds), or 0");
    }
    // Last: backend values may depend on the device's (the memory size on the block size).
    d.backend = backend(raw.backend, d);
    return d;
  }

  std::string name(const Value &v) const {
    const std::string what = "a name of 1 to " + std::to_string(max_name_bytes) + " letters, digits, '_' or '-'";
    const std::string &text = scalar(v, what);
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
    const std::string &text = scalar(v, what);
    if (text.size() > max_serial_bytes)
      report_.expected(v, what, text.size() > shown_bytes ? "" : " (" + std::to_string(text.size()) + " bytes)");
    for (unsigned char c : text)
      if (c < 0x20 || c > 0x7e)
        report_.expected(v, what);
    return text;
  }

  BackendConfig backend(const RawBackend &raw, const DeviceConfig &device) const;

  const Reporter &report_;
};

void apply_memory_size(const Validator &check, const Value &v, const DeviceConfig &device, BackendConfig &out) {
  static const std::string what = "a size such as 512, 64K, 1G or 1GiB";
  const auto parsed = parse_size(check.scalar(v, what));
  if (!parsed)
    check.report().fail(v.at, v.key, "expected " + escaped(parsed.error));
  const std::uint64_t size = *parsed.value;
  if (size == 0)
    check.report().expected(v, "a size above 0");
  if (size > max_memory_size)
    check.report().expected(v, "a size of at most 64 TiB");
  const unsigned block = device.logical_block_size != 0 ? device.logical_block_size : memory_block_size;
  if (size % block != 0)
    check.report().expected(v, "a multiple of the logical block size (" + std::to_string(block) + " bytes)",
                            " (" + std::to_string(size) + " bytes)");
  out.memory.size = size;
}

constexpr std::array<BackendOption, 1> memory_options{{
    {"size", true, &apply_memory_size},
}};

// ---- The nbd backend ----

constexpr std::array<std::string_view, 6> nbd_schemes{"nbd",       "nbds",      "nbd+unix",
                                                      "nbds+unix", "nbd+vsock", "nbds+vsock"};

bool is_tls_scheme(std::string_view scheme) { return scheme.starts_with("nbds"); }
bool is_unix_scheme(std::string_view scheme) { return scheme.ends_with("+unix"); }

// %XX decoded, lower-cased: query parameter names as a URI parser might read them.
std::string folded_name(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%' && i + 2 < text.size() && hex_digit(text[i + 1]) >= 0 && hex_digit(text[i + 2]) >= 0) {
      c = static_cast<char>(hex_digit(text[i + 1]) * 16 + hex_digit(text[i + 2]));
      i += 2;
    }
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// The parts of an NBD URI this file cares about; views into the text.
struct UriParts {
  std::string_view scheme;    // before "://"
  std::string_view authority; // [userinfo@]host[:port], up to the path, query or fragment
  std::string_view query;     // after '?', up to '#'; empty when none
};

std::optional<UriParts> split_uri(std::string_view text) {
  const auto sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0)
    return std::nullopt;
  UriParts parts;
  parts.scheme = text.substr(0, sep);
  const std::string_view rest = text.substr(sep + 3);
  parts.authority = rest.substr(0, rest.find_first_of("/?#"));
  const auto question = rest.find('?');
  if (question != std::string_view::npos) {
    const std::string_view after = rest.substr(question + 1);
    parts.query = after.substr(0, after.find('#'));
  }
  return parts;
}

// The userinfo's password, if the URI has one (nbd://user:secret@host/).
std::optional<std::string_view> password_of(const UriParts &parts) {
  const auto at = parts.authority.rfind('@');
  if (at == std::string_view::npos)
    return std::nullopt;
  const std::string_view userinfo = parts.authority.substr(0, at);
  const auto colon = userinfo.find(':');
  if (colon == std::string_view::npos)
    return std::nullopt;
  return userinfo.substr(colon + 1);
}

void apply_nbd_uri(const Validator &check, const Value &v, const DeviceConfig & /*device*/, BackendConfig &out) {
  static const std::string what = "an NBD URI such as nbd://host/export or nbd+unix:///export?socket=/run/nbd.sock";
  const std::string &text = check.scalar(v, what);
  const auto parts = split_uri(text);
  // First, so that no later message shows the secret.
  if (parts) {
    if (auto password = password_of(*parts)) {
      const std::string_view uri = text;
      const auto start = static_cast<std::size_t>(password->data() - text.data());
      const std::string hidden =
          std::string(uri.substr(0, start)) + "***" + std::string(uri.substr(start + password->size()));
      check.report().fail(v.at, v.key,
                          "expected a URI without a password, got one in " + quoted(hidden, '\'') +
                              ": secrets come from files, never from the URI; put the PSK in tls-psk-file and use "
                              "an nbds URI (the user name may stay: nbds://alice@host/export)");
    }
  }
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      check.report().expected(v, "a URI without spaces, control characters or non-ASCII bytes (percent-encode them)");
  if (!parts)
    check.report().expected(v, what);
  if (std::find(nbd_schemes.begin(), nbd_schemes.end(), parts->scheme) == nbd_schemes.end())
    check.report().fail(v.at, v.key,
                        "expected a URI scheme of " + list(nbd_schemes) + ", got " + quoted(parts->scheme, '\'') +
                            " in " + describe(v));
  bool socket = false;
  std::string_view query = parts->query;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const auto eq = param.find('=');
    const std::string name = folded_name(param.substr(0, eq));
    if (name == "tls-psk-file" || name == "tls-certificates")
      check.report().expected(v, "a URI without a " + name + " query parameter",
                              ": paths and secrets come from the configuration; name the file with the backend key " +
                                  name + " instead");
    if (name == "socket" && eq != std::string_view::npos && eq + 1 < param.size())
      socket = true;
  }
  if (is_unix_scheme(parts->scheme) && !socket)
    check.report().expected(v, "a socket= query parameter naming the server's socket in an " +
                                   std::string(parts->scheme) + " URI (nbd+unix:///export?socket=/run/nbd.sock)");
  out.nbd.uri = text;
}

void apply_nbd_connections(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                           BackendConfig &out) {
  out.nbd.connections = check.count(v, 1, max_nbd_connections);
}

// Only the form is checked: the file is read when connecting, which reports a missing one.
std::string absolute_path(const Validator &check, const Value &v) {
  static const std::string what = "an absolute path (starting with '/')";
  const std::string &text = check.scalar(v, what);
  if (text.empty() || text.front() != '/')
    check.report().expected(v, what);
  for (unsigned char c : text)
    if (c < 0x20 || c == 0x7f)
      check.report().expected(v, "a path without control characters");
  return text;
}

void apply_nbd_tls_certificates(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                BackendConfig &out) {
  out.nbd.tls_certificates = absolute_path(check, v);
}

void apply_nbd_tls_psk_file(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                            BackendConfig &out) {
  out.nbd.tls_psk_file = absolute_path(check, v);
}

std::chrono::milliseconds duration(const Validator &check, const Value &v) {
  const auto parsed = parse_duration(check.scalar(v, "a duration such as 500ms, 30s, 2m or 1h, or 0"));
  if (!parsed)
    check.report().fail(v.at, v.key, "expected " + escaped(parsed.error));
  return *parsed.value;
}

void apply_nbd_reconnect_timeout(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                 BackendConfig &out) {
  out.nbd.reconnect_timeout = duration(check, v);
}

void apply_nbd_request_timeout(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                               BackendConfig &out) {
  out.nbd.request_timeout = duration(check, v);
}

void apply_nbd_resize_poll_interval(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                    BackendConfig &out) {
  out.nbd.resize_poll_interval = duration(check, v);
}

void apply_nbd_structured_replies(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                  BackendConfig &out) {
  out.nbd.structured_replies = check.boolean(v);
}

// uri comes first: the TLS keys are checked against its scheme.
constexpr std::array<BackendOption, 8> nbd_options{{
    {"uri", true, &apply_nbd_uri},
    {"connections", false, &apply_nbd_connections},
    {"tls-certificates", false, &apply_nbd_tls_certificates},
    {"tls-psk-file", false, &apply_nbd_tls_psk_file},
    {"reconnect-timeout", false, &apply_nbd_reconnect_timeout},
    {"request-timeout", false, &apply_nbd_request_timeout},
    {"structured-replies", false, &apply_nbd_structured_replies},
    {"resize-poll-interval", false, &apply_nbd_resize_poll_interval},
}};

void check_nbd_together(const Validator &check, const RawBackend &raw, const BackendConfig &out) {
  const Value *uri = nullptr;
  const Value *first_tls = nullptr;
  for (const auto &v : raw.options) {
    if (v.name == "uri")
      uri = &v;
    if (v.name != "tls-certificates" && v.name != "tls-psk-file")
      continue;
    if (first_tls)
      check.report().fail(v.key_at, v.key,
                          "expected tls-certificates or tls-psk-file, not both, got both (" + first_tls->name +
                              " on line " + std::to_string(first_tls->key_at.line) +
                              "): certificates and a PSK are two ways to authenticate, pick one");
    first_tls = &v;
  }
  if (first_tls && uri) {
    const std::string_view scheme = split_uri(out.nbd.uri)->scheme;
    if (!is_tls_scheme(scheme))
      check.report().fail(first_tls->key_at, first_tls->key,
                          "expected a TLS URI scheme (nbds, nbds+unix or nbds+vsock) for this key, got " +
                              quoted(scheme, '\'') + " in uri (line " + std::to_string(uri->at.line) +
                              "): without TLS the key would be ignored");
  }
}

// ---- The iscsi backend ----

constexpr std::uint64_t max_iscsi_lun = 16383;    // SAM flat space addressing
constexpr std::size_t max_iscsi_name_bytes = 223; // RFC 3720, 3.2.6.1
constexpr std::size_t max_chap_name_bytes = 255;  // what libiscsi keeps
constexpr std::string_view iscsi_uri_example = "iscsi://host[:port]/iqn.2026-11.org.example:disk0/1";

void apply_iscsi_uri(const Validator &check, const Value &v, const DeviceConfig & /*device*/, BackendConfig &out) {
  const std::string what = "an iSCSI URI such as " + std::string(iscsi_uri_example);
  const std::string &text = check.scalar(v, what);
  const auto parts = split_uri(text);
  // First, so that no later message shows the secret (libiscsi reads user%password@ there).
  if (parts) {
    if (const auto at = parts->authority.rfind('@'); at != std::string_view::npos) {
      const std::string hidden = std::string(parts->scheme) + "://***@" +
                                 std::string(std::string_view(text).substr(parts->scheme.size() + 3 + at + 1));
      check.report().fail(v.at, v.key,
                          "expected a URI without user information, got one in " + quoted(hidden, '\'') +
                              ": secrets come from files, never from the URI; name the CHAP user with chap.username "
                              "and its password with chap.password-file");
    }
  }
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      check.report().expected(v, "a URI without spaces, control characters or non-ASCII bytes (percent-encode them)");
  if (!parts)
    check.report().expected(v, what);
  if (parts->scheme != "iscsi")
    check.report().fail(v.at, v.key,
                        "expected a URI scheme of iscsi, got " + quoted(parts->scheme, '\'') + " in " + describe(v));
  if (text.find_first_of("?#") != std::string::npos)
    check.report().expected(v, "a URI without a query or fragment",
                            ": digests and CHAP are set with the backend keys header-digest and chap");
  // host[:port], the host possibly an IPv6 address in brackets.
  std::string_view host = parts->authority;
  std::string_view port;
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos || close == 1)
      check.report().expected(v, "an IPv6 address in brackets such as [::1] as the URI's host");
    const std::string_view after = host.substr(close + 1);
    if (!after.empty() && !after.starts_with(':'))
      check.report().expected(v, what);
    port = after.empty() ? after : after.substr(1);
    host = host.substr(0, close + 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
    if (port.empty())
      check.report().expected(v, "a port number after ':' in the URI's host");
  }
  if (host.empty())
    check.report().expected(v, "a host in the URI (" + std::string(iscsi_uri_example) + ")");
  if (!port.empty()) {
    const auto n = decimal(port);
    if (!n || *n == 0 || *n > 65535)
      check.report().fail(
          v.at, v.key, "expected a port from 1 to 65535 in the URI, got " + quoted(port, '\'') + " in " + describe(v));
  }
  // /target-name/lun
  const std::string_view path = std::string_view(text).substr(parts->scheme.size() + 3 + parts->authority.size());
  const auto slash = path.rfind('/');
  if (path.size() < 2 || slash == 0 || slash == std::string_view::npos)
    check.report().expected(v, what, " (the target name and the LUN follow the host)");
  const std::string_view target = path.substr(1, slash - 1);
  const std::string_view lun = path.substr(slash + 1);
  if (target.empty())
    check.report().expected(v, what, " (the target name and the LUN follow the host)");
  if (target.find('/') != std::string_view::npos)
    check.report().expected(v, what, " (a target name has no '/')");
  const auto n = decimal(lun);
  if (!n || *n > max_iscsi_lun)
    check.report().fail(v.at, v.key,
                        "expected a LUN from 0 to " + std::to_string(max_iscsi_lun) + " at the end of the URI, got " +
                            quoted(lun, '\'') + " in " + describe(v));
  out.iscsi.uri = text;
}

void apply_iscsi_initiator_name(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                BackendConfig &out) {
  const std::string what = "an iSCSI name starting with iqn., eui. or naa. such as iqn.2026-11.org.example:host1 "
                           "(at most " +
                           std::to_string(max_iscsi_name_bytes) + " letters, digits, '.', '-' and ':')";
  const std::string &text = check.scalar(v, what);
  if (text.size() > max_iscsi_name_bytes ||
      !(text.starts_with("iqn.") || text.starts_with("eui.") || text.starts_with("naa.")) || text.size() < 5)
    check.report().expected(v, what);
  for (char c : text)
    if (!is_name_char(c) && c != '.' && c != ':')
      check.report().expected(v, what);
  if (text.find('_') != std::string::npos)
    check.report().expected(v, what);
  out.iscsi.initiator_name = text;
}

std::string chap_user(const Validator &check, const Value &v, const std::string &note = {}) {
  const std::string what =
      "a CHAP user name of 1 to " + std::to_string(max_chap_name_bytes) + " bytes of printable ASCII without spaces";
  if (!v.present())
    check.report().expected(v, what, note);
  const std::string &text = check.scalar(v, what);
  if (text.empty() || text.size() > max_chap_name_bytes)
    check.report().expected(v, what);
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      check.report().expected(v, what);
  return text;
}

constexpr std::array<std::string_view, 4> chap_keys{"username", "password-file", "target-username",
                                                    "target-password-file"};

void apply_iscsi_chap(const Validator &check, const Value &v, const DeviceConfig & /*device*/, BackendConfig &out) {
  if (v.kind != Value::Kind::map)
    check.report().expected(v, "a map with the keys username and password-file (and target-username and "
                               "target-password-file for mutual CHAP)");
  std::array<const Value *, chap_keys.size()> given{};
  for (const auto &child : v.children) {
    const auto known = std::find(chap_keys.begin(), chap_keys.end(), child.name);
    if (known == chap_keys.end()) {
      std::string hint;
      if (auto k = near_miss(child.name, chap_keys))
        hint = " (did you mean '" + std::string(*k) + "'?)";
      check.report().fail(child.key_at, child.key,
                          "expected a chap key (" + list(chap_keys) + "), got " + quoted(child.name, '\'') + hint);
    }
    given[static_cast<std::size_t>(known - chap_keys.begin())] = &child;
  }
  auto value = [&](std::size_t i) { return given[i] ? *given[i] : missing_value(v.key, chap_keys[i], v.at); };
  static const std::string path_what = "an absolute path (starting with '/')";
  out.iscsi.chap.username = chap_user(check, value(0));
  if (!given[1])
    check.report().expected(value(1), path_what, " (the file holding the CHAP password)");
  out.iscsi.chap.password_file = absolute_path(check, *given[1]);
  if (!given[2] && !given[3])
    return;
  static const std::string mutual = " (mutual CHAP needs both target-username and target-password-file)";
  out.iscsi.chap.target_username = chap_user(check, value(2), mutual);
  if (!given[3])
    check.report().expected(value(3), path_what, mutual);
  out.iscsi.chap.target_password_file = absolute_path(check, *given[3]);
}

void apply_iscsi_header_digest(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                               BackendConfig &out) {
  using D = IscsiBackendConfig::HeaderDigest;
  static constexpr std::array<std::pair<std::string_view, D>, 3> digests{{
      {"none", D::none},
      {"crc32c", D::crc32c},
      {"prefer-crc32c", D::prefer_crc32c},
  }};
  out.iscsi.header_digest = check.choice(v, digests);
}

void apply_iscsi_reconnect_timeout(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                   BackendConfig &out) {
  out.iscsi.reconnect_timeout = duration(check, v);
}

void apply_iscsi_request_timeout(const Validator &check, const Value &v, const DeviceConfig & /*device*/,
                                 BackendConfig &out) {
  out.iscsi.request_timeout = duration(check, v);
}

constexpr std::array<BackendOption, 6> iscsi_options{{
    {"uri", true, &apply_iscsi_uri},
    {"initiator-name", false, &apply_iscsi_initiator_name},
    {"chap", false, &apply_iscsi_chap},
    {"header-digest", false, &apply_iscsi_header_digest},
    {"reconnect-timeout", false, &apply_iscsi_reconnect_timeout},
    {"request-timeout", false, &apply_iscsi_request_timeout},
}};

constexpr std::array<BackendKind, 3> backend_kinds{{
    {"memory", "a", BackendConfig::Type::memory, true, memory_options, nullptr},
    {"nbd", "an", BackendConfig::Type::nbd, true, nbd_options, &check_nbd_together},
    {"iscsi", "an", BackendConfig::Type::iscsi, true, iscsi_options, nullptr},
}};

BackendConfig Validator::backend(const RawBackend &raw, const DeviceConfig &device) const {
  if (!raw.self.present())
    report_.expected(raw.self, "a map with the key 'type'");

  std::string all;
  std::vector<std::string_view> available;
  for (const auto &kind : backend_kinds) {
    all += (all.empty() ? "" : ", ") + std::string(kind.name);
    if (kind.available)
      available.push_back(kind.name);
  }
  const std::string what = "a backend type (" + all + ")";
  const std::string &type = scalar(raw.type, what);
  const BackendKind *kind = nullptr;
  for (const auto &k : backend_kinds)
    if (type == k.name)
      kind = &k;
  if (!kind)
    report_.expected(raw.type, what);
  if (!kind->available)
    report_.expected(raw.type, either(available),
                     ": backend type '" + std::string(kind->name) + "' is not available in this version");

  BackendConfig out;
  out.type = kind->type;
  std::vector<std::string_view> names{"type"};
  for (const auto &option : kind->options)
    names.push_back(option.name);
  for (const auto &v : raw.options) {
    if (std::find(names.begin(), names.end(), v.name) != names.end())
      continue;
    std::string hint;
    if (auto k = near_miss(v.name, names))
      hint = " (did you mean '" + std::string(*k) + "'?)";
    report_.fail(v.key_at, v.key,
                 "expected " + std::string(kind->article) + " " + std::string(kind->name) + " backend key (" +
                     list(names) + "), got " + quoted(v.name, '\'') + hint);
  }
  for (const auto &option : kind->options) {
    const Value *given = nullptr;
    for (const auto &v : raw.options)
      if (v.name == option.name)
        given = &v;
    if (given)
      option.apply(*this, *given, device, out);
    else if (option.required)
      option.apply(*this, missing_value(raw.self.key, option.name, raw.self.at), device, out);
  }
  if (kind->check_together)
    kind->check_together(*this, raw, out);
  return out;
}

std::string read_file(const std::string &path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw ConfigError(path, 0, 0, {}, errno_message("cannot open", errno));
  std::string text;
  std::array<char, 16384> buf{};
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw ConfigError(path, 0, 0, {}, errno_message("cannot read", err));
    }
    if (n == 0)
      break;
    text.append(buf.data(), static_cast<std::size_t>(n));
    if (text.size() > max_file_bytes) {
      ::close(fd);
      throw ConfigError(path, 0, 0, {}, "expected a configuration file of at most 1 MiB, got more");
    }
  }
  ::close(fd);
  return text;
}

} // namespace

Config parse_config(const std::string &text, const std::string &source_name) {
  const Reporter report(source_name);
  return Validator(report).config(ShapeReader(report).document(text), source_name);
}

Config load_config(const std::string &path) { return parse_config(read_file(path), path); }

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

const char *to_string(BackendConfig::Type type) noexcept {
  switch (type) {
  case BackendConfig::Type::memory:
    return "memory";
  case BackendConfig::Type::nbd:
    return "nbd";
  case BackendConfig::Type::iscsi:
    return "iscsi";
  }
  return "?";
}

bool DeviceConfig::same_settings(const DeviceConfig &o) const {
  return name == o.name && backend == o.backend && queues == o.queues && queue_size == o.queue_size &&
         logical_block_size == o.logical_block_size && read_only == o.read_only && serial == o.serial &&
         attach == o.attach && control_timeout == o.control_timeout;
}

std::vector<std::string> config_keys() {
  std::vector<std::string> keys(top_keys.begin(), top_keys.end());
  keys.insert(keys.end(), device_keys.begin(), device_keys.end());
  keys.emplace_back("type");
  for (const auto &kind : backend_kinds)
    for (const auto &o : kind.options)
      if (std::find(keys.begin(), keys.end(), o.name) == keys.end())
        keys.emplace_back(o.name);
  keys.insert(keys.end(), chap_keys.begin(), chap_keys.end());
  return keys;
}

} // namespace vb
