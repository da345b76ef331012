// One NBD connection driven by one event loop, which survives the server: requests in flight when
// the connection dies are resubmitted on the next one, new requests are held while it is down
// (up to reconnect-timeout, then failed with EIO), and a request with no reply within
// request-timeout counts the connection as dead. Those rules are SessionCore's
// (backends/session/); this file is what is NBD about it: libnbd's handle, its commands, the
// export's identity and size, bounce buffers.
//
// Threading: everything runs on the owning loop's thread.
#pragma once

#include "event/event_loop.h"
#include "nbd/nbd_options.h"
#include "nbd/nbd_transport.h"
#include "session/session_core.h"
#include "session/session_health.h"
#include "vduse-bridge/backend.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

struct nbd_handle;

namespace vb {

// What the connections of one export share: its current size, which changes when a reconnect
// or a poll finds the export resized, and whom to tell. Any thread.
class NbdExportSize {
public:
  explicit NbdExportSize(std::function<void(std::uint64_t)> on_change) : on_change_(std::move(on_change)) {}
  // Start-up, before any connection exists.
  void init(std::uint64_t size, std::uint32_t block) noexcept {
    block_ = block;
    size_.store(size, std::memory_order_relaxed);
  }
  std::uint64_t get() const noexcept { return size_.load(std::memory_order_relaxed); }
  // Records the size a server reported (rounded down to whole blocks) and reports a change once.
  void observe(std::uint64_t server_size) noexcept;
  // The export's state: the worst of its connections'.
  SessionHealth sessions;
  // Connections the own transmission path serves now (nbd_transport.h).
  std::atomic<unsigned> direct_connections{0};

private:
  std::atomic<std::uint64_t> size_{0};
  std::uint32_t block_ = 512;
  std::function<void(std::uint64_t)> on_change_;
};

// Creates a handle with the options applied, not yet connected. Throws on failure.
nbd_handle *make_nbd_handle(const NbdOptions &options);

// Why a connected handle is not the export that caps (and identity) describe, or empty if it
// is. Size is not compared: a different size is a resize.
std::string export_mismatch(nbd_handle *h, const BackendCapabilities &caps, const std::string &uri);

// BackendCapabilities::identity of an export: "nbd:URI (name|description)" with the canonical
// name and description the server reports (either may be empty).
std::string export_identity(const std::string &uri, nbd_handle *h);

class NbdConnection final : private SessionProtocol {
public:
  // Adopts handle if it is connected already (start-up), else connects in the background.
  // caps are what the export had at start-up: a server that comes back as another export
  // (read-only now, fewer capabilities, larger minimum block, another name or description) is
  // refused; one that comes back with another size is a resize, reported through size.
  NbdConnection(EventLoop &loop, const NbdOptions &options, const BackendCapabilities &caps, NbdExportSize &size,
                nbd_handle *handle, std::string name);
  ~NbdConnection();
  NbdConnection(const NbdConnection &) = delete;
  NbdConnection &operator=(const NbdConnection &) = delete;

  // Loop thread. Never fails synchronously except for an invalid request: held while
  // disconnected, resubmitted across reconnects, failed with EIO once the server has been
  // unreachable for longer than reconnect-timeout (the rules are SessionCore's).
  // source: the BackendQueue that submits (queues forwarding to this connection share it), for
  // fence() and cancel().
  int submit(const Request &req, CompletionFn done, void *ctx, const void *source = nullptr) noexcept;
  // Completes source's requests, in flight or held, with ECANCELED (its queue goes away).
  void cancel(const void *source) noexcept { core_.cancel(source); }
  // The driver reset (BackendQueue::fence) for source's requests: those not sent yet complete
  // with ECANCELED now; those on the wire complete with the server's answer, or with ECANCELED
  // if the connection is lost first (never sent again).
  void fence(const void *source) noexcept { core_.fence(source); }
  // After fence(): source's requests still on the wire are given up; the connection is
  // replaced (BackendQueue::abandon_fenced).
  void abandon_fenced(const void *source) noexcept { core_.abandon_fenced(source); }

  bool connected() const noexcept { return core_.ready(); }
  EventLoop &loop() const noexcept { return loop_; }
  std::uint64_t reconnects() const noexcept { return core_.reconnects(); }
  // Any thread: bounce memory allocated (in use or pooled); bounded by a fixed budget.
  std::size_t bounce_bytes() const noexcept { return bounce_bytes_.load(std::memory_order_relaxed); }

  struct Job; // one backend request, possibly several NBD commands

private:
  // SessionProtocol: libnbd's side of the reconnecting session.
  void connect() noexcept override;
  void disconnect() noexcept override;
  void send(SessionJob *job) noexcept override;
  void requeue(SessionJob *job) noexcept override;
  std::size_t fence_job(SessionJob *job) noexcept override;
  bool touches_buffers(const SessionJob &job) const noexcept override;
  void release(SessionJob *job, int error) noexcept override;

  void on_connected() noexcept;
  void on_server_shutdown() noexcept;
  bool issue_range(Job *op, char *buf, std::uint64_t offset, std::uint64_t length, std::uint64_t max) noexcept;
  void update_events() noexcept;
  void on_io(short events) noexcept;
  char *take_bounce(std::uint64_t length, unsigned &size_class) noexcept;
  void give_bounce(Job *job) noexcept;
  static int on_command_done(void *user_data, int *error) noexcept;
  // The own transmission path (nbd_transport.h), on plaintext connections after the handshake.
  void start_transport() noexcept;
  bool queued(Job *op, bool ok) noexcept;
  void flush_transport() noexcept;
  void on_transport_io(short events) noexcept;
  static void on_transport_done(void *ctx, int error) noexcept;
  void command_done(Job *op, int error) noexcept;

  EventLoop &loop_;
  NbdOptions options_;
  BackendCapabilities caps_;
  NbdExportSize &size_;
  nbd_handle *h_ = nullptr;
  std::uint64_t handle_size_ = 0; // the export size h_ negotiated: commands past it are refused
  std::unique_ptr<IoWatch> watch_;
  Deferred shutdown_; // the server answered ESHUTDOWN: replace the connection, outside libnbd's callback
  std::unique_ptr<NbdTransport> transport_; // set while the own transmission path serves h_
  // A transport dropped from inside its own receive(): freed once that has returned.
  std::unique_ptr<NbdTransport> retired_transport_;
  bool server_shutting_down_ = false; // a reply on the own path said ESHUTDOWN
  Deferred flush_;                    // the commands queued in this loop callback go out in one sendmsg
  Deferred reaper_;                   // frees retired_transport_
  bool closing_ = false;
  std::uint64_t generation_ = 0; // of the handle; commands of older handles are ignored
  JobPool<Job> jobs_;
  std::vector<std::unique_ptr<char[]>> bounce_pool_[10]; // 64 KiB .. 32 MiB, by power of two
  std::atomic<std::size_t> bounce_bytes_{0};             // allocated, in use or pooled (bounded)
  SessionCore core_;                                     // last: its timers go first
};

} // namespace vb
