#include "metrics/latency_histogram.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace vb::metrics {

std::uint64_t latency_bucket_lower(std::size_t i) noexcept {
  if (i == 0)
    return 0;
  if (i >= kLatencyBuckets - 1)
    return kOverflowNs;
  const std::size_t power = (i - 1) / kSubBuckets;
  const std::size_t sub = (i - 1) % kSubBuckets;
  return std::uint64_t{kSubBuckets + sub} << (power + kMinShift - kSubBucketBits);
}

std::uint64_t latency_bucket_upper(std::size_t i) noexcept {
  if (i == 0)
    return std::uint64_t{1} << kMinShift;
  if (i >= kLatencyBuckets - 1)
    return std::numeric_limits<std::uint64_t>::max();
  const std::size_t power = (i - 1) / kSubBuckets;
  return latency_bucket_lower(i) + (std::uint64_t{1} << (power + kMinShift - kSubBucketBits));
}

std::uint64_t HistogramSnapshot::count() const noexcept {
  std::uint64_t n = 0;
  for (std::uint64_t c : buckets)
    n += c;
  return n;
}

std::uint64_t HistogramSnapshot::export_count() const noexcept {
  std::uint64_t n = 0;
  for (std::uint64_t c : export_buckets)
    n += c;
  return n;
}

std::array<std::uint64_t, kExportBuckets> HistogramSnapshot::cumulative_export() const noexcept {
  std::array<std::uint64_t, kExportBuckets> out{};
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < kExportBuckets; ++i) {
    n += export_buckets[i];
    out[i] = n;
  }
  return out;
}

double HistogramSnapshot::mean_ns() const noexcept {
  const std::uint64_t n = count();
  return n == 0 ? 0.0 : static_cast<double>(sum_ns) / static_cast<double>(n);
}

double HistogramSnapshot::percentile(double p) const noexcept {
  const std::uint64_t n = count();
  if (n == 0)
    return 0.0;
  p = std::clamp(p, 0.0, 100.0);
  // Nearest rank: the smallest sample with at least p% of the samples at or below it.
  auto rank = static_cast<std::uint64_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
  rank = std::clamp<std::uint64_t>(rank, 1, n);
  std::uint64_t below = 0;
  for (std::size_t i = 0; i < kLatencyBuckets; ++i) {
    const std::uint64_t c = buckets[i];
    if (below + c < rank) {
      below += c;
      continue;
    }
    if (i == kLatencyBuckets - 1)
      return static_cast<double>(kOverflowNs);
    // The k-th of c samples spread evenly over the bucket sits at (k - 1/2) / c of its width.
    const double lower = static_cast<double>(latency_bucket_lower(i));
    const double width = static_cast<double>(latency_bucket_upper(i) - latency_bucket_lower(i));
    const double k = static_cast<double>(rank - below);
    return lower + width * (k - 0.5) / static_cast<double>(c);
  }
  return static_cast<double>(kOverflowNs); // not reached: the ranks add up to n
}

void HistogramSnapshot::merge(const HistogramSnapshot &other) noexcept {
  for (std::size_t i = 0; i < kLatencyBuckets; ++i)
    buckets[i] += other.buckets[i];
  for (std::size_t i = 0; i < kExportBuckets; ++i)
    export_buckets[i] += other.export_buckets[i];
  sum_ns += other.sum_ns;
}

HistogramSnapshot HistogramSnapshot::since(const HistogramSnapshot &previous) const noexcept {
  bool reset = sum_ns < previous.sum_ns;
  for (std::size_t i = 0; i < kLatencyBuckets && !reset; ++i)
    reset = buckets[i] < previous.buckets[i];
  for (std::size_t i = 0; i < kExportBuckets && !reset; ++i)
    reset = export_buckets[i] < previous.export_buckets[i];
  if (reset)
    return *this;
  HistogramSnapshot d;
  for (std::size_t i = 0; i < kLatencyBuckets; ++i)
    d.buckets[i] = buckets[i] - previous.buckets[i];
  for (std::size_t i = 0; i < kExportBuckets; ++i)
    d.export_buckets[i] = export_buckets[i] - previous.export_buckets[i];
  d.sum_ns = sum_ns - previous.sum_ns;
  return d;
}

HistogramSnapshot LatencyHistogram::snapshot() const noexcept {
  HistogramSnapshot s;
  for (std::size_t i = 0; i < kLatencyBuckets; ++i)
    s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < kExportBuckets; ++i)
    s.export_buckets[i] = export_buckets_[i].load(std::memory_order_relaxed);
  s.sum_ns = sum_ns_.load(std::memory_order_relaxed);
  return s;
}

} // namespace vb::metrics
