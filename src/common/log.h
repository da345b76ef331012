// Line-oriented logging to stderr. One write(2) per line so that lines from several
// threads never interleave. Under systemd (JOURNAL_STREAM set) each line carries a
// "<N>" syslog priority prefix so the journal records the level.
#pragma once

#include <cstdarg>

namespace vb {

enum class LogLevel { error = 3, warning = 4, info = 6, debug = 7 };

// Messages above this level are dropped. Set once at start-up, before threads exist.
void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;

// Safe from any thread, never throws, never allocates more than one line.
void log(LogLevel level, const char *fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
void vlog(LogLevel level, const char *fmt, std::va_list ap) noexcept __attribute__((format(printf, 2, 0)));

#define VB_LOG_ERROR(...) ::vb::log(::vb::LogLevel::error, __VA_ARGS__)
#define VB_LOG_WARN(...) ::vb::log(::vb::LogLevel::warning, __VA_ARGS__)
#define VB_LOG_INFO(...) ::vb::log(::vb::LogLevel::info, __VA_ARGS__)
#define VB_LOG_DEBUG(...)                                                                                              \
  do {                                                                                                                 \
    if (::vb::log_level() >= ::vb::LogLevel::debug)                                                                    \
      ::vb::log(::vb::LogLevel::debug, __VA_ARGS__);                                                                   \
  } while (0)

} // namespace vb
