// A RAM disk backend for tests and benchmarks. Memory is a shared-memory file (or an anonymous
// memfd) mapped once: pages are only allocated when written, so a 1 GiB disk costs what is
// stored; discard and write-zeroes punch holes and give the memory back. With a file the disk
// outlives the daemon like a tmpfs does (a restarted daemon finds its contents); it is removed
// when the device is torn down.
#pragma once

#include "vduse-bridge/backend.h"

#include <cstdint>
#include <string>

namespace vb {

// Opens the memory disk file path (DIR/NAME.mem) for reading and writing. DIR is created mode
// 0700 if missing, and must be a directory (not a symlink: lstat), owned by the effective uid,
// with no group or other permission bits: another user must not be able to swap the file or read
// the disk. The file is opened with O_NOFOLLOW; an existing one must be a regular file of ours,
// a new one is made with O_EXCL, mode 0600. created says which. Throws std::runtime_error naming
// the path and what to do; when DIR's own parent is missing (no /dev/shm), the message names it.
int open_memory_disk_file(const std::string &path, bool &created);

class MemoryBackend final : public Backend {
public:
  // path: the file holding the contents (e.g. /dev/shm/vduse-bridge/NAME.mem; see
  // open_memory_disk_file), empty = an anonymous memfd that dies with the process. An existing
  // file must have exactly this size.
  MemoryBackend(std::uint64_t size, std::uint32_t logical_block_size = 512, std::string path = {});
  ~MemoryBackend() override;
  MemoryBackend(const MemoryBackend &) = delete;
  MemoryBackend &operator=(const MemoryBackend &) = delete;

  const BackendCapabilities &capabilities() const override { return caps_; }
  std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) override;
  const char *kind() const noexcept override { return "memory"; }
  void device_destroyed() noexcept override;

  // Synchronous, thread-safe on disjoint ranges (queues may share the disk): used by the queues.
  int execute(const Request &req) noexcept;

private:
  void connect() override;
  BackendCapabilities caps_;
  std::string path_;
  int fd_ = -1;
  std::uint8_t *base_ = nullptr;
};

} // namespace vb
