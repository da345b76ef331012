#include "recovery/recovery_state.h"
#include "common/unique_fd.h"

#include "common/errors.h"
#include "recovery/state_layout.h"

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <stdexcept>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace vb::recovery {
namespace {

using layout::FileHeader;

using Fd = UniqueFd;

bool valid_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

// NAME.state.new must fit in a file name (255 bytes).
constexpr std::size_t kMaxNameLength = 255 - sizeof(".state.new") + 1;
static_assert(kMaxNameLength < layout::kNameSize);

void check_name(const std::string &name) {
  if (name.empty() || name.size() > kMaxNameLength)
    throw std::invalid_argument("device name \"" + name + "\": must be 1 to " + std::to_string(kMaxNameLength) +
                                " characters (the state file is NAME.state)");
  for (char c : name)
    if (!valid_name_char(c))
      throw std::invalid_argument("device name \"" + name + "\": only A-Z, a-z, 0-9, _ and - are allowed");
}

void check_string(const char *what, const std::string &s, std::size_t field_size) {
  if (s.size() >= field_size)
    throw std::invalid_argument(std::string(what) + " is " + std::to_string(s.size()) + " bytes; at most " +
                                std::to_string(field_size - 1) + " fit in the state file");
  if (s.find('\0') != std::string::npos)
    throw std::invalid_argument(std::string(what) + " contains a NUL byte");
}

bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

void check_identity(const DeviceIdentity &id) {
  check_name(id.name);
  if (id.num_queues == 0 || id.num_queues > layout::kMaxQueues)
    throw std::invalid_argument("queues: " + std::to_string(id.num_queues) + " is not between 1 and " +
                                std::to_string(layout::kMaxQueues));
  if (!power_of_two(id.queue_size) || id.queue_size > layout::kMaxQueueSize)
    throw std::invalid_argument("queue size: " + std::to_string(id.queue_size) + " is not a power of two up to " +
                                std::to_string(layout::kMaxQueueSize));
  check_string("backend kind", id.backend_kind, layout::kBackendKindSize);
  check_string("backend identity", id.backend_identity, layout::kBackendIdentitySize);
}

std::string bounded(const char *p, std::size_t n) { return {p, ::strnlen(p, n)}; }
std::string quoted(const std::string &s) { return "\"" + s + "\""; }
std::string hex(std::uint64_t v) {
  char buf[32];
  (void)std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

DeviceIdentity identity_of(const FileHeader &h) {
  DeviceIdentity id;
  id.name = bounded(h.name, sizeof h.name);
  id.num_queues = h.num_queues;
  id.queue_size = static_cast<std::uint16_t>(h.queue_size);
  id.capacity = h.capacity;
  id.logical_block_size = h.logical_block_size;
  id.features = h.features;
  id.backend_kind = bounded(h.backend_kind, sizeof h.backend_kind);
  id.backend_identity = bounded(h.backend_identity, sizeof h.backend_identity);
  return id;
}

std::vector<IdentityMismatch::Difference> compare(const DeviceIdentity &file, const DeviceIdentity &config) {
  std::vector<IdentityMismatch::Difference> d;
  const auto add = [&d](bool differs, const char *field, std::string in_file, std::string expected) {
    if (differs)
      d.push_back({field, std::move(in_file), std::move(expected)});
  };
  using std::to_string;
  add(file.name != config.name, "device name", quoted(file.name), quoted(config.name));
  add(file.num_queues != config.num_queues, "queues", to_string(file.num_queues), to_string(config.num_queues));
  add(file.queue_size != config.queue_size, "queue size", to_string(file.queue_size), to_string(config.queue_size));
  add(file.logical_block_size != config.logical_block_size, "logical block size", to_string(file.logical_block_size),
      to_string(config.logical_block_size));
  add(file.features != config.features, "features", hex(file.features), hex(config.features));
  add(file.backend_kind != config.backend_kind, "backend kind", quoted(file.backend_kind), quoted(config.backend_kind));
  add(file.backend_identity != config.backend_identity, "backend identity", quoted(file.backend_identity),
      quoted(config.backend_identity));
  return d;
}

void copy_string(char *dst, std::size_t size, const std::string &s) {
  std::memset(dst, 0, size); // NUL-padded: the last byte stays 0
  (void)s.copy(dst, std::min(s.size(), size - 1));
}

std::vector<unsigned char> make_header(const DeviceIdentity &id) {
  FileHeader h{};
  std::memcpy(h.magic, layout::kMagic, sizeof h.magic);
  h.byte_order = layout::kByteOrderMark;
  h.version = layout::kVersion;
  h.header_size = layout::kHeaderSize;
  h.queue_header_size = sizeof(layout::QueueHeader);
  h.entry_size = sizeof(layout::Entry);
  h.queue_stride = static_cast<std::uint32_t>(layout::queue_stride(id.queue_size));
  h.file_size = layout::file_size(id.num_queues, id.queue_size);
  h.num_queues = id.num_queues;
  h.queue_size = id.queue_size;
  h.capacity = id.capacity;
  h.logical_block_size = id.logical_block_size;
  h.features = id.features;
  copy_string(h.backend_kind, sizeof h.backend_kind, id.backend_kind);
  copy_string(h.name, sizeof h.name, id.name);
  copy_string(h.backend_identity, sizeof h.backend_identity, id.backend_identity);
  std::vector<unsigned char> bytes(layout::kHeaderSize, 0);
  std::memcpy(bytes.data(), &h, sizeof h);
  return bytes;
}

// The header of an existing file, after every check that lets it be mapped and trusted.
FileHeader validate_header(const std::string &path, const std::vector<unsigned char> &bytes, std::uint64_t file_bytes) {
  const auto truncated = [&] {
    return StateError(path + " is truncated: " + std::to_string(file_bytes) + " bytes, shorter than the " +
                      std::to_string(layout::kHeaderSize) + "-byte header");
  };
  const auto corrupt = [&](const std::string &what) { return StateError(path + " is corrupt: " + what); };
  if (bytes.size() < sizeof layout::kMagic)
    throw truncated();
  if (std::memcmp(bytes.data(), layout::kMagic, sizeof layout::kMagic) != 0)
    throw StateError(path + " is not a vduse-bridge state file (wrong magic)");
  if (bytes.size() < offsetof(FileHeader, header_size))
    throw truncated();
  FileHeader h{};
  std::memcpy(&h, bytes.data(), std::min(bytes.size(), sizeof h));
  if (h.byte_order != layout::kByteOrderMark)
    throw StateError(path + " was written by a machine of another byte order (mark " + hex(h.byte_order) + ")");
  if (h.version != layout::kVersion)
    throw StateError(path + " has layout version " + std::to_string(h.version) + ", this vduse-bridge reads version " +
                     std::to_string(layout::kVersion) +
                     ": it was written by an incompatible vduse-bridge (stop the device and remove the file to start "
                     "over)");
  if (bytes.size() < layout::kHeaderSize)
    throw truncated();
  if (h.header_size != layout::kHeaderSize || h.queue_header_size != sizeof(layout::QueueHeader) ||
      h.entry_size != sizeof(layout::Entry))
    throw corrupt("header, queue header and entry sizes " + std::to_string(h.header_size) + "/" +
                  std::to_string(h.queue_header_size) + "/" + std::to_string(h.entry_size) + ", this layout has " +
                  std::to_string(layout::kHeaderSize) + "/" + std::to_string(sizeof(layout::QueueHeader)) + "/" +
                  std::to_string(sizeof(layout::Entry)));
  if (h.num_queues == 0 || h.num_queues > layout::kMaxQueues)
    throw corrupt(std::to_string(h.num_queues) + " queues");
  if (!power_of_two(h.queue_size) || h.queue_size > layout::kMaxQueueSize)
    throw corrupt("queue size " + std::to_string(h.queue_size));
  if (h.queue_stride != layout::queue_stride(h.queue_size))
    throw corrupt("queue stride " + std::to_string(h.queue_stride) + ", queues of " + std::to_string(h.queue_size) +
                  " entries need " + std::to_string(layout::queue_stride(h.queue_size)));
  const std::uint64_t expected = layout::file_size(h.num_queues, h.queue_size);
  if (h.file_size != expected)
    throw corrupt("the header says " + std::to_string(h.file_size) + " bytes, " + std::to_string(h.num_queues) +
                  " queues of " + std::to_string(h.queue_size) + " entries need " + std::to_string(expected));
  if (file_bytes < expected)
    throw StateError(path + " is truncated: " + std::to_string(file_bytes) + " bytes, the header says " +
                     std::to_string(expected));
  if (file_bytes > expected)
    throw corrupt(std::to_string(file_bytes) + " bytes, the header says " + std::to_string(expected));
  if (h.name[sizeof h.name - 1] != 0 || h.backend_kind[sizeof h.backend_kind - 1] != 0 ||
      h.backend_identity[sizeof h.backend_identity - 1] != 0)
    throw corrupt("a name field is not NUL-terminated");
  return h;
}

void lock(int fd, const std::string &path) {
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0)
    return;
  if (errno == EWOULDBLOCK)
    throw StateError(path + " is in use by another process (another vduse-bridge serving this device?)");
  throw StateError(errno_message("flock " + path, errno));
}

void read_all(int fd, void *buf, std::size_t len, const std::string &path) {
  auto *p = static_cast<unsigned char *>(buf);
  std::size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      throw StateError(errno_message("read " + path, errno));
    if (n == 0)
      throw StateError(path + " shrank while being read");
    done += static_cast<std::size_t>(n);
  }
}

void write_all(int fd, const void *buf, std::size_t len, const std::string &path) {
  const auto *p = static_cast<const unsigned char *>(buf);
  std::size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd, p + done, len - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      throw StateError(errno_message("write " + path, errno));
    done += static_cast<std::size_t>(n);
  }
}

