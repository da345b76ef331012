#include "common/secret_file.h"

#include "common/errors.h"
#include "common/small_file.h"

#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

namespace vb {

namespace {
std::string mode_text(unsigned mode) {
  char text[8];
  (void)std::snprintf(text, sizeof text, "%04o", mode & 07777);
  return text;
}
} // namespace

void check_secret_file(const std::string &path, const std::string &what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return;
  if ((st.st_mode & (S_IROTH | S_IWOTH)) == 0)
    return;
  throw std::runtime_error("the " + what + " " + path + " is " + ((st.st_mode & S_IROTH) ? "readable" : "writable") +
                           " by every user (mode " + mode_text(st.st_mode) +
                           "): a secret must not be; run chmod o-rwx " + path);
}

std::string secret_file_problem(const std::string &path) {
  // O_NONBLOCK: a FIFO in its place must not hang the check.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      return "does not exist";
    return errno_message("cannot be opened for reading", err);
  }
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  const int err = errno;
  ::close(fd);
  if (rc != 0)
    return errno_message("cannot be examined", err);
  if (!S_ISREG(st.st_mode))
    return std::string("is ") + file_type_name(st.st_mode) + ", not a regular file";
  const unsigned mode = st.st_mode;
  if (mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) {
    const bool others = (mode & (S_IROTH | S_IWOTH)) != 0;
    const bool readable = others ? (mode & S_IROTH) != 0 : (mode & S_IRGRP) != 0;
    return std::string("is ") + (readable ? "readable" : "writable") + " by " + (others ? "every user" : "its group") +
           " (mode " + mode_text(mode) + "): a secret must not be; run chmod go-rwx " + path;
  }
  return {};
}

std::string parent_directory_problem(const std::string &path) {
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    const int err = errno;
    return err == ENOENT ? "its directory " + dir + " does not exist"
                         : errno_message("its directory " + dir + " cannot be examined", err);
  }
  if (!S_ISDIR(st.st_mode))
    return "its directory " + dir + " is " + file_type_name(st.st_mode) + ", not a directory";
  return {};
}

} // namespace vb
