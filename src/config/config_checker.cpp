#include "vduse-bridge/config_checker.h"

#include "common/units.h"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace vb {

ConfigError::ConfigError(const std::string &file, int line, int column, const std::string &key,
                         const std::string &problem)
    : std::runtime_error(file + (line > 0 ? ":" + std::to_string(line) + ":" + std::to_string(column) : "") + ": " +
                         (key.empty() ? "" : key + ": ") + problem),
      line_(line), column_(column), key_(key) {}

namespace {
std::string joined_messages(const std::vector<ConfigError> &all) {
  std::string out;
  for (const auto &e : all)
    out += (out.empty() ? "" : "\n") + std::string(e.what());
  return out;
}
} // namespace

ConfigError::ConfigError(const std::vector<ConfigError> &all)
    : std::runtime_error(joined_messages(all)), line_(all.empty() ? 0 : all.front().line()),
      column_(all.empty() ? 0 : all.front().column()), key_(all.empty() ? std::string() : all.front().key()),
      count_(all.size()) {}

std::vector<ConfigError> ConfigChecker::errors() const {
  std::vector<ConfigError> out = errors_;
  std::stable_sort(out.begin(), out.end(), [](const ConfigError &a, const ConfigError &b) {
    return a.line() != b.line() ? a.line() < b.line() : a.column() < b.column();
  });
  return out;
}

std::string config_join(const std::string &path, std::string_view name) {
  return path.empty() ? config_escaped(name) : path + "." + config_escaped(name);
}

ConfigValue missing_config_value(const std::string &path, std::string_view name, ConfigPosition enclosing) {
  ConfigValue v;
  v.name = name;
  v.key = config_join(path, name);
  v.at = enclosing;
  v.key_at = enclosing;
  return v;
}

std::string config_escaped(std::string_view text, std::size_t limit) {
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

std::string config_quoted(std::string_view text, char quote) {
  std::string out = quote + config_escaped(text, config_shown_bytes);
  if (text.size() > config_shown_bytes)
    return out + "..." + quote + " (" + std::to_string(text.size()) + " bytes)";
  return out + quote;
}

// Quoted (or explicitly tagged) scalars show in double quotes so that "got \"2\"" explains why a
// number was not accepted.
std::string config_describe(const ConfigValue &v) {
  switch (v.kind) {
  case ConfigValue::Kind::missing:
    return "nothing (the key is missing)";
  case ConfigValue::Kind::null:
    return "an empty value";
  case ConfigValue::Kind::sequence:
    return "a sequence";
  case ConfigValue::Kind::map:
    return "a map";
  case ConfigValue::Kind::scalar:
    break;
  }
  return config_quoted(v.text, v.plain() ? '\'' : '"');
}

std::string config_list(std::span<const std::string_view> names) {
  std::string out;
  for (auto name : names)
    out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

std::string config_either(std::span<const std::string_view> names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + std::string(names[i]);
  return out;
}

namespace {

std::string folded_key(std::string_view name) {
  std::string folded(name);
  for (auto &c : folded)
    c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return folded;
}

// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
// neighbours, each 1.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i)
    d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j)
    d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The closest of known and its distance, if within the bound.
std::optional<std::pair<std::string_view, std::size_t>> closest(std::string_view name,
                                                                std::span<const std::string_view> known) {
  const std::string folded = folded_key(name);
  if (folded.size() > 64) // no key is that long; keep the table small
    return std::nullopt;
  const std::size_t bound = folded.size() <= 4 ? 1 : 2;
  std::optional<std::pair<std::string_view, std::size_t>> best;
  for (auto k : known) {
    const std::size_t d = edit_distance(folded, k);
    if (d <= bound && (!best || d < best->second))
      best = std::pair{k, d};
  }
  return best;
}

} // namespace

std::optional<std::string_view> config_near_miss(std::string_view name, std::span<const std::string_view> known) {
  if (auto best = closest(name, known))
    return best->first;
  return std::nullopt;
}

std::string config_key_hint(std::string_view name, std::span<const std::string_view> known,
                            std::span<const ConfigKeyPlace> elsewhere) {
  const std::string quoted = config_quoted(name, '\'');
  for (const auto &place : elsewhere)
    if (std::find(place.keys.begin(), place.keys.end(), folded_key(name)) != place.keys.end())
      return " (" + quoted + " belongs " + std::string(place.where) + ")";
  if (auto k = config_near_miss(name, known))
    return " (did you mean '" + std::string(*k) + "'?)";
  for (const auto &place : elsewhere)
    if (auto k = config_near_miss(name, place.keys))
      return " (did you mean '" + std::string(*k) + "', which belongs " + std::string(place.where) + "?)";
  return {};
}

std::optional<std::uint64_t> config_decimal(std::string_view s) {
  std::uint64_t n = 0;
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), n, 10);
  if (ec != std::errc{} || ptr != s.data() + s.size())
    return std::nullopt;
  return n;
}

