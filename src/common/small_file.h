// Reading a small file whole (a configuration, a password): bounded, so that a path naming
// /dev/zero or a huge file costs at most limit + 1 bytes, and retried on EINTR.
#pragma once

#include <cstddef>
#include <string>

namespace vb {

struct SmallFile {
  std::string text;             // at most limit + 1 bytes: longer than limit means "too large"
  int error = 0;                // errno of the failed step, or 0
  const char *failed = nullptr; // "open" or "read" when error != 0
  bool too_large(std::size_t limit) const noexcept { return text.size() > limit; }
};

// open_flags are added to O_RDONLY | O_CLOEXEC. Never throws for I/O errors (std::bad_alloc aside).
SmallFile read_small_file(const std::string &path, std::size_t limit, int open_flags = 0);

} // namespace vb
