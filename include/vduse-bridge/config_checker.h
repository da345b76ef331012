// The shared validator of the configuration file: what a backend module uses to read and check
// its keys, so that every problem is reported the same way (file, line, column, dotted key,
// "expected ..., got ...") whichever backend it is about.
//
// The file is read in two steps (src/config/config.cpp): first its shape, which records every
// value as a ConfigValue with its position, then the values, which the device part and each
// backend module interpret through a ConfigChecker. Any check that fails throws ConfigError;
// nothing here returns an error.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
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

// 1-based, as editors count; {0, 0} when no position is known.
struct ConfigPosition {
  int line = 0;
  int column = 0;
};

// One value as written in the file.
struct ConfigValue {
  enum class Kind { missing, null, scalar, sequence, map };

  std::string name;      // the key, e.g. "size"
  std::string key;       // its dotted path, e.g. "devices[0].backend.size"
  ConfigPosition at;     // the value; its key when empty; the enclosing map when missing
  ConfigPosition key_at; // the key; the enclosing map when missing
  Kind kind = Kind::missing;
  std::string text; // scalars only
  std::string tag;  // "?" plain, "!" quoted, else an explicit tag such as tag:yaml.org,2002:int
  // The entries of a map nested in a backend (iscsi's chap), in file order; empty otherwise.
  std::vector<ConfigValue> children;

  bool present() const { return kind != Kind::missing; }
  bool plain() const { return tag == "?"; }
};

// A value with nothing in the file: what a required key that is absent is checked as, so that
// its message says what was expected and where it belongs.
ConfigValue missing_config_value(const std::string &path, std::string_view name, ConfigPosition enclosing);

// Values longer than this are cut short in messages, which then give their length.
inline constexpr std::size_t config_shown_bytes = 40;
// The dotted path of a key ("devices[0].backend" + "size"); names from the file are escaped.
std::string config_join(const std::string &path, std::string_view name);

// Text helpers for messages (all keep a message on one line).
std::string config_escaped(std::string_view text, std::size_t limit = std::string_view::npos); // \xNN
std::string config_quoted(std::string_view text, char quote);       // 'text', long text cut with its length
std::string config_describe(const ConfigValue &v);                  // what the file has, for "got ..."
std::string config_list(std::span<const std::string_view> names);   // "a, b, c"
std::string config_either(std::span<const std::string_view> names); // "a, b or c"
// "queue_size" and "Queue-Size" are near misses of "queue-size".
std::optional<std::string_view> config_near_miss(std::string_view name, std::span<const std::string_view> known);
// A plain decimal number, or nothing.
std::optional<std::uint64_t> config_decimal(std::string_view s);

class ConfigChecker {
public:
  // source names the file in messages; it must outlive the checker.
  explicit ConfigChecker(const std::string &source) : source_(source) {}

  const std::string &source() const noexcept { return source_; }

  [[noreturn]] void fail(ConfigPosition at, const std::string &key, const std::string &problem) const;
  // "KEY: expected WHAT, got <what the file has>NOTE".
  [[noreturn]] void expected(const ConfigValue &v, const std::string &what, const std::string &note = {}) const;

  const std::string &scalar(const ConfigValue &v, const std::string &what) const;
  // A plain decimal integer in [min, max]; quotes are refused so that numbers look like numbers.
  std::uint64_t integer(const ConfigValue &v, std::uint64_t min, std::uint64_t max, const std::string &what) const;
  unsigned count(const ConfigValue &v, unsigned min, unsigned max) const;
  unsigned power_of_two(const ConfigValue &v, unsigned min, unsigned max) const;
  // YAML 1.2 booleans only: yes/no/on/off are YAML 1.1 and too easy to write by accident.
  bool boolean(const ConfigValue &v) const;
  // 500ms, 30s, 2m, 1h or 0.
  std::chrono::milliseconds duration(const ConfigValue &v) const;
  // 512, 64K, 1G, 1GiB: bytes.
  std::uint64_t size(const ConfigValue &v) const;
  // Only the form: the file is opened when it is used, which reports a missing one.
  std::string absolute_path(const ConfigValue &v) const;

  template <typename E, std::size_t N>
  E choice(const ConfigValue &v, const std::array<std::pair<std::string_view, E>, N> &choices) const {
    std::array<std::string_view, N> names{};
    for (std::size_t i = 0; i < N; ++i)
      names[i] = choices[i].first;
    const std::string what = config_either(names);
    const std::string &text = scalar(v, what);
    for (const auto &[spelling, e] : choices)
      if (text == spelling)
        return e;
    expected(v, what);
  }

  // The entries of a map nested in a backend map (iscsi's chap), indexed like keys: an unknown
  // key is refused naming the keys allowed (kind says what they are: "a chap key").
  template <std::size_t N>
  std::array<const ConfigValue *, N> entries(const ConfigValue &map, const std::array<std::string_view, N> &keys,
                                             std::string_view kind) const {
    std::array<const ConfigValue *, N> given{};
    for (const auto &child : map.children)
      given[index_of(child, keys, kind)] = &child;
    return given;
  }

private:
  std::size_t index_of(const ConfigValue &child, std::span<const std::string_view> keys, std::string_view kind) const;

  const std::string &source_;
};

} // namespace vb
