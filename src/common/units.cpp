#include "common/units.h"

#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <limits>

namespace vb {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

// Splits "123abc" into 123 and "abc"; fails on no digits or overflow.
bool split_number(std::string_view s, std::uint64_t &number, std::string_view &unit) {
  const char *end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, number, 10);
  if (ec != std::errc{} || ptr == s.data())
    return false;
  unit = trim(std::string_view(ptr, static_cast<std::size_t>(end - ptr)));
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

} // namespace

Parsed<std::uint64_t> parse_size(std::string_view text) {
  using R = Parsed<std::uint64_t>;
  const std::string_view s = trim(text);
  if (s.empty())
    return R::fail("a size such as 512, 64K, 1G or 1GiB, got an empty value");
  if (s.front() == '-' || s.front() == '+')
    return R::fail("a size without a sign, got '" + std::string(s) + "'");
  std::uint64_t n = 0;
  std::string_view unit;
  if (!split_number(s, n, unit))
    return R::fail("a size such as 512, 64K, 1G or 1GiB, got '" + std::string(s) + "'");

  struct Suffix {
    std::string_view names[3];
    unsigned shift;
  };
  static constexpr std::array<Suffix, 5> suffixes{{
      {{"", "B", "B"}, 0},
      {{"K", "KB", "KiB"}, 10},
      {{"M", "MB", "MiB"}, 20},
      {{"G", "GB", "GiB"}, 30},
      {{"T", "TB", "TiB"}, 40},
  }};
  for (const auto &suffix : suffixes) {
    for (auto name : suffix.names) {
      if (!iequals(unit, name))
        continue;
      if (suffix.shift > 0 && n > (std::numeric_limits<std::uint64_t>::max() >> suffix.shift))
        return R::fail("a size below 16 EiB, got '" + std::string(s) + "'");
      return R::ok(n << suffix.shift);
    }
  }
  return R::fail("a size unit of K, M, G, T (or KiB, MiB, GiB, TiB), got '" + std::string(unit) + "'");
}

Parsed<std::chrono::milliseconds> parse_duration(std::string_view text) {
  using R = Parsed<std::chrono::milliseconds>;
  const std::string_view s = trim(text);
  std::uint64_t n = 0;
  std::string_view unit;
  if (s.empty() || s.front() == '-' || s.front() == '+' || !split_number(s, n, unit))
    return R::fail("a duration such as 500ms, 30s, 2m or 1h, got '" + std::string(s) + "'");
  std::uint64_t factor = 0;
  if (unit == "ms")
    factor = 1;
  else if (unit == "s")
    factor = 1000;
  else if (unit == "m" || unit == "min")
    factor = 60'000;
  else if (unit == "h")
    factor = 3'600'000;
  else if (unit.empty() && n == 0)
    return R::ok(std::chrono::milliseconds(0));
  else if (unit.empty())
    return R::fail("a duration with a unit (ms, s, m, h), got '" + std::string(s) + "'");
  else
    return R::fail("a duration unit of ms, s, m or h, got '" + std::string(unit) + "'");
  // n * factor must not overflow either.
  const auto max = static_cast<std::uint64_t>(max_duration.count());
  if (n > max / factor || n * factor > max)
    return R::fail("a duration of at most 1000000h (about 114 years), got '" + std::string(s) + "'");
  return R::ok(std::chrono::milliseconds(static_cast<std::int64_t>(n * factor)));
}

std::string format_size(std::uint64_t bytes) {
  static constexpr std::array<const char *, 6> units{"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  std::size_t i = 0;
  double v = static_cast<double>(bytes);
  while (v >= 1024.0 && i + 1 < units.size()) {
    v /= 1024.0;
    ++i;
  }
  char buf[32];
  if (i == 0 || v == static_cast<double>(static_cast<std::uint64_t>(v)))
    (void)std::snprintf(buf, sizeof buf, "%llu %s", static_cast<unsigned long long>(v), units[i]);
  else
    (void)std::snprintf(buf, sizeof buf, "%.1f %s", v, units[i]);
  return buf;
}

std::string format_duration(std::chrono::milliseconds d) {
  if (d == forever_duration)
    return "forever";
  const long long ms = static_cast<long long>(d.count());
  if (ms == 0 || ms % 1000 != 0)
    return std::to_string(ms) + "ms";
  const long long s = ms / 1000;
  if (s % 3600 == 0)
    return std::to_string(s / 3600) + "h";
  if (s % 60 == 0)
    return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

} // namespace vb
