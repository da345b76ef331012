// The NBD backend (libnbd): maps virtio-blk requests onto NBD commands, with the export's
// capabilities deciding what the disk offers, multi-conn when the server allows it, and
// connections that survive the server going away (see nbd_connection.h).
#pragma once

#include "nbd/nbd_connection.h"
#include "vduse-bridge/backend.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct nbd_handle;

namespace vb {

class NbdBackend final : public Backend {
public:
  explicit NbdBackend(NbdOptions options);
  ~NbdBackend() override;
  NbdBackend(const NbdBackend &) = delete;
  NbdBackend &operator=(const NbdBackend &) = delete;

  const BackendCapabilities &capabilities() const override { return caps_; }
  // Queue i < connections owns connection i; further queues forward to connection i % connections
  // (through the owner's loop), so a server without multi-conn sees exactly one connection.
  std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) override;
  const char *kind() const noexcept override { return "nbd"; }

  unsigned connections() const noexcept { return connections_; }
  // Any thread: how many connections the daemon's own transmission path serves now.
  unsigned direct_connections() const noexcept { return size_.direct_connections.load(std::memory_order_relaxed); }
  // Bounce memory of all connections (any thread).
  std::size_t bounce_bytes() const;
  // The export's size now (it changes on resize), in bytes.
  std::uint64_t current_size() const noexcept { return size_.get(); }

private:
  // Connects once (blocking) to learn the export: size, block sizes, flags, multi-conn.
  void connect() override;
  void poll_size_loop();
  std::int64_t probe_size() noexcept;

  NbdOptions options_;
  BackendCapabilities caps_;
  NbdExportSize size_;
  // The size poller: a thread of its own because it uses a blocking handle and is idle
  // almost always; stopped (and joined) by the destructor.
  std::thread poller_;
  std::mutex poll_mu_;
  std::condition_variable poll_cv_;
  std::atomic<bool> stopping_{false};
  unsigned connections_ = 1;
  nbd_handle *first_ = nullptr; // connected by open(), adopted by queue 0
  mutable std::mutex mu_;
  std::vector<NbdConnection *> owners_; // by connection index
};

} // namespace vb
