#include "common/small_file.h"

#include "common/errors.h"

#include <array>
#include <cerrno>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vb {

const char *file_type_name(unsigned mode) noexcept {
  switch (mode & S_IFMT) {
  case S_IFREG:
    return "a regular file";
  case S_IFDIR:
    return "a directory";
  case S_IFIFO:
    return "a FIFO";
  case S_IFCHR:
    return "a character device";
  case S_IFBLK:
    return "a block device";
  case S_IFSOCK:
    return "a socket";
  case S_IFLNK:
    return "a symbolic link";
  default:
    return "not a regular file";
  }
}

std::string SmallFile::problem() const {
  if (not_regular)
    return std::string("expected a regular file, got ") + not_regular;
  return errno_message(std::string("cannot ") + (failed ? failed : "read"), error);
}

SmallFile read_small_file(const std::string &path, std::size_t limit, int open_flags) {
  SmallFile f;
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | open_flags);
  if (fd < 0) {
    f.error = errno;
    f.failed = "open";
    return f;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    f.error = errno;
    f.failed = "stat";
  } else if (!S_ISREG(st.st_mode)) {
    f.error = EINVAL;
    f.failed = "read";
    f.not_regular = file_type_name(st.st_mode);
  } else if ((open_flags & O_NONBLOCK) == 0) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
      f.error = errno;
      f.failed = "open";
    }
  }
  if (f.error != 0) {
    ::close(fd);
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
