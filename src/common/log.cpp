#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace vb {
namespace {

std::atomic<LogLevel> g_level{LogLevel::info};

const char *level_name(LogLevel level) {
  switch (level) {
  case LogLevel::error:
    return "error: ";
  case LogLevel::warning:
    return "warning: ";
  case LogLevel::info:
    return "";
  case LogLevel::debug:
    return "debug: ";
  }
  return "";
}

bool journal_attached() {
  // Read once, during the first log call, which happens before any thread starts.
  static const bool attached = std::getenv("JOURNAL_STREAM") != nullptr; // NOLINT(concurrency-mt-unsafe)
  return attached;
}

} // namespace

void set_log_level(LogLevel level) noexcept { g_level.store(level, std::memory_order_relaxed); }

LogLevel log_level() noexcept { return g_level.load(std::memory_order_relaxed); }

void vlog(LogLevel level, const char *fmt, std::va_list ap) noexcept {
  if (level > log_level())
    return;
  char line[1024];
  int n = 0;
  if (journal_attached())
    n = std::snprintf(line, sizeof line, "<%d>%s", static_cast<int>(level), level_name(level));
  else
    n = std::snprintf(line, sizeof line, "vduse-bridge: %s", level_name(level));
  if (n < 0)
    return;
  int m = std::vsnprintf(line + n, sizeof line - static_cast<std::size_t>(n), fmt, ap);
  if (m < 0)
    return;
  std::size_t len = static_cast<std::size_t>(n) + static_cast<std::size_t>(m);
  if (len > sizeof line - 2)
    len = sizeof line - 2; // truncated; keep the newline
  line[len++] = '\n';
  // Best effort: a failed log write has nowhere to be reported.
  [[maybe_unused]] ssize_t rc = ::write(STDERR_FILENO, line, len);
}

void log(LogLevel level, const char *fmt, ...) noexcept {
  std::va_list ap;
  va_start(ap, fmt);
  vlog(level, fmt, ap);
  va_end(ap);
}

} // namespace vb
