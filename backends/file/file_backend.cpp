#include "file/file_backend.h"

#include "common/errors.h"
#include "common/log.h"
#include "common/units.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <fcntl.h>
#include <fstream>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <new>
#include <optional>
#include <stdexcept>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace vb {
namespace {

constexpr unsigned kMaxQueueDepth = 4096;
constexpr std::uint32_t kMaxBlock = 4096; // virtio-blk's (and the engine's) largest logical block

const char *type_of(mode_t mode) noexcept {
  switch (mode & S_IFMT) {
  case S_IFDIR:
    return "a directory";
  case S_IFCHR:
    return "a character device";
  case S_IFIFO:
    return "a FIFO";
  case S_IFSOCK:
    return "a socket";
  default:
    return "neither a regular file nor a block device";
  }
}

bool servable(mode_t mode) noexcept { return S_ISREG(mode) || S_ISBLK(mode); }

std::string device_number(dev_t dev) { return std::to_string(major(dev)) + ":" + std::to_string(minor(dev)); }

// O_DIRECT alignment as statx reports it (Linux 6.1 for most filesystems, 6.11 for block
// devices): {memory, offset}, zeros when unknown.
std::pair<std::uint32_t, std::uint32_t> dio_alignment(int fd) noexcept {
  struct statx stx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0 || !(stx.stx_mask & STATX_DIOALIGN))
    return {0, 0};
  return {stx.stx_dio_mem_align, stx.stx_dio_offset_align};
}

// A number from a block device's queue directory in sysfs (a partition's is its disk's).
std::optional<std::uint64_t> queue_attribute(dev_t dev, const std::string &name) {
  const std::string base = "/sys/dev/block/" + device_number(dev);
  for (const std::string &dir : {base + "/queue/", base + "/../queue/"}) {
    std::ifstream in(dir + name);
    std::uint64_t value = 0;
    if (in >> value)
      return value;
  }
  return std::nullopt;
}

} // namespace

FileBackend::FileBackend(FileBackendOptions options) : options_(std::move(options)) {}

FileBackend::~FileBackend() = default;

void FileBackend::connect() {
  if (options_.path.empty())
    throw std::invalid_argument("file backend: no path");
  if (options_.queue_depth == 0 || options_.queue_depth > kMaxQueueDepth)
    throw std::invalid_argument("file backend: " + options_.path + ": queue depth " +
                                std::to_string(options_.queue_depth) + " is not in 1.." +
                                std::to_string(kMaxQueueDepth));
  check_io_uring();
  open_file();
  const char *how = target_.direct ? "O_DIRECT" : "page cache";
  VB_LOG_INFO("file: %s: %s%s, %u-byte blocks (physical %u), %s%s%s%s%s", options_.path.c_str(),
              target_.block_device ? "block device, " : "", format_size(caps_.size).c_str(), caps_.logical_block_size,
              caps_.physical_block_size, how, caps_.read_only ? ", read-only" : "",
              caps_.can_discard ? ", discard" : "", caps_.can_write_zeroes ? ", write-zeroes" : "",
              caps_.can_zero_unmap ? " (may unmap)" : "");
}

// The io_uring this backend needs: available at all (kernel.io_uring_disabled, a seccomp
// filter), and with every operation the queues use.
void FileBackend::check_io_uring() const {
  io_uring ring{};
  const int rc = io_uring_queue_init(1, &ring, 0);
  if (rc < 0)
    throw std::runtime_error(errno_message("file backend: io_uring is not available (kernel.io_uring_disabled, a "
                                           "seccomp filter?): io_uring_setup",
                                           -rc));
  io_uring_probe *probe = io_uring_get_probe_ring(&ring);
  std::string missing;
  for (auto [op, name] : {std::pair{IORING_OP_READV, "READV"}, std::pair{IORING_OP_WRITEV, "WRITEV"},
                          std::pair{IORING_OP_FSYNC, "FSYNC"}, std::pair{IORING_OP_FALLOCATE, "FALLOCATE"}})
    if (!probe || !io_uring_opcode_supported(probe, op))
      missing += std::string(missing.empty() ? "" : ", ") + "IORING_OP_" + name;
  if (probe)
    io_uring_free_probe(probe);
  io_uring_queue_exit(&ring);
  if (!missing.empty())
    throw std::runtime_error("file backend: this kernel's io_uring lacks " + missing + " (Linux 5.6 or later needed)");
}

