// A file descriptor closed when it goes out of scope (setup code: several early returns and
// throws between open and the point where the descriptor is handed over or no longer needed).
#pragma once

#include <unistd.h>
#include <utility>

namespace vb {

class UniqueFd {
public:
  explicit UniqueFd(int fd = -1) noexcept : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  UniqueFd(UniqueFd &&other) noexcept : fd_(other.release()) {}
  UniqueFd &operator=(UniqueFd &&other) noexcept {
    if (this != &other) {
      if (fd_ >= 0)
        ::close(fd_);
      fd_ = other.release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd &) = delete;
  UniqueFd &operator=(const UniqueFd &) = delete;

  int get() const noexcept { return fd_; }
  // Hands the descriptor over: it is no longer closed here.
  int release() noexcept { return std::exchange(fd_, -1); }

private:
  int fd_;
};

} // namespace vb
