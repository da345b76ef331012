// Per-queue counters of a block export: one writer (the queue's loop thread), any number of
// readers (the control thread formatting status or metrics).
//
// Threading: record_*() and set_in_flight() from the queue's thread only; snapshot() from any
// thread. Nothing locks or allocates; see latency_histogram.h for what a snapshot taken during
// recording guarantees (each counter exact, fields not atomic with one another).
// Lifetime: the counters must outlive every reader (the export owns them; readers take snapshots).
#pragma once

#include "metrics/latency_histogram.h"

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace vb::metrics {

// What a request was, for counting. other: GET_ID and types the device does not support.
enum class RequestKind : std::uint8_t { read, write, flush, discard, write_zeroes, other };
inline constexpr std::size_t kRequestKinds = 6;
// "read", "write", "flush", "discard", "write_zeroes", "other" (Prometheus op label values).
const char *to_string(RequestKind kind) noexcept;

// A plain copy of one queue's counters (or the merge of several queues'). Any thread.
struct QueueSnapshot {
  std::array<std::uint64_t, kRequestKinds> requests{};  // completed, by kind
  std::uint64_t bytes_read = 0;                         // data of successful reads
  std::uint64_t bytes_written = 0;                      // data of successful writes
  std::uint64_t errors = 0;                             // completed with an error
  std::uint64_t bad_chains = 0;                         // malformed descriptor chains
  std::uint64_t interrupts = 0;                         // used-ring notifications sent
  std::uint64_t in_flight = 0;                          // gauge: in the backend now
  std::array<HistogramSnapshot, kRequestKinds> latency; // by kind, like requests

  std::uint64_t total_requests() const noexcept;
  std::uint64_t requests_of(RequestKind kind) const noexcept { return requests[static_cast<std::size_t>(kind)]; }
  const HistogramSnapshot &latency_of(RequestKind kind) const noexcept {
    return latency[static_cast<std::size_t>(kind)];
  }
  // Adds other's counters (and in-flight gauge) to this one.
  void merge(const QueueSnapshot &other) noexcept;
};

class alignas(64) QueueCounters { // its own cache lines: queues' threads write side by side
public:
  QueueCounters() = default;
  QueueCounters(const QueueCounters &) = delete;
  QueueCounters &operator=(const QueueCounters &) = delete;

  // Queue thread. One finished request: bytes is its data length (counted only for successful
  // reads and writes), latency_ns the time from pop to completion, ok false for any status but OK.
  void record_completion(RequestKind kind, std::uint64_t bytes, std::uint64_t latency_ns, bool ok) noexcept {
    bump(requests_[static_cast<std::size_t>(kind)], 1);
    if (!ok)
      bump(errors_, 1);
    else if (kind == RequestKind::read)
      bump(bytes_read_, bytes);
    else if (kind == RequestKind::write)
      bump(bytes_written_, bytes);
    latency_[static_cast<std::size_t>(kind)].record(latency_ns);
  }
  // Queue thread.
  void record_bad_chain() noexcept { bump(bad_chains_, 1); }
  void record_interrupt() noexcept { bump(interrupts_, 1); }
  // Queue thread: the number of requests in the backend now (the queue knows it exactly, so the
  // gauge cannot drift the way paired increments and decrements can).
  void set_in_flight(std::uint64_t n) noexcept { in_flight_.store(n, std::memory_order_relaxed); }

  // Any thread.
  QueueSnapshot snapshot() const noexcept;

private:
  static void bump(std::atomic<std::uint64_t> &counter, std::uint64_t by) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }

  std::array<std::atomic<std::uint64_t>, kRequestKinds> requests_{};
  std::atomic<std::uint64_t> bytes_read_{0};
  std::atomic<std::uint64_t> bytes_written_{0};
  std::atomic<std::uint64_t> errors_{0};
  std::atomic<std::uint64_t> bad_chains_{0};
  std::atomic<std::uint64_t> interrupts_{0};
  std::atomic<std::uint64_t> in_flight_{0};
  // One per kind, so that the exported histogram has the op values of requests_total: about 2 KiB
  // each (latency_histogram.h), 12 KiB a queue.
  std::array<LatencyHistogram, kRequestKinds> latency_;
};

} // namespace vb::metrics