// Opens path (with O_DIRECT when wanted and possible) and learns what it is.
void FileBackend::open_file() {
  const std::string &path = options_.path;
  struct stat st {};
  // stat() first: opening a FIFO or a terminal to find out what it is could block or have effects.
  if (::stat(path.c_str(), &st) != 0)
    throw std::runtime_error(errno_message("file backend: " + path, errno));
  if (!servable(st.st_mode))
    throw std::runtime_error("file backend: " + path + " is " + type_of(st.st_mode) +
                             "; only a regular file or a block device can be served");
  const int flags = (options_.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  bool direct = options_.direct != FileBackendOptions::Direct::off;
  int fd = direct ? ::open(path.c_str(), flags | O_DIRECT) : -1;
  if (direct && fd < 0 && errno == EINVAL && options_.direct == FileBackendOptions::Direct::automatic) {
    VB_LOG_INFO("file: %s: the filesystem refuses O_DIRECT; using the page cache", path.c_str());
    direct = false;
  } else if (direct && fd < 0 && errno == EINVAL) {
    throw std::runtime_error("file backend: " + path + ": the filesystem does not support O_DIRECT (direct: on)");
  }
  if (!direct)
    fd = ::open(path.c_str(), flags);
  if (fd < 0)
    throw std::runtime_error(errno_message("file backend: " + path, errno));
  fd_ = UniqueFd(fd);
  if (::fstat(fd, &st) != 0)
    throw std::runtime_error(errno_message("file backend: fstat " + path, errno));
  if (!servable(st.st_mode)) // replaced between stat() and open()
    throw std::runtime_error("file backend: " + path + " is " + type_of(st.st_mode) +
                             "; only a regular file or a block device can be served");
  target_.fd = fd;
  target_.direct = direct;
  target_.block_device = S_ISBLK(st.st_mode);
  if (target_.block_device)
    learn_block_device(st);
  else
    learn_regular_file(st);
  if (target_.direct && !direct_read_works(target_.offset_align)) {
    if (options_.direct == FileBackendOptions::Direct::on)
      throw std::runtime_error("file backend: " + path + ": O_DIRECT reads fail with EINVAL (direct: on)");
    VB_LOG_INFO("file: %s: O_DIRECT reads fail; using the page cache", path.c_str());
    fd = ::open(path.c_str(), flags);
    if (fd < 0)
      throw std::runtime_error(errno_message("file backend: " + path, errno));
    fd_ = UniqueFd(fd);
    target_.fd = fd;
    target_.direct = false;
    if (target_.block_device)
      learn_block_device(st);
    else
      learn_regular_file(st);
  }
  target_.size.store(caps_.size, std::memory_order_relaxed);
}

// Whether an O_DIRECT read of align bytes at offset 0 works: some filesystems accept O_DIRECT
// at open and refuse the I/O; EINVAL also says the offset alignment is larger than align.
bool FileBackend::direct_read_works(std::uint32_t align) const noexcept {
  void *buf = ::operator new (align, std::align_val_t{4096}, std::nothrow);
  if (!buf)
    return true; // cannot tell; the I/O says so later
  const bool works = ::pread(target_.fd, buf, align, 0) >= 0 || errno != EINVAL;
  ::operator delete (buf, std::align_val_t{4096});
  return works;
}

void FileBackend::learn_regular_file(const struct stat &st) {
  const std::string &path = options_.path;
  std::uint32_t logical = 512;
  if (target_.direct) {
    auto [mem, offset] = dio_alignment(target_.fd);
    if (offset == 0) {
      // Not reported: 512 bytes unless a read says that needs more (a disk of 4 KiB sectors).
      offset = direct_read_works(512) || !direct_read_works(kMaxBlock) ? 512 : kMaxBlock;
    }
    if (offset > kMaxBlock || !std::has_single_bit(offset))
      throw std::runtime_error("file backend: " + path + ": O_DIRECT needs " + std::to_string(offset) +
                               "-byte alignment; virtio-blk blocks are 512..4096 bytes (use direct: off)");
    target_.offset_align = offset;
    target_.mem_align = mem != 0 ? mem : offset;
    logical = std::max<std::uint32_t>(512, offset);
  }
  caps_.logical_block_size = logical;
  const auto blksize = static_cast<std::uint32_t>(st.st_blksize);
  caps_.physical_block_size =
      blksize > logical && blksize <= (1u << 16) && std::has_single_bit(blksize) ? blksize : logical;
  caps_.size = static_cast<std::uint64_t>(st.st_size) / logical * logical;
  if (caps_.size == 0)
    throw std::runtime_error("file backend: " + path + " holds less than one " + std::to_string(logical) +
                             "-byte block (" + std::to_string(st.st_size) + " bytes)");
  caps_.read_only = options_.read_only;
  caps_.can_flush = !caps_.read_only;
  if (!caps_.read_only)
    probe_fallocate(static_cast<std::uint64_t>(st.st_size));
  caps_.identity = "file:" + path + " (dev " + device_number(st.st_dev) + " ino " + std::to_string(st.st_ino) + ")";
}

// What fallocate can do here, tried past the end of the file with KEEP_SIZE so that nothing the
// disk holds is touched (what ZERO_RANGE allocates there, the punch gives back).
void FileBackend::probe_fallocate(std::uint64_t file_size) {
  const auto at = static_cast<off_t>((file_size + kMaxBlock - 1) / kMaxBlock * kMaxBlock + kMaxBlock);
  const bool zero_range = ::fallocate(target_.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, at, kMaxBlock) == 0;
  const bool punch = ::fallocate(target_.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, kMaxBlock) == 0;
  target_.zero_range.store(zero_range, std::memory_order_relaxed);
  target_.zero_unmap = punch;
  caps_.can_discard = punch;
  caps_.can_write_zeroes = punch || zero_range;
  caps_.can_zero_unmap = punch;
}

void FileBackend::learn_block_device(const struct stat &st) {
  const std::string &path = options_.path;
  const int fd = target_.fd;
  std::uint64_t bytes = 0;
  int logical = 0;
  unsigned physical = 0, optimal = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0 || ::ioctl(fd, BLKSSZGET, &logical) != 0 ||
      ::ioctl(fd, BLKPBSZGET, &physical) != 0)
    throw std::runtime_error(errno_message("file backend: " + path + ": block device ioctl", errno));
  if (::ioctl(fd, BLKIOOPT, &optimal) != 0)
    optimal = 0;
  const auto lbs = static_cast<std::uint32_t>(logical);
  if (lbs < 512 || lbs > kMaxBlock || !std::has_single_bit(lbs))
    throw std::runtime_error("file backend: " + path + " has " + std::to_string(logical) +
                             "-byte blocks; virtio-blk supports 512..4096 bytes (powers of two)");
  caps_.logical_block_size = lbs;
  caps_.physical_block_size = std::has_single_bit(physical) && physical > lbs ? physical : lbs;
  caps_.optimal_io_size = optimal % lbs == 0 ? optimal : 0;
  caps_.size = bytes / lbs * lbs;
  if (caps_.size == 0)
    throw std::runtime_error("file backend: " + path + " is an empty block device");
  if (target_.direct) {
    const auto [mem, offset] = dio_alignment(fd);
    target_.offset_align = std::max(offset, lbs);
    target_.mem_align = mem != 0 ? mem : lbs;
  }
  caps_.read_only = options_.read_only;
  caps_.can_flush = !caps_.read_only;
  if (!caps_.read_only) {
    caps_.can_discard = queue_attribute(st.st_rdev, "discard_max_bytes").value_or(0) > 0;
    caps_.can_write_zeroes = true; // the kernel writes zeros where the device cannot zero itself
    caps_.can_zero_unmap = queue_attribute(st.st_rdev, "write_zeroes_max_bytes").value_or(0) > 0;
    target_.zero_unmap = caps_.can_zero_unmap;
    target_.zero_range.store(true, std::memory_order_relaxed);
  }
  caps_.identity = "file:" + path + " (block " + device_number(st.st_rdev) + ")";
}

