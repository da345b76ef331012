// Serves one virtqueue of a block export on its own thread and event loop: kick -> pop chains
// -> parse -> submit to the backend -> complete exactly once -> used ring -> interrupt.
//
// Threading: the worker thread owns the ring, the request slots and the BackendQueue. The
// control thread talks to it only through the *_sync methods, which run on the worker thread
// and wait for it (the worker never blocks, so the wait is short).
#pragma once

#include "event/event_loop.h"
#include "metrics/queue_counters.h"
#include "recovery/queue_log.h"
#include "vduse-bridge/backend.h"
#include "virtio/queue_host.h"
#include "virtio/split_queue.h"
#include "virtio_blk/blk_request.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace vb {

struct QueueStats {
  std::uint64_t requests = 0;
  std::uint64_t errors = 0;     // completed with a status other than OK
  std::uint64_t bad_chains = 0; // malformed chains failed without parsing
  std::uint64_t interrupts = 0;
  bool broken = false; // the driver corrupted the ring: not served until the device is reset
};

class QueueWorker {
public:
  // log: the queue's in-flight log in the device's recovery state, or nullptr (no recovery:
  // tests, or no state directory). With a log every pop and every published completion is
  // recorded so that a successor daemon can replay exactly what was in flight.
  // busy_poll: 0, or how long the thread keeps polling the ring (and the backend's events)
  // after the last activity instead of sleeping (the device's busy-poll-us).
  QueueWorker(std::string device_name, unsigned index, virtio::QueueHost &host, virtio::GuestMemory &memory,
              Backend &backend, const blk::DeviceParams &params, recovery::QueueLog *log = nullptr,
              std::chrono::microseconds busy_poll = {});
  // Stops the thread; requests still in flight in the backend are cancelled first.
  ~QueueWorker();
  QueueWorker(const QueueWorker &) = delete;
  QueueWorker &operator=(const QueueWorker &) = delete;

  // Control thread. Maps the ring, installs a fresh kickfd and scans the ring once (kicks sent
  // before the kickfd existed are not lost). Returns false if the ring cannot be mapped.
  bool start_sync(const virtio::RingLayout &layout, std::uint16_t next_avail, bool event_idx);
  // Control thread, in a daemon that reattached to a live device (a predecessor died or
  // detached): repairs the in-flight log against the used ring, resubmits what was in flight
  // (oldest first), then serves the ring from where the predecessor stopped and injects one
  // interrupt. kernel_avail is the kernel's avail index for a queue the log never saw started.
  // Without a log, or with log_trusted false (the log was created after the device: it never
  // saw this ring), the queue is served only if nothing is outstanding (used == avail). Returns
  // false (the queue is not served) if the ring cannot be mapped or the log does not fit it.
  bool resume_sync(const virtio::RingLayout &layout, bool event_idx, std::uint16_t kernel_avail,
                   bool log_trusted = true);
  // Control thread. Stops consuming the ring (device reset): results of requests still in the
  // backend are dropped when they arrive; nothing is written to the ring any more. The old
  // driver's I/O is fenced: what the backend has not sent yet is dropped (BackendQueue::fence),
  // and the new driver's requests wait until what was already sent has finished, so nothing
  // from before the reset lands after a write made after it.
  void stop_sync();
  // Control thread, after stop_sync(): how many requests from before the reset are still in
  // the backend, and (settle_queues) the backend's abandon of them (BackendQueue::abandon_fenced).
  std::size_t old_requests_sync();
  void abandon_old_sync();
  // Control thread. Planned restart: stops taking new requests from the ring (kicks are left
  // unanswered) while requests in flight still complete normally; the in-flight log stays valid
  // for the successor. Follow with drain_sync().
  void pause_sync();
  // Control thread, after pause_sync() and drain_sync(): stops using the ring without touching
  // the in-flight log (unlike stop_sync(), which is a reset); late results are dropped.
  void abandon_sync();
  // Control thread, after the kernel retired mappings (UPDATE_IOTLB) and before it is answered:
  // translates the rings again (requests in flight keep the mappings they were given, pinned).
  // A ring that is no longer mapped stops the queue until the device is reset.
  void remap_sync();
  // Control thread. The next available index this queue would consume (GET_VQ_STATE); before a
  // reattached queue resumes, the one its recovery log holds.
  std::uint16_t next_avail_sync();
  QueueStats stats_sync();
  // Any thread: the queue's counters and latency histograms (snapshots are lock-free).
  const metrics::QueueCounters &counters() const noexcept { return *counters_; }
  // Any thread. Requests past the new end fail from now on (resize); the ring is not touched.
  void set_capacity(std::uint64_t bytes);
  // Control thread. Waits (bounded) until the backend has completed everything in flight.
  bool drain_sync(unsigned timeout_ms);

private:
  struct Slot;
  void run_sync(const std::function<void()> &fn);
  void on_kick() noexcept;
  void process() noexcept;
  void handle_chain(std::unique_ptr<Slot> slot) noexcept;
  void complete(Slot *slot, int error) noexcept;
  bool begin(const virtio::RingLayout &layout, std::uint16_t next_avail, bool event_idx) noexcept;
  bool map_ring(const virtio::RingLayout &layout, std::uint16_t next_avail, bool event_idx) noexcept;
  void unmap_ring() noexcept;
  bool serve_if_nothing_outstanding(const virtio::RingLayout &layout, bool event_idx) noexcept;
  void submit_to_backend(Slot *s) noexcept;
  void submit_fenced() noexcept;
  void drop_fenced() noexcept;
  void recycle(std::unique_ptr<Slot> slot) noexcept;
  void publish(std::uint16_t head, std::uint32_t len) noexcept;
  void stop_ring(bool reset_log) noexcept;
  void submit_chain(std::unique_ptr<Slot> slot, virtio::PopResult r) noexcept;
  std::unique_ptr<Slot> take_slot();
  void release(Slot *slot) noexcept;
  void notify() noexcept;
  bool poll_ring() noexcept;
  bool before_sleep() noexcept;
  static void on_backend_done(void *ctx, int error) noexcept;

