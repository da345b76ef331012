// Reading a small file whole (a configuration, a password): bounded, so that a path naming
// /dev/zero or a huge file costs at most limit + 1 bytes, and retried on EINTR. Only regular
// files are read: a FIFO, a device, a socket or a directory is refused without reading from it,
// so that a configuration path naming a FIFO nobody writes to cannot hang the daemon.
#pragma once

#include <cstddef>
#include <string>

namespace vb {

struct SmallFile {
  std::string text;             // at most limit + 1 bytes: longer than limit means "too large"
  int error = 0;                // errno of the failed step, or 0 (EINVAL for a file that is not regular)
  const char *failed = nullptr; // "open", "stat" or "read" when error != 0
  // When the path is not a regular file: what it is ("a FIFO", "a directory", ...); else nullptr.
  const char *not_regular = nullptr;
  bool too_large(std::size_t limit) const noexcept { return text.size() > limit; }
  // For messages, when error != 0: "cannot open: No such file or directory", or
  // "expected a regular file, got a FIFO".
  std::string problem() const;
};

// open_flags are added to O_RDONLY | O_CLOEXEC | O_NONBLOCK (O_NONBLOCK is cleared again once the
// file is known to be regular). Never throws for I/O errors (std::bad_alloc aside).
SmallFile read_small_file(const std::string &path, std::size_t limit, int open_flags = 0);

// "a FIFO", "a directory", "a character device", "a block device", "a socket", "a symbolic link"
// or "a regular file", for an st_mode.
const char *file_type_name(unsigned mode) noexcept;

} // namespace vb