void *map_file(int fd, std::size_t size, const std::string &path) {
  void *p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    throw StateError(errno_message("mmap " + path, errno));
  return p;
}

// Gives the finished temporary file its name unless that name exists (false then, and the
// temporary is gone). A rename, so that the open file shows under its real name in /proc.
bool publish(const std::string &tmp, const std::string &path) {
  int err = 0;
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0)
    return true;
  err = errno;
  if (err == EINVAL || err == ENOSYS) { // a file system without RENAME_NOREPLACE
    if (::link(tmp.c_str(), path.c_str()) == 0) {
      (void)::unlink(tmp.c_str());
      return true;
    }
    err = errno;
  }
  (void)::unlink(tmp.c_str());
  if (err == EEXIST)
    return false;
  throw StateError(errno_message("cannot create " + path, err));
}

void ensure_dir(const std::string &dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw StateError(errno_message("cannot create the state directory " + dir, errno));
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    throw StateError(errno_message("state directory " + dir, errno));
  if (!S_ISDIR(st.st_mode))
    throw StateError("state directory " + dir + " is not a directory");
}

} // namespace

IdentityMismatch::IdentityMismatch(const std::string &path, std::vector<Difference> differences)
    : StateError([&] {
        std::string m = path + " belongs to another configuration of the device: ";
        for (std::size_t i = 0; i < differences.size(); ++i) {
          if (i > 0)
            m += "; ";
          m += differences[i].field + ": the state file says " + differences[i].in_file + ", the configuration " +
               differences[i].expected;
        }
        return m;
      }()),
      differences_(std::move(differences)) {}

