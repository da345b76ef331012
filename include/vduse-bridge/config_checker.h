// The shared validator of the configuration file: what a backend module uses to read and check
// its keys, so that every problem is reported the same way (file, line, column, dotted key,
// "expected ..., got ...") whichever backend it is about.
//
// The file is read in two steps (src/config/config.cpp): first its shape, which records every
// value as a ConfigValue with its position, then the values, which the device part and each
// backend module interpret through a ConfigChecker. Any check that fails throws ConfigError;
// nothing here returns an error. The parser catches them at each key (ConfigChecker::attempt)
// and goes on with the next one, so that one pass reports every problem in the file.
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
//
// Several problems make one ConfigError too (what load_config() throws for a file with more
// than one): what() is then their lines in file order joined by '\n', line(), column() and key()
// are the first one's, and all() lists them.
class ConfigError : public std::runtime_error {
public:
  ConfigError(const std::string &file, int line, int column, const std::string &key, const std::string &problem);
  // At least one; a single one is returned as it is.
  explicit ConfigError(const std::vector<ConfigError> &all);

  int line() const noexcept { return line_; }
  int column() const noexcept { return column_; }
  const std::string &key() const noexcept { return key_; }
  // How many problems what() lists (1 unless made from several).
  std::size_t count() const noexcept { return count_; }

private:
  int line_;
  int column_;
  std::string key_;
  std::size_t count_ = 1;
};

// Thrown (by apply_backend_keys) when the problems of a step are already recorded in the checker,
// so that what depends on that step is skipped: attempt() records nothing more for it.
struct ConfigErrorsRecorded {};

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
// The closest of known to name: "queue_size", "Queue-Size" and "queue-sise" are near misses of
// "queue-size". Case and '_' for '-' do not count; then the optimal string alignment distance
// (Damerau-Levenshtein: a letter added, removed, changed, or two swapped) must be at most 2, and
// at most 1 for a name of 4 letters or fewer. The first of the closest wins.
std::optional<std::string_view> config_near_miss(std::string_view name, std::span<const std::string_view> known);
// Keys that belong elsewhere, for hints: where ("under backend:") and which keys.
struct ConfigKeyPlace {
  std::string_view where; // "under backend:", "at the device level", "under a device in devices:"
  std::span<const std::string_view> keys;
};
// The hint for an unknown key, with a leading space, or "": "('uri' belongs under backend:)" when
// another place has the key as written, else "(did you mean 'queues'?)" for a near miss among
// known, else a near miss elsewhere "(did you mean 'serial', at the device level?)".
std::string config_key_hint(std::string_view name, std::span<const std::string_view> known,
                            std::span<const ConfigKeyPlace> elsewhere = {});
// The keys of a device map, and of the top level.
inline constexpr std::array<std::string_view, 10> config_device_keys{
    "name",      "backend", "queues", "queue-size",      "logical-block-size",
    "read-only", "serial",  "attach", "control-timeout", "busy-poll-us"};
inline constexpr std::array<std::string_view, 1> config_top_keys{"devices"};
// A plain decimal number, or nothing.
std::optional<std::uint64_t> config_decimal(std::string_view s);

class ConfigChecker {
public:
  // source names the file in messages; it must outlive the checker.
  explicit ConfigChecker(const std::string &source) : source_(source) {}

  const std::string &source() const noexcept { return source_; }

  // Runs step(); a ConfigError it throws is recorded instead (false is returned), so that the
  // caller goes on with the next key. ConfigErrorsRecorded (already recorded) returns false too.
  template <typename F> bool attempt(F &&step) const {
    try {
      step();
      return true;
    } catch (const ConfigErrorsRecorded &) {
    } catch (const ConfigError &e) {
      errors_.push_back(e);
    }
    return false;
  }
  // Every problem recorded so far, in file order (by line, then column; stable).
  std::vector<ConfigError> errors() const;
  bool failed() const noexcept { return !errors_.empty(); }
  std::size_t recorded() const noexcept { return errors_.size(); }

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
  // 500ms, 30s, 2m, 1h or 0, at most max_duration (units.h). When forever is given the word
  // "forever" is accepted too and returns *forever: what the key stores for "no limit"
  // (vb::forever_duration, i.e. milliseconds::max(), or 0 for a key where 0 already means no limit).
  std::chrono::milliseconds duration(const ConfigValue &v, std::optional<std::chrono::milliseconds> forever = {}) const;
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
  mutable std::vector<ConfigError> errors_; // what attempt() caught, in the order it ran
};

} // namespace vb