  std::string name_; // "disk0/q0" for logs
  unsigned index_;
  virtio::QueueHost &host_;
  virtio::GuestMemory &memory_;
  Backend &backend_;
  blk::DeviceParams params_; // this thread's copy: only capacity changes, through set_capacity()
  recovery::QueueLog *log_;

  EventLoop loop_;
  std::unique_ptr<BackendQueue> backend_queue_;
  virtio::SplitQueue ring_;
  int kick_fd_ = -1;
  std::unique_ptr<IoWatch> kick_watch_;
  Deferred notify_check_;
  Deferred reprocess_;
  bool broken_ = false;
  bool paused_ = false;                          // planned restart: no more pops
  bool pushed_ = false;                          // used entries published since the last notification decision
  std::chrono::microseconds busy_poll_;          // 0: sleep between events
  bool polling_ = false;                         // kicks stay off: the thread polls the ring
  bool activity_ = false;                        // a chain popped or a request completed since the last poll
  std::uint64_t ring_pin_ = 0;                   // GuestMemory pin held while the ring is mapped
  std::uint32_t generation_ = 0;                 // bumped on every stop: completions of older ones are dropped
  std::vector<std::unique_ptr<Slot>> in_flight_; // by head, for the current generation
  std::vector<std::unique_ptr<Slot>> free_slots_;
  std::size_t outstanding_ = 0;     // in the backend, all generations
  std::size_t outstanding_old_ = 0; // in the backend, from before the last reset
  std::vector<Slot *> fenced_;      // the new driver's requests, waiting for those (oldest first)
  std::uint16_t stopped_next_avail_ = 0;
  QueueStats stats_;
  std::unique_ptr<metrics::QueueCounters> counters_ = std::make_unique<metrics::QueueCounters>();
  std::thread thread_;
};

// Control thread, after stop_sync() on each of queues: waits until the requests from before the
// reset have finished, so that none of them touches the old driver's buffers once the reset is
// answered (a read landing in memory the new driver already uses, a write sending what it put
// there). At abandon_at every queue that still has some abandons them at once; then they get
// until give_up_at. False if some were still in the backend then (a backend that cannot abandon,
// or writes sent in full that the server has not answered: those no longer touch the buffers,
// and the new driver's requests wait for them).
bool settle_queues(const std::vector<QueueWorker *> &queues, std::chrono::steady_clock::time_point abandon_at,
                   std::chrono::steady_clock::time_point give_up_at);

} // namespace vb
