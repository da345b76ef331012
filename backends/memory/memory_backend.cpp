#include "memory/memory_backend.h"

#include "common/errors.h"
#include "common/log.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vb {
namespace {

class MemoryQueue final : public BackendQueue {
public:
  explicit MemoryQueue(MemoryBackend &backend) : backend_(backend) {}
  int submit(const Request &req, CompletionFn done, void *ctx) noexcept override {
    // Completes inline: the contract allows it, and it is the cheapest path for benchmarks.
    done(ctx, backend_.execute(req));
    return 0;
  }

private:
  MemoryBackend &backend_;
};

std::string mode_text(mode_t mode) {
  char buf[8];
  (void)std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Checks the file open on fd, named path: a regular file owned by us.
void check_disk_file(int fd, const std::string &path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw std::runtime_error(errno_message("memory backend: fstat " + path, errno));
  if (!S_ISREG(st.st_mode))
    throw std::runtime_error("memory backend: " + path + " is not a regular file (remove it)");
  if (st.st_uid != ::geteuid())
    throw std::runtime_error("memory backend: " + path + " belongs to uid " + std::to_string(st.st_uid) +
                             ", not to this daemon's uid " + std::to_string(::geteuid()) + " (remove it)");
}

} // namespace

int open_memory_disk_file(const std::string &path, bool &created) {
  created = false;
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    const int err = errno;
    if (err == ENOENT) {
      const std::string parent = dir.substr(0, std::max<std::size_t>(dir.rfind('/'), 1));
      throw std::runtime_error("memory backend: " + parent + " does not exist, so there is no " + dir +
                               " for the disk's contents (memory disks need a tmpfs at " + parent + ")");
    }
    throw std::runtime_error(errno_message("memory backend: mkdir " + dir, err));
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0)
    throw std::runtime_error(errno_message("memory backend: " + dir, errno));
  if (S_ISLNK(st.st_mode))
    throw std::runtime_error("memory backend: " + dir + " is a symbolic link; it must be a directory (remove it)");
  if (!S_ISDIR(st.st_mode))
    throw std::runtime_error("memory backend: " + dir + " is not a directory (remove it)");
  if (st.st_uid != ::geteuid())
    throw std::runtime_error("memory backend: " + dir + " belongs to uid " + std::to_string(st.st_uid) +
                             ", not to this daemon's uid " + std::to_string(::geteuid()) + " (remove it)");
  if ((st.st_mode & 077) != 0)
    throw std::runtime_error("memory backend: " + dir + " has mode " + mode_text(st.st_mode) +
                             ": other users could reach the disks; chmod 0700 " + dir);
  for (int attempt = 0; attempt < 4; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    if (fd >= 0) {
      try {
        check_disk_file(fd, path);
      } catch (...) {
        ::close(fd);
        throw;
      }
      return fd;
    }
    if (errno == ELOOP)
      throw std::runtime_error("memory backend: " + path + " is a symbolic link (remove it)");
    if (errno != ENOENT)
      throw std::runtime_error(errno_message("memory backend: " + path, errno));
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (fd >= 0) {
      created = true;
      return fd;
    }
    if (errno != EEXIST) // EEXIST: made meanwhile; open it as an existing one
      throw std::runtime_error(errno_message("memory backend: cannot create " + path, errno));
  }
  throw std::runtime_error("memory backend: " + path + " keeps appearing and disappearing");
}

MemoryBackend::MemoryBackend(std::uint64_t size, std::uint32_t logical_block_size, std::string path)
    : path_(std::move(path)) {
  caps_.size = size;
  caps_.logical_block_size = logical_block_size;
  caps_.physical_block_size = 4096 > logical_block_size ? 4096 : logical_block_size;
  caps_.can_flush = true; // a no-op here, but it keeps the FLUSH path exercised end to end
  caps_.can_discard = true;
  caps_.can_write_zeroes = true;
  caps_.can_zero_unmap = true;
  caps_.identity = "memory:" + std::to_string(size);
}

MemoryBackend::~MemoryBackend() {
  if (base_)
    ::munmap(base_, caps_.size);
  if (fd_ >= 0)
    ::close(fd_);
}

void MemoryBackend::connect() {
  if (caps_.size == 0 || caps_.size % caps_.logical_block_size != 0)
    throw std::runtime_error("memory backend: size must be a non-zero multiple of the block size");
  if (path_.empty()) {
    fd_ = ::memfd_create("vduse-bridge-memory", MFD_CLOEXEC);
    if (fd_ < 0)
      throw std::runtime_error(errno_message("memfd_create", errno));
  } else {
    bool created = false;
    fd_ = open_memory_disk_file(path_, created);
    struct stat st {};
    if (::fstat(fd_, &st) != 0)
      throw std::runtime_error(errno_message("memory backend: fstat " + path_, errno));
    if (st.st_size != 0 && static_cast<std::uint64_t>(st.st_size) != caps_.size)
      throw std::runtime_error("memory backend: " + path_ + " holds a disk of " + std::to_string(st.st_size) +
                               " bytes, the configuration says " + std::to_string(caps_.size) +
                               " (remove the file to start an empty disk)");
    if (st.st_size != 0)
      VB_LOG_INFO("memory backend: reusing the contents in %s", path_.c_str());
  }
  if (::ftruncate(fd_, static_cast<off_t>(caps_.size)) != 0)
    throw std::runtime_error(errno_message("memory backend: ftruncate", errno));
  void *p = ::mmap(nullptr, caps_.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_, 0);
  if (p == MAP_FAILED)
    throw std::runtime_error(errno_message("memory backend: mmap", errno));
  base_ = static_cast<std::uint8_t *>(p);
}

void MemoryBackend::device_destroyed() noexcept {
  if (!path_.empty() && ::unlink(path_.c_str()) != 0 && errno != ENOENT)
    VB_LOG_WARN("memory backend: unlink %s: %s", path_.c_str(), errno_text(errno));
}

std::unique_ptr<BackendQueue> MemoryBackend::open_queue(EventLoop &, unsigned) {
  return std::make_unique<MemoryQueue>(*this);
}

int MemoryBackend::execute(const Request &req) noexcept {
  if (req.offset > caps_.size || req.length > caps_.size - req.offset)
    return EIO; // the engine checks ranges; this is the last line of defence
  std::uint8_t *p = base_ + req.offset;
  switch (req.op) {
  case Op::read:
  case Op::write: {
    std::uint64_t done = 0;
    for (int i = 0; i < req.iovcnt && done < req.length; ++i) {
      const std::uint64_t n = std::min<std::uint64_t>(req.iov[i].iov_len, req.length - done);
      if (req.op == Op::read)
        std::memcpy(req.iov[i].iov_base, p + done, n);
      else
        std::memcpy(p + done, req.iov[i].iov_base, n);
      done += n;
    }
    return done == req.length ? 0 : EIO;
  }
  case Op::flush:
    return 0;
  case Op::discard:
  case Op::write_zeroes:
    // Punching a hole both frees the pages and makes the range read back as zeros, which is
    // what write-zeroes must guarantee with or without may_unmap.
    if (req.length == 0)
      return 0;
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(req.offset),
                    static_cast<off_t>(req.length)) == 0)
      return 0;
    if (req.op == Op::write_zeroes) {
      std::memset(p, 0, req.length);
      return 0;
    }
    return errno;
  }
  return EINVAL;
}

} // namespace vb
