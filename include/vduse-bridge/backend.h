// The boundary between the virtio-blk engine and the storage backends (memory, nbd, iscsi).
//
// Lifecycle: a Backend is created from its configuration, then open() connects it and fixes
// its Capabilities, which the engine asks for once. For each virtqueue the engine calls
// open_queue() with that queue's event loop; all I/O of the queue is submitted to that
// BackendQueue, on that loop's thread only.
//
// Completion contract: when submit() returns 0 the request's completion runs exactly once, on
// the queue's loop thread, possibly before submit() returns (a memory backend completes
// inline). When submit() returns an errno the completion never runs. Errors are positive errno
// values everywhere in this interface (submit's result and the completion's error):
// EOPNOTSUPP becomes VIRTIO_BLK_S_UNSUPP, anything else (a negative number too) VIRTIO_BLK_S_IOERR.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <sys/uio.h>
#include <vector>

namespace vb {

class EventLoop;

struct BackendCapabilities {
  std::uint64_t size = 0;                  // bytes, a multiple of logical_block_size
  std::uint32_t logical_block_size = 512;  // 512..4096, power of two
  std::uint32_t physical_block_size = 512; // >= logical_block_size
  std::uint32_t optimal_io_size = 0;       // bytes; 0 = not known
  std::uint32_t max_transfer = 0;          // bytes per command the storage takes; the backend splits larger requests
  std::uint32_t max_discard = 0;           // bytes per discard/zeroes; 0 = no limit
  bool read_only = false;
  bool can_flush = false;        // has a volatile cache that FLUSH writes back
  bool can_discard = false;      // trim/unmap
  bool can_write_zeroes = false; // efficient zeroing (else the engine does not offer it)
  bool can_zero_unmap = false;   // write_zeroes with may_unmap may deallocate
  std::string identity;          // stable id of the storage (export name, LUN WWN...) for logs and reattach
};

enum class Op : std::uint8_t { read, write, flush, discard, write_zeroes };

struct Request {
  Op op = Op::read;
  std::uint64_t offset = 0; // bytes
  std::uint64_t length = 0; // bytes; the sum of iov lengths for read/write
  const iovec *iov = nullptr;
  int iovcnt = 0;
  bool may_unmap = false; // write_zeroes: may deallocate
};

// Called once per accepted request. ctx is what was passed to submit(); error is 0 or an errno.
using CompletionFn = void (*)(void *ctx, int error) noexcept;

// All methods on the queue's loop thread only.
class BackendQueue {
public:
  virtual ~BackendQueue() = default;
  // Required. 0, or an errno refusing the request (then done never runs). The iovecs must stay
  // valid until completion.
  virtual int submit(const Request &req, CompletionFn done, void *ctx) noexcept = 0;
  // Optional (needed by a backend that holds requests): complete everything in flight with
  // ECANCELED, before the queue goes away.
  virtual void cancel_all() noexcept {}
  // Optional (needed by a backend that holds requests). The driver reset the device: nothing
  // accepted so far may reach the storage from now on unless it already has. Requests not yet
  // sent (held during an outage, waiting for a connection) complete with ECANCELED now; those
  // already sent complete when the storage answers, and a connection lost meanwhile completes
  // them with ECANCELED instead of sending them again. A backend that never holds a request (it
  // completes everything it accepted itself, as the memory backend does) needs nothing here.
  virtual void fence() noexcept {}
  // Optional (needed by a backend whose requests can wait on a remote peer). After fence(), the
  // requests from before the reset that are still unanswered when the engine's reset budget
  // runs out: from now on nothing may read or write their buffers (the old driver's memory,
  // which the new one may be using once the reset is answered). Drop what carries them (the
  // connection); each completes with ECANCELED, now or from the loop soon after. A backend
  // whose requests always finish promptly (memory, a local file) needs nothing here.
  virtual void abandon_fenced() noexcept {}
};

// How a backend tells the engine about its storage. Both calls may come from any thread and
// must not block; the engine's handlers only record or post.
class BackendEvents {
public:
  // Whether the storage is reachable, for status and metrics: connected; reconnecting (I/O is
  // held); failing (down past reconnect-timeout: I/O fails).
  enum class State { connected, reconnecting, failing };
  virtual ~BackendEvents() = default;
  // The state now, and why when it is not connected (empty: keep the last reason).
  virtual void health_changed(State state, const std::string &error) noexcept = 0;
  // The storage changed size (an NBD export seen bigger after a reconnect or when polled, an
  // iSCSI capacity-changed unit attention, a file that grew): the new size in bytes, rounded
  // down to whole logical blocks.
  virtual void resized(std::uint64_t size) noexcept = 0;
};

// BackendEvents that keep the latest health for whoever asks (the engine's status, tests) and
// pass a resize on to a handler. Any thread.
class RecordingBackendEvents final : public BackendEvents {
public:
  struct Health {
    State state = State::connected;
    std::chrono::system_clock::time_point since = std::chrono::system_clock::now(); // entered state
    std::string last_error;  // the latest error the backend reported, may be empty
    unsigned recoveries = 0; // times it became connected again after it was not
  };
  using ResizeHandler = std::function<void(std::uint64_t size)>;