void ConfigChecker::fail(ConfigPosition at, const std::string &key, const std::string &problem) const {
  throw ConfigError(source_, at.line, at.column, key, problem);
}

void ConfigChecker::expected(const ConfigValue &v, const std::string &what, const std::string &note) const {
  fail(v.at, v.key, "expected " + what + ", got " + config_describe(v) + note);
}

const std::string &ConfigChecker::scalar(const ConfigValue &v, const std::string &what) const {
  if (v.kind != ConfigValue::Kind::scalar)
    expected(v, what);
  return v.text;
}

std::uint64_t ConfigChecker::integer(const ConfigValue &v, std::uint64_t min, std::uint64_t max,
                                     const std::string &what) const {
  const std::string &text = scalar(v, what);
  if (!v.plain() && v.tag != "tag:yaml.org,2002:int")
    expected(v, what + " (without quotes)");
  auto n = config_decimal(text);
  if (!n || *n < min || *n > max)
    expected(v, what);
  return *n;
}

unsigned ConfigChecker::count(const ConfigValue &v, unsigned min, unsigned max) const {
  return static_cast<unsigned>(
      integer(v, min, max, "an integer from " + std::to_string(min) + " to " + std::to_string(max)));
}

unsigned ConfigChecker::power_of_two(const ConfigValue &v, unsigned min, unsigned max) const {
  const std::string what = "a power of two from " + std::to_string(min) + " to " + std::to_string(max);
  const auto n = integer(v, min, max, what);
  if ((n & (n - 1)) != 0)
    expected(v, what);
  return static_cast<unsigned>(n);
}

bool ConfigChecker::boolean(const ConfigValue &v) const {
  static constexpr std::string_view what = "true or false";
  const std::string &text = scalar(v, std::string(what));
  if (!v.plain() && v.tag != "tag:yaml.org,2002:bool")
    expected(v, std::string(what) + " (without quotes)");
  if (text == "true" || text == "True" || text == "TRUE")
    return true;
  if (text == "false" || text == "False" || text == "FALSE")
    return false;
  expected(v, std::string(what));
}

std::chrono::milliseconds ConfigChecker::duration(const ConfigValue &v,
                                                  std::optional<std::chrono::milliseconds> forever) const {
  const std::string &text = scalar(v, forever ? "a duration such as 500ms, 30s, 2m or 1h, 0, or forever"
                                              : "a duration such as 500ms, 30s, 2m or 1h, or 0");
  if (forever && text == "forever")
    return *forever;
  const auto parsed = parse_duration(text);
  if (!parsed)
    fail(v.at, v.key,
         "expected " + config_escaped(parsed.error) +
             (forever             ? " (for no limit write forever)"
              : text == "forever" ? " (this key has no forever)"
                                  : ""));
  return *parsed.value;
}

std::uint64_t ConfigChecker::size(const ConfigValue &v) const {
  const auto parsed = parse_size(scalar(v, "a size such as 512, 64K, 1G or 1GiB"));
  if (!parsed)
    fail(v.at, v.key, "expected " + config_escaped(parsed.error));
  return *parsed.value;
}

std::string ConfigChecker::absolute_path(const ConfigValue &v) const {
  static const std::string what = "an absolute path (starting with '/')";
  const std::string &text = scalar(v, what);
  if (text.empty() || text.front() != '/')
    expected(v, what);
  for (unsigned char c : text)
    if (c < 0x20 || c == 0x7f)
      expected(v, "a path without control characters");
  return text;
}

std::size_t ConfigChecker::index_of(const ConfigValue &child, std::span<const std::string_view> keys,
                                    std::string_view kind) const {
  const auto known = std::find(keys.begin(), keys.end(), child.name);
  if (known == keys.end())
    fail(child.key_at, child.key,
         "expected " + std::string(kind) + " (" + config_list(keys) + "), got " + config_quoted(child.name, '\'') +
             config_key_hint(child.name, keys));
  return static_cast<std::size_t>(known - keys.begin());
}

} // namespace vb
