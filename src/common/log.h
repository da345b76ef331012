// Line-oriented logging to stderr. One write(2) per line so that lines from several
// threads never interleave. When stderr is the journal (JOURNAL_STREAM names the device and
// inode of stderr, sd-daemon(3)), each line carries a "<N>" syslog priority prefix so the
// journal records the level, and no time (the journal adds its own); otherwise each line starts
// with the local time, ISO 8601 with milliseconds.
#pragma once

#include <cstdarg>
#include <cstddef>
#include <ctime>
#include <string_view>

namespace vb {

enum class LogLevel { error = 3, warning = 4, info = 6, debug = 7 };

// Messages above this level are dropped. Set once at start-up, before threads exist.
void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;

// Safe from any thread, never throws, never allocates more than one line.
void log(LogLevel level, const char *fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
void vlog(LogLevel level, const char *fmt, std::va_list ap) noexcept __attribute__((format(printf, 2, 0)));

// "error", "warning", "info", "debug" (as --log-level takes them); false for anything else.
bool parse_log_level(std::string_view text, LogLevel &out) noexcept;

// The parts of a log line, exposed for tests.
namespace log_detail {
// Whether journal_stream (JOURNAL_STREAM's value, "DEV:INO", or null) names the file open on fd.
bool is_journal_stream(const char *journal_stream, int fd) noexcept;
// Writes the prefix of a line at level into buf (NUL-terminated, cut to size) and returns its
// length: "<3>error: " for the journal, else "2026-11-02T14:03:07.123+01:00 vduse-bridge: error: "
// with when in local time.
std::size_t format_prefix(char *buf, std::size_t size, LogLevel level, bool journal, const timespec &when) noexcept;
} // namespace log_detail

#define VB_LOG_ERROR(...) ::vb::log(::vb::LogLevel::error, __VA_ARGS__)
#define VB_LOG_WARN(...) ::vb::log(::vb::LogLevel::warning, __VA_ARGS__)
#define VB_LOG_INFO(...) ::vb::log(::vb::LogLevel::info, __VA_ARGS__)
#define VB_LOG_DEBUG(...)                                                                                              \
  do {                                                                                                                 \
    if (::vb::log_level() >= ::vb::LogLevel::debug)                                                                    \
      ::vb::log(::vb::LogLevel::debug, __VA_ARGS__);                                                                   \
  } while (0)

} // namespace vb