  void health_changed(State state, const std::string &error) noexcept override {
    std::lock_guard lock(mu_);
    if (state != health_.state) {
      if (state == State::connected)
        ++health_.recoveries;
      health_.state = state;
      health_.since = std::chrono::system_clock::now();
    }
    if (!error.empty())
      health_.last_error = error;
  }
  void resized(std::uint64_t size) noexcept override {
    std::lock_guard lock(mu_);
    ++resizes_;
    last_size_ = size;
    if (on_resize_)
      on_resize_(size);
  }
  Health health() const {
    std::lock_guard lock(mu_);
    return health_;
  }
  unsigned resizes() const {
    std::lock_guard lock(mu_);
    return resizes_;
  }
  std::uint64_t last_size() const {
    std::lock_guard lock(mu_);
    return last_size_;
  }
  // nullptr removes it; runs on the reporting thread, under a lock: it must only post.
  void set_resize_handler(ResizeHandler handler) {
    std::lock_guard lock(mu_);
    on_resize_ = std::move(handler);
  }

private:
  mutable std::mutex mu_;
  Health health_;
  unsigned resizes_ = 0;
  std::uint64_t last_size_ = 0;
  ResizeHandler on_resize_;
};

// One path to the storage, for status and metrics (a backend that reaches it several ways:
// iSCSI multipath).
struct BackendPathStatus {
  std::string name;            // "192.0.2.1:3260"
  unsigned sessions = 0;       // one per queue
  unsigned sessions_up = 0;    // of those, logged in and carrying I/O when the policy picks it
  std::uint64_t failovers = 0; // requests moved off this path when it failed
  std::string last_error;      // why it last went down or was refused; empty if never
  std::string alua;            // its ALUA state ("active/optimized", "standby", ...); empty: no ALUA
};

// Threads: open() and capabilities() on the device's control thread; open_queue() on the
// queue's loop thread; device_destroyed() on the control thread.
class Backend {
public:
  using State = BackendEvents::State;

  virtual ~Backend() = default;
  // Required. Connects (may block: called on the device's control thread before the device
  // exists, never from a data-path loop) and fixes the capabilities. Throws with a message on
  // failure; the daemon then tries again later with a new Backend. events must outlive the
  // backend: every health change and resize from now on goes there (see report_health,
  // report_resize). A backend that waits on the network bounds the wait (its handshake timeout)
  // and gives up soon, throwing, once *cancelled (set from another thread: the device is being
  // removed or the daemon stops) is true; cancelled, if given, outlives the call.
  void open(BackendEvents &events, const std::atomic<bool> *cancelled = nullptr) {
    events_ = &events;
    cancelled_ = cancelled;
    connect();
    cancelled_ = nullptr;
  }
  // Required. Valid after open(); constant afterwards.
  virtual const BackendCapabilities &capabilities() const = 0;
  // Required. Creates the per-queue context bound to loop (called on that loop's thread).
  virtual std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) = 0;
  // Required. The module's type for logs and the recovery state: "memory", "nbd", "iscsi".
  virtual const char *kind() const noexcept = 0;
  // Optional. The device was torn down for good (not a restart): drop anything kept for a
  // successor daemon, such as a memory disk's contents file.
  virtual void device_destroyed() noexcept {}
  // Optional, any thread. The paths to the storage when there are several; empty otherwise.
  virtual std::vector<BackendPathStatus> paths() const { return {}; }

protected:
  // open()'s work, once events are known.
  virtual void connect() = 0;
  // During connect(): whether open() was cancelled (poll it in every wait, at least every 100 ms).
  bool open_cancelled() const noexcept { return cancelled_ && cancelled_->load(std::memory_order_relaxed); }
  // Any thread (a backend's own threads too); nothing happens before open().
  void report_health(State state, const std::string &error = {}) noexcept {
    if (events_)
      events_->health_changed(state, error);
  }
  void report_resize(std::uint64_t size) noexcept {
    if (events_)
      events_->resized(size);
  }

private:
  BackendEvents *events_ = nullptr;
  const std::atomic<bool> *cancelled_ = nullptr;
};

} // namespace vb
