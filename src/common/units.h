// Parsing of the human-friendly quantities used in configuration files and options:
// sizes ("1G", "512KiB", "4096") and durations ("30s", "250ms", "2m", "0").
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace vb {

// Either a value or a one-line explanation of what was expected. Setup code turns the
// explanation into an error that names the file, line and key.
template <typename T> struct Parsed {
  std::optional<T> value;
  std::string error;

  static Parsed ok(T v) { return {std::move(v), {}}; }
  static Parsed fail(std::string why) { return {std::nullopt, std::move(why)}; }
  explicit operator bool() const { return value.has_value(); }
};

// Bytes. Accepts a plain integer or an integer followed by K/M/G/T (also k, KB...) or
// KiB/MiB/GiB/TiB; all multipliers are powers of 1024 as for every block-device tool.
// Rejects negative numbers, fractions, empty strings, unknown suffixes and overflow.
Parsed<std::uint64_t> parse_size(std::string_view text);

// The longest duration parse_duration() accepts: 1000000h (about 114 years). Anything at most
// this long can be added to a steady clock's time point in nanoseconds (which hold 292 years)
// without overflow; a longer one is refused rather than wrapped or cut. "No limit" is not a
// very long duration but forever below, for the keys that allow it.
inline constexpr std::chrono::milliseconds max_duration = std::chrono::hours(1'000'000);
// "No limit" (reconnect-timeout: forever): code comparing against it must not convert it to
// nanoseconds or add it to a time point (compare elapsed milliseconds with it instead).
inline constexpr std::chrono::milliseconds forever_duration = std::chrono::milliseconds::max();

// A duration. Accepts an integer with a unit of ms, s, m or h; a bare "0" means zero.
// A bare non-zero number is rejected: "30" could mean seconds or milliseconds. Above
// max_duration is refused. "forever" is not a duration here (the configuration decides where it
// is allowed).
Parsed<std::chrono::milliseconds> parse_duration(std::string_view text);

// "1 GiB", "512 B", "1.5 MiB" for log lines.
std::string format_size(std::uint64_t bytes);

// "250ms", "30s", "2m", "1h": a duration as the configuration writes it (the largest exact unit);
// "forever" for forever_duration.
std::string format_duration(std::chrono::milliseconds d);

} // namespace vb
