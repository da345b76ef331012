// A RAM disk backend for tests and benchmarks. Memory is a memfd mapped once: pages are only
// allocated when written, so a 1 GiB disk costs what is stored; discard and write-zeroes punch
// holes and give the memory back.
#pragma once

#include "vduse-bridge/backend.h"

#include <cstdint>

namespace vb {

class MemoryBackend final : public Backend {
public:
  MemoryBackend(std::uint64_t size, std::uint32_t logical_block_size = 512);
  ~MemoryBackend() override;
  MemoryBackend(const MemoryBackend &) = delete;
  MemoryBackend &operator=(const MemoryBackend &) = delete;

  void open() override;
  const BackendCapabilities &capabilities() const override { return caps_; }
  std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) override;
  const char *kind() const noexcept override { return "memory"; }

  // Synchronous, thread-safe on disjoint ranges (queues may share the disk): used by the queues.
  int execute(const Request &req) noexcept;

private:
  BackendCapabilities caps_;
  int fd_ = -1;
  std::uint8_t *base_ = nullptr;
};

} // namespace vb
