#include "metrics/queue_counters.h"

namespace vb::metrics {

const char *to_string(RequestKind kind) noexcept {
  switch (kind) {
  case RequestKind::read:
    return "read";
  case RequestKind::write:
    return "write";
  case RequestKind::flush:
    return "flush";
  case RequestKind::discard:
    return "discard";
  case RequestKind::write_zeroes:
    return "write_zeroes";
  case RequestKind::other:
    break;
  }
  return "other";
}

std::uint64_t QueueSnapshot::total_requests() const noexcept {
  std::uint64_t n = 0;
  for (std::uint64_t r : requests)
    n += r;
  return n;
}

void QueueSnapshot::merge(const QueueSnapshot &other) noexcept {
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    requests[i] += other.requests[i];
  bytes_read += other.bytes_read;
  bytes_written += other.bytes_written;
  errors += other.errors;
  bad_chains += other.bad_chains;
  interrupts += other.interrupts;
  in_flight += other.in_flight;
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    latency[i].merge(other.latency[i]);
}

QueueSnapshot QueueCounters::snapshot() const noexcept {
  QueueSnapshot s;
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    s.requests[i] = requests_[i].load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.errors = errors_.load(std::memory_order_relaxed);
  s.bad_chains = bad_chains_.load(std::memory_order_relaxed);
  s.interrupts = interrupts_.load(std::memory_order_relaxed);
  s.in_flight = in_flight_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    s.latency[i] = latency_[i].snapshot();
  return s;
}

} // namespace vb::metrics
