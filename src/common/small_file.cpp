#include "common/small_file.h"

#include <array>
#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

namespace vb {

SmallFile read_small_file(const std::string &path, std::size_t limit, int open_flags) {
  SmallFile f;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | open_flags);
  if (fd < 0) {
    f.error = errno;
    f.failed = "open";
    return f;
  }
  std::array<char, 16384> buf{};
  while (f.text.size() <= limit) {
    const std::size_t want = std::min(buf.size(), limit + 1 - f.text.size());
    const ssize_t n = ::read(fd, buf.data(), want);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      f.error = errno;
      f.failed = "read";
      break;
    }
    if (n == 0)
      break;
    f.text.append(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return f;
}

} // namespace vb
