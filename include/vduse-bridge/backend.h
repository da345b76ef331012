// The boundary between the virtio-blk engine and the storage backends (memory, nbd, iscsi).
//
// Lifecycle: a Backend is created from its configuration, then open() connects it and fixes
// its Capabilities, which the engine asks for once. For each virtqueue the engine calls
// open_queue() with that queue's event loop; all I/O of the queue is submitted to that
// BackendQueue, on that loop's thread only.
//
// Completion contract: when submit() returns 0 the request's completion runs exactly once, on
// the queue's loop thread, possibly before submit() returns (a memory backend completes
// inline). When submit() returns a negative errno the completion never runs. Errors are errno
// values: EOPNOTSUPP becomes VIRTIO_BLK_S_UNSUPP, anything else VIRTIO_BLK_S_IOERR.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <sys/uio.h>

namespace vb {

class EventLoop;

struct BackendCapabilities {
  std::uint64_t size = 0;                  // bytes, a multiple of logical_block_size
  std::uint32_t logical_block_size = 512;  // 512..4096, power of two
  std::uint32_t physical_block_size = 512; // >= logical_block_size
  std::uint32_t optimal_io_size = 0;       // bytes; 0 = not known
  std::uint32_t max_transfer = 0;          // bytes per read/write; 0 = no limit (the engine splits)
  std::uint32_t max_discard = 0;           // bytes per discard/zeroes; 0 = no limit
  bool read_only = false;
  bool can_flush = false;        // has a volatile cache that FLUSH writes back
  bool can_fua = false;          // honours Request::fua on writes
  bool can_discard = false;      // trim/unmap
  bool can_write_zeroes = false; // efficient zeroing (else the engine does not offer it)
  bool can_zero_unmap = false;   // write_zeroes with may_unmap may deallocate
  bool multi_queue_safe = true;  // requests on different queues need no ordering between them
  std::string identity;          // stable id of the storage (export name, LUN WWN...) for logs and reattach
};

enum class Op : std::uint8_t { read, write, flush, discard, write_zeroes };

struct Request {
  Op op = Op::read;
  std::uint64_t offset = 0; // bytes
  std::uint64_t length = 0; // bytes; the sum of iov lengths for read/write
  const iovec *iov = nullptr;
  int iovcnt = 0;
  bool fua = false;       // write: durable on completion
  bool may_unmap = false; // write_zeroes: may deallocate
};

// Called once per accepted request. ctx is what was passed to submit(); error is 0 or an errno.
using CompletionFn = void (*)(void *ctx, int error) noexcept;

class BackendQueue {
public:
  virtual ~BackendQueue() = default;
  // Loop thread only. The iovecs must stay valid until completion.
  virtual int submit(const Request &req, CompletionFn done, void *ctx) noexcept = 0;
  // Loop thread only: complete everything in flight with ECANCELED, before the queue goes away.
  virtual void cancel_all() noexcept {}
  // Loop thread only. The driver reset the device: nothing accepted so far may reach the storage
  // from now on unless it already has. Requests not yet sent (held during an outage, waiting for
  // a connection) complete with ECANCELED now; those already sent complete when the storage
  // answers, and a connection lost meanwhile completes them with ECANCELED instead of sending
  // them again. A backend that never holds a request (it completes everything it accepted
  // itself, as the memory backend does) needs nothing here.
  virtual void fence() noexcept {}
};

class Backend {
public:
  virtual ~Backend() = default;
  // Connects (may block: called at start-up, never from a data-path loop). Throws with a
  // message on failure.
  virtual void open() = 0;
  // Valid after open(); constant afterwards.
  virtual const BackendCapabilities &capabilities() const = 0;
  // Creates the per-queue context bound to loop (called on that loop's thread).
  virtual std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) = 0;
  // A short name for logs: "memory", "nbd", "iscsi".
  virtual const char *kind() const noexcept = 0;
  // The device was torn down for good (not a restart): drop anything kept for a successor
  // daemon, such as a memory disk's contents file.
  virtual void device_destroyed() noexcept {}

  // Resize: a backend that learns the storage's size changed (an NBD export seen bigger after a
  // reconnect or when polled, an iSCSI capacity-changed unit attention) reports the new size in
  // bytes, rounded down to whole logical blocks. The engine installs the handler after open(),
  // and removes it (nullptr) before the backend goes away. Any thread; the handler runs on the
  // reporting thread and must not block.
  using ResizeHandler = std::function<void(std::uint64_t size)>;
  void set_resize_handler(ResizeHandler handler) {
    std::lock_guard lock(resize_mu_);
    resize_handler_ = std::move(handler);
  }

  // Whether the storage is reachable, for status and metrics: connected; reconnecting (I/O is
  // held); failing (down past reconnect-timeout: I/O fails). Any thread.
  enum class State { connected, reconnecting, failing };
  struct Health {
    State state = State::connected;
    std::chrono::system_clock::time_point since = std::chrono::system_clock::now(); // entered state
    std::string last_error; // the latest error the backend reported, may be empty
  };
  Health health() const {
    std::lock_guard lock(health_mu_);
    return health_;
  }
  // Backends (any thread): the state now, and why when it is not connected.
  void report_health(State state, const std::string &error = {}) {
    std::lock_guard lock(health_mu_);
    if (state != health_.state) {
      health_.state = state;
      health_.since = std::chrono::system_clock::now();
    }
    if (!error.empty())
      health_.last_error = error;
  }

protected:
  void report_resize(std::uint64_t size) {
    std::lock_guard lock(resize_mu_);
    if (resize_handler_)
      resize_handler_(size);
  }

private:
  std::mutex resize_mu_;
  ResizeHandler resize_handler_;
  mutable std::mutex health_mu_;
  Health health_;
};

} // namespace vb