std::uint64_t FileBackend::size_now() const noexcept {
  std::uint64_t bytes = 0;
  if (target_.block_device) {
    if (::ioctl(target_.fd, BLKGETSIZE64, &bytes) != 0)
      return current_size();
  } else {
    struct stat st {};
    if (::fstat(target_.fd, &st) != 0)
      return current_size();
    bytes = static_cast<std::uint64_t>(st.st_size);
  }
  return bytes / caps_.logical_block_size * caps_.logical_block_size;
}

void FileBackend::check_size() noexcept {
  const std::uint64_t now = size_now();
  const std::uint64_t before = target_.size.exchange(now, std::memory_order_relaxed);
  if (now == before)
    return;
  try {
    VB_LOG_INFO("file: %s: the size changed from %s to %s", options_.path.c_str(), format_size(before).c_str(),
                format_size(now).c_str());
  } catch (const std::bad_alloc &) {
  }
  report_resize(now);
}

std::unique_ptr<BackendQueue> FileBackend::open_queue(EventLoop &loop, unsigned index) {
  if (target_.fd < 0)
    throw std::logic_error("file backend: open_queue() before open()");
  std::function<void()> poll_size;
  if (index == 0)
    poll_size = [this] { check_size(); };
  return std::make_unique<FileQueue>(loop, caps_, target_, options_.queue_depth, options_.bounce_limit,
                                     std::move(poll_size), options_.resize_poll_interval);
}

} // namespace vb
