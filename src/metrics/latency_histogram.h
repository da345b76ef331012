// A latency histogram with fixed log-linear buckets, recorded by one thread without locks and
// read by any thread as a snapshot.
//
// Buckets: [0, 1.024 us), then 8 linear sub-buckets per power of two from 2^10 ns (1.024 us) up to
// 2^39 ns (550 s, past the longest a request is held while its backend reconnects with the usual
// reconnect-timeout), then [550 s, inf). Each log-linear bucket is 1/8 of its lower edge wide, so a
// value known only by its bucket is known within 12.5%. Alongside them the histogram counts the
// Prometheus export bounds (kExportBoundsNs) exactly, because those decimal bounds cannot fall
// on power-of-two bucket edges.
//
// Threading: record() from one writer thread only (the queue's loop thread); snapshot() from any
// thread, at any time. Increments are relaxed single-writer stores, so a snapshot taken during
// recording is not atomic across fields: every bucket is exact at the moment it was read,
// count() is the sum of the buckets read (so it always agrees with them), and sum_ns may include a
// few samples more or fewer than the buckets.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace vb::metrics {

inline constexpr unsigned kSubBucketBits = 3; // 8 sub-buckets per power of two
inline constexpr unsigned kSubBuckets = 1u << kSubBucketBits;
inline constexpr unsigned kMinShift = 10; // the first log-linear bucket starts at 2^10 ns
inline constexpr unsigned kPowers = 29;   // 2^10 ns .. 2^39 ns (550 s)
// Underflow, the log-linear buckets, overflow.
inline constexpr std::size_t kLatencyBuckets = 1 + std::size_t{kPowers} * kSubBuckets + 1;
inline constexpr std::uint64_t kOverflowNs = std::uint64_t{1} << (kMinShift + kPowers);

// The upper bounds ("le") of the exported Prometheus histogram, in nanoseconds: 50 us to 1 s for
// I/O, then 2.5 s to 300 s for requests held while the backend reconnects (up to reconnect-timeout);
// a last, implicit bucket holds everything above 300 s (le="+Inf").
inline constexpr std::array<std::uint64_t, 19> kExportBoundsNs = {
    50'000,         100'000,        250'000,        500'000,         1'000'000,      2'500'000,     5'000'000,
    10'000'000,     25'000'000,     50'000'000,     100'000'000,     250'000'000,    1'000'000'000, 2'500'000'000,
    10'000'000'000, 30'000'000'000, 60'000'000'000, 120'000'000'000, 300'000'000'000};
inline constexpr std::size_t kExportBuckets = kExportBoundsNs.size() + 1;

// The bucket that holds ns. Pure, any thread.
constexpr std::size_t latency_bucket(std::uint64_t ns) noexcept {
  if (ns < (std::uint64_t{1} << kMinShift))
    return 0;
  const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(ns));
  if (msb >= kMinShift + kPowers)
    return kLatencyBuckets - 1;
  const unsigned sub = static_cast<unsigned>(ns >> (msb - kSubBucketBits)) & (kSubBuckets - 1);
  return 1 + std::size_t{msb - kMinShift} * kSubBuckets + sub;
}

// Bucket i holds values in [latency_bucket_lower(i), latency_bucket_upper(i)); the overflow
// bucket's upper edge is UINT64_MAX.
std::uint64_t latency_bucket_lower(std::size_t i) noexcept;
std::uint64_t latency_bucket_upper(std::size_t i) noexcept;

// A plain copy of a histogram: copyable, mergeable, any thread.
struct HistogramSnapshot {
  std::array<std::uint64_t, kLatencyBuckets> buckets{};
  // Per export bound, not cumulative: export_buckets[i] counts kExportBoundsNs[i-1] < ns <= kExportBoundsNs[i];
  // the last one counts ns above the last bound.
  std::array<std::uint64_t, kExportBuckets> export_buckets{};
  std::uint64_t sum_ns = 0;

  std::uint64_t count() const noexcept;
  // Cumulative export counts in the Prometheus sense: [i] = samples <= kExportBoundsNs[i], the
  // last = every sample (le="+Inf"). Monotonic; the last equals export_count().
  std::array<std::uint64_t, kExportBuckets> cumulative_export() const noexcept;
  std::uint64_t export_count() const noexcept;
  double mean_ns() const noexcept;

  // The p-th percentile (0..100, nearest rank) in nanoseconds, 0 if empty. Interpolated linearly
  // within the bucket holding the sample of that rank, so for values >= 1.024 us the result is
  // within 12.5% of the true nearest-rank value (bucket width / lower edge = 1/8); below 1.024 us
  // within 1.024 us; samples >= 550 s are reported as 550 s.
  double percentile(double p) const noexcept;

  // Adds other's counts to this one (queues of a device, devices of a host).
  void merge(const HistogramSnapshot &other) noexcept;
  // What was recorded since previous (an earlier snapshot of the same histogram). If any count
  // went down (the histogram was replaced, e.g. by a restart) the whole of *this is returned.
  HistogramSnapshot since(const HistogramSnapshot &previous) const noexcept;
};

class LatencyHistogram {
public:
  LatencyHistogram() = default;
  LatencyHistogram(const LatencyHistogram &) = delete;
  LatencyHistogram &operator=(const LatencyHistogram &) = delete;

  // Writer thread only. No locks, no allocation, no atomic read-modify-write.
  void record(std::uint64_t ns) noexcept {
    bump(buckets_[latency_bucket(ns)], 1);
    bump(export_buckets_[export_bucket(ns)], 1);
    bump(sum_ns_, ns);
  }
  // Any thread.
  HistogramSnapshot snapshot() const noexcept;

  static std::size_t export_bucket(std::uint64_t ns) noexcept {
    std::size_t i = 0; // 19 bounds: a linear scan is as fast as a binary search and branch-friendly
    while (i < kExportBoundsNs.size() && ns > kExportBoundsNs[i])
      ++i;
    return i;
  }

private:
  // Only one thread writes, so load + store is an exact increment; readers see each store whole.
  static void bump(std::atomic<std::uint64_t> &counter, std::uint64_t by) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }

  std::array<std::atomic<std::uint64_t>, kLatencyBuckets> buckets_{};
  std::array<std::atomic<std::uint64_t>, kExportBuckets> export_buckets_{};
  std::atomic<std::uint64_t> sum_ns_{0};
};

} // namespace vb::metrics
