#include "memory/memory_backend.h"

#include "common/errors.h"
#include "common/log.h"

#include <cerrno>
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

} // namespace

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
    const std::string dir = path_.substr(0, path_.rfind('/'));
    if (!dir.empty() && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
      throw std::runtime_error(errno_message("memory backend: mkdir " + dir, errno));
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd_ < 0)
      throw std::runtime_error(errno_message("memory backend: " + path_, errno));
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
