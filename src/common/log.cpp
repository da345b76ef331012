#include "common/log.h"

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>
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
  // Read once, during the first log call, which happens before any thread starts (so does the
  // time zone's loading, for localtime_r).
  static const bool attached = [] {
    ::tzset();
    return log_detail::is_journal_stream(std::getenv("JOURNAL_STREAM"), STDERR_FILENO); // NOLINT(concurrency-mt-unsafe)
  }();
  return attached;
}

} // namespace

bool parse_log_level(std::string_view text, LogLevel &out) noexcept {
  if (text == "error")
    out = LogLevel::error;
  else if (text == "warning")
    out = LogLevel::warning;
  else if (text == "info")
    out = LogLevel::info;
  else if (text == "debug")
    out = LogLevel::debug;
  else
    return false;
  return true;
}

namespace log_detail {

bool is_journal_stream(const char *journal_stream, int fd) noexcept {
  if (!journal_stream)
    return false;
  std::uintmax_t dev = 0;
  std::uintmax_t ino = 0;
  char tail = 0;
  if (std::sscanf(journal_stream, "%" SCNuMAX ":%" SCNuMAX "%c", &dev, &ino, &tail) != 2)
    return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return false;
  return static_cast<std::uintmax_t>(st.st_dev) == dev && static_cast<std::uintmax_t>(st.st_ino) == ino;
}

std::size_t format_prefix(char *buf, std::size_t size, LogLevel level, bool journal, const timespec &when) noexcept {
  if (size == 0)
    return 0;
  int n = 0;
  if (journal) {
    n = std::snprintf(buf, size, "<%d>%s", static_cast<int>(level), level_name(level));
  } else {
    std::tm tm{};
    if (::localtime_r(&when.tv_sec, &tm) == nullptr)
      tm = std::tm{};
    char date[32];
    if (std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
      date[0] = '\0';
    // %z is +hhmm; ISO 8601's extended form (with the date's dashes) wants +hh:mm.
    char raw[8];
    char zone[8] = "";
    if (std::strftime(raw, sizeof raw, "%z", &tm) == 5) {
      const char iso[8] = {raw[0], raw[1], raw[2], ':', raw[3], raw[4], '\0', '\0'};
      std::memcpy(zone, iso, sizeof zone);
    }
    n = std::snprintf(buf, size, "%s.%03ld%s vduse-bridge: %s", date, when.tv_nsec / 1'000'000, zone,
                      level_name(level));
  }
  if (n < 0) {
    buf[0] = '\0';
    return 0;
  }
  return static_cast<std::size_t>(n) < size ? static_cast<std::size_t>(n) : size - 1;
}

} // namespace log_detail

void set_log_level(LogLevel level) noexcept { g_level.store(level, std::memory_order_relaxed); }

LogLevel log_level() noexcept { return g_level.load(std::memory_order_relaxed); }

void vlog(LogLevel level, const char *fmt, std::va_list ap) noexcept {
  if (level > log_level())
    return;
  char line[1024];
  timespec now{};
  (void)::clock_gettime(CLOCK_REALTIME, &now);
  const int n = static_cast<int>(log_detail::format_prefix(line, sizeof line, level, journal_attached(), now));
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