std::string RecoveryState::path_for(const std::string &dir, const std::string &name) {
  check_name(name); // also keeps the path inside dir
  return dir + "/" + name + ".state";
}

RecoveryState::RecoveryState(std::string path, int fd, void *map, std::size_t size, const DeviceIdentity &identity,
                             bool created)
    : path_(std::move(path)), fd_(fd), map_(map), size_(size), identity_(identity), created_(created),
      queues_(new QueueLog[identity.num_queues]) {
  for (unsigned i = 0; i < identity.num_queues; ++i)
    queues_[i].attach(i, static_cast<char *>(map_) + layout::queue_offset(i, identity.queue_size), identity.queue_size,
                      path_ + ", queue " + std::to_string(i));
}

RecoveryState::~RecoveryState() {
  ::munmap(map_, size_);
  ::close(fd_);
}

std::unique_ptr<RecoveryState> RecoveryState::open_or_create(const std::string &dir, const DeviceIdentity &identity) {
  check_identity(identity);
  ensure_dir(dir);
  const std::string path = path_for(dir, identity.name);
  // Two rounds are enough unless another process keeps creating and removing the file.
  for (int attempt = 0; attempt < 3; ++attempt) {
    Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() >= 0) {
      lock(fd.get(), path);
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0)
        throw StateError(errno_message("stat " + path, errno));
      if (!S_ISREG(st.st_mode))
        throw StateError(path + " is not a regular file");
      const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
      std::vector<unsigned char> head(std::min<std::uint64_t>(file_bytes, layout::kHeaderSize));
      read_all(fd.get(), head.data(), head.size(), path);
      const FileHeader h = validate_header(path, head, file_bytes);
      const DeviceIdentity in_file = identity_of(h);
      if (auto diffs = compare(in_file, identity); !diffs.empty())
        throw IdentityMismatch(path, std::move(diffs));
      void *map = map_file(fd.get(), file_bytes, path);
      // The capacity is what the kernel's device has, which the caller resizes if the backend
      // changed size meanwhile (identity().capacity then differs from what it asked for).
      DeviceIdentity kept = identity;
      kept.capacity = in_file.capacity;
      return std::unique_ptr<RecoveryState>(
          new RecoveryState(path, fd.release(), map, static_cast<std::size_t>(file_bytes), kept, false));
    }
    if (errno != ENOENT)
      throw StateError(errno_message("cannot open " + path, errno));

    // Written completely under a temporary name, then linked into place: a successor sees either
    // no file or a whole one. A leftover temporary of a creator that died is simply reused.
    const std::string tmp = path + ".new";
    Fd nfd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (nfd.get() < 0)
      throw StateError(errno_message("cannot create " + tmp, errno));
    lock(nfd.get(), tmp);
    const std::uint64_t size = layout::file_size(identity.num_queues, identity.queue_size);
    if (::fchmod(nfd.get(), 0600) != 0 || ::ftruncate(nfd.get(), 0) != 0 ||
        ::ftruncate(nfd.get(), static_cast<off_t>(size)) != 0)
      throw StateError(errno_message("cannot size " + tmp, errno));
    // Every page allocated now: a full tmpfs must fail here, not as SIGBUS on the data path.
    if (const int err = ::posix_fallocate(nfd.get(), 0, static_cast<off_t>(size)); err != 0)
      throw StateError(errno_message("cannot allocate " + std::to_string(size) + " bytes for " + tmp, err));
    const std::vector<unsigned char> header = make_header(identity);
    write_all(nfd.get(), header.data(), header.size(), tmp);
    if (!publish(tmp, path))
      continue; // another process created it meanwhile: open that one
    void *map = map_file(nfd.get(), size, path);
    return std::unique_ptr<RecoveryState>(
        new RecoveryState(path, nfd.release(), map, static_cast<std::size_t>(size), identity, true));
  }
  throw StateError(path + " keeps appearing and disappearing: is another process managing it?");
}

QueueLog &RecoveryState::queue(unsigned index) {
  if (index >= identity_.num_queues)
    throw std::out_of_range(path_ + ": no queue " + std::to_string(index) + " (" +
                            std::to_string(identity_.num_queues) + " queues)");
  return queues_[index];
}

void RecoveryState::set_capacity(std::uint64_t bytes) noexcept {
  std::atomic_ref<std::uint64_t>(static_cast<FileHeader *>(map_)->capacity).store(bytes, std::memory_order_release);
  identity_.capacity = bytes;
}

void RecoveryState::remove() {
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
    throw StateError(errno_message("cannot remove " + path_, errno));
}

bool RecoveryState::remove_file(const std::string &dir, const std::string &name) {
  const std::string path = path_for(dir, name);
  if (::unlink(path.c_str()) == 0)
    return true;
  if (errno == ENOENT)
    return false;
  throw StateError(errno_message("cannot remove " + path, errno));
}

} // namespace vb::recovery
