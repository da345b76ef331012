#include "metrics/device_status.h"
#include "metrics/latency_histogram.h"
#include "metrics/prometheus.h"
#include "metrics/queue_counters.h"
#include "metrics/status_text.h"

#include "common/units.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace vb::metrics;
using namespace std::chrono_literals;

namespace {

// The exact nearest-rank percentile of sorted samples, as HistogramSnapshot::percentile defines it.
double exact_percentile(const std::vector<std::uint64_t> &sorted, double p) {
  auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  rank = std::clamp<std::size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]);
}

// Records samples, then checks every percentile against the documented bound: within 12.5% of
// the true value at or above 1.024 us, within 1.024 us below.
void check_percentiles(std::vector<std::uint64_t> samples) {
  LatencyHistogram h;
  for (std::uint64_t s : samples)
    h.record(s);
  const HistogramSnapshot snap = h.snapshot();
  REQUIRE(snap.count() == samples.size());
  std::sort(samples.begin(), samples.end());
  for (double p : {0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    const double exact = exact_percentile(samples, p);
    const double estimate = snap.percentile(p);
    const double bound = exact >= 1024 ? exact / 8 : 1024;
    INFO("p" << p << " exact " << exact << " estimate " << estimate);
    CHECK(std::abs(estimate - exact) <= bound);
  }
}

// One parsed sample line of the exposition format.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

bool valid_metric_name(const std::string &n) {
  if (n.empty() || !(std::isalpha(static_cast<unsigned char>(n[0])) || n[0] == '_' || n[0] == ':'))
    return false;
  return std::all_of(n.begin(), n.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':'; });
}

// Parses `name{k="v",...} value` undoing the label escapes; fails the test on anything else.
Sample parse_sample(const std::string &line) {
  Sample s;
  std::size_t i = 0;
  while (i < line.size() && line[i] != '{' && line[i] != ' ')
    s.name += line[i++];
  REQUIRE_MESSAGE(valid_metric_name(s.name), line);
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      std::string key;
      while (i < line.size() && line[i] != '=')
        key += line[i++];
      REQUIRE_MESSAGE(valid_metric_name(key), line);
      REQUIRE(line.compare(i, 2, "=\"") == 0);
      i += 2;
      std::string value;
      for (;;) {
        REQUIRE_MESSAGE(i < line.size(), "unterminated label value: " << line);
        const char c = line[i++];
        if (c == '"')
          break;
        REQUIRE_MESSAGE(c != '\n', line);
        if (c == '\\') {
          REQUIRE(i < line.size());
          const char e = line[i++];
          REQUIRE_MESSAGE((e == '\\' || e == '"' || e == 'n'), "bad escape in: " << line);
          value += e == 'n' ? '\n' : e;
        } else {
          value += c;
        }
      }
      REQUIRE_MESSAGE(s.labels.count(key) == 0, "duplicate label in: " << line);
      s.labels[key] = value;
      if (i < line.size() && line[i] == ',')
        ++i;
    }
    REQUIRE(i < line.size());
    ++i; // '}'
  }
  REQUIRE_MESSAGE((i < line.size() && line[i] == ' '), line);
  const std::string value = line.substr(i + 1);
  if (value == "+Inf")
    s.value = std::numeric_limits<double>::infinity();
  else {
    std::size_t used = 0;
    s.value = std::stod(value, &used);
    REQUIRE_MESSAGE(used == value.size(), line);
  }
  return s;
}

// The family a sample belongs to: histogram samples carry _bucket/_sum/_count suffixes.
std::string family_of(const std::string &name, const std::map<std::string, std::string> &types) {
  for (const char *suffix : {"_bucket", "_sum", "_count"}) {
    const std::string sfx = suffix;
    if (name.size() > sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0) {
      const std::string base = name.substr(0, name.size() - sfx.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram")
        return base;
    }
  }
  return name;
}

DeviceStatus make_device(const std::string &name, std::uint64_t reads, std::uint64_t latency_ns) {
  QueueCounters q0, q1;
  for (std::uint64_t i = 0; i < reads; ++i)
    q0.record_completion(RequestKind::read, 4096, latency_ns, true);
  q1.record_completion(RequestKind::write, 8192, 2 * latency_ns, true);
  q1.record_completion(RequestKind::write, 8192, 20'000'000'000, false); // over 10 s
  q1.record_completion(RequestKind::flush, 0, 1'000'000, true);
  q1.record_bad_chain();
  q1.record_interrupt();
  q0.set_in_flight(3);
  q1.set_in_flight(2);
  DeviceStatus d;
  d.name = name;
  d.disk = "vda";
  d.attach = "virtio-vdpa";
  d.backend = "nbd";
  d.backend_identity = "nbd+unix:///export?socket=/run/nbd.sock";
  d.capacity_bytes = 1ull << 30;
  d.started = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  d.queues = {q0.snapshot(), q1.snapshot()};
  return d;
}

} // namespace

TEST_CASE("histogram buckets tile 0 to 137 s with 8 sub-buckets per power of two") {
  CHECK(latency_bucket(0) == 0);
  CHECK(latency_bucket(1023) == 0);
  CHECK(latency_bucket(1024) == 1);
  CHECK(latency_bucket_lower(1) == 1024);
  CHECK(latency_bucket_upper(0) == 1024);
  CHECK(latency_bucket(std::numeric_limits<std::uint64_t>::max()) == kLatencyBuckets - 1);
  CHECK(latency_bucket(kOverflowNs) == kLatencyBuckets - 1);
  CHECK(latency_bucket(kOverflowNs - 1) == kLatencyBuckets - 2);
  CHECK(kOverflowNs >= 100'000'000'000ull); // at least 100 s
  for (std::size_t i = 1; i + 1 < kLatencyBuckets; ++i) {
    const std::uint64_t lo = latency_bucket_lower(i), hi = latency_bucket_upper(i);
    INFO("bucket " << i << " [" << lo << ", " << hi << ")");
    REQUIRE(hi > lo);
    CHECK(latency_bucket_upper(i - 1) == lo); // contiguous
    CHECK(latency_bucket(lo) == i);
    CHECK(latency_bucket(hi - 1) == i);
    CHECK((hi - lo) * 8 <= lo); // width at most 1/8 of the lower edge: the 12.5% bound
  }
}

TEST_CASE("export buckets count the Prometheus bounds exactly") {
  LatencyHistogram h;
  h.record(50'000);         // le 50us
  h.record(50'001);         // le 100us
  h.record(1'000'000);      // le 1ms
  h.record(10'000'000'000); // le 10s
  h.record(10'000'000'001); // only +Inf
  const auto snap = h.snapshot();
  const auto cum = snap.cumulative_export();
  CHECK(cum[0] == 1);
  CHECK(cum[1] == 2);
  CHECK(cum[4] == 3);
  CHECK(cum[kExportBoundsNs.size() - 1] == 4);
  CHECK(cum.back() == 5);
  CHECK(snap.export_count() == 5);
  CHECK(snap.count() == 5);
  CHECK(snap.sum_ns == 50'000 + 50'001 + 1'000'000 + 10'000'000'000ull + 10'000'000'001ull);
  CHECK(std::is_sorted(cum.begin(), cum.end()));
}

TEST_CASE("percentiles of a uniform distribution are within the documented error") {
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<std::uint64_t> uniform(10'000, 10'000'000); // 10 us .. 10 ms
  std::vector<std::uint64_t> samples(200'000);
  for (auto &s : samples)
    s = uniform(rng);
  check_percentiles(samples);
}

TEST_CASE("percentiles of an exponential distribution are within the documented error") {
  std::mt19937_64 rng(2);
  std::exponential_distribution<double> exponential(1.0 / 1e6); // mean 1 ms
  std::vector<std::uint64_t> samples(200'000);
  for (auto &s : samples)
    s = static_cast<std::uint64_t>(exponential(rng)) + 500; // a floor, as real I/O has
  check_percentiles(samples);
}

TEST_CASE("percentiles of a bimodal distribution spanning decades stay within the error") {
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> fast(std::log(20e3), 0.3); // ~20 us cache hits
  std::lognormal_distribution<double> slow(std::log(8e6), 0.5);  // ~8 ms misses
  std::bernoulli_distribution miss(0.05);
  std::vector<std::uint64_t> samples(100'000);
  for (auto &s : samples)
    s = static_cast<std::uint64_t>(miss(rng) ? slow(rng) : fast(rng));
  check_percentiles(samples);
}

TEST_CASE("percentile edge cases: empty sub-microsecond overflow and one sample") {
  HistogramSnapshot empty;
  CHECK(empty.percentile(50) == 0.0);
  CHECK(empty.mean_ns() == 0.0);

  LatencyHistogram small;
  for (int i = 0; i < 100; ++i)
    small.record(200);
  CHECK(small.snapshot().percentile(99) < 1024);

  LatencyHistogram one;
  one.record(3'000'000);
  for (double p : {0.0, 50.0, 100.0})
    CHECK(std::abs(one.snapshot().percentile(p) - 3e6) <= 3e6 / 8);

  LatencyHistogram huge;
  huge.record(500'000'000'000ull); // 500 s
  CHECK(huge.snapshot().percentile(50) == static_cast<double>(kOverflowNs));
  CHECK(huge.snapshot().percentile(150) == static_cast<double>(kOverflowNs)); // p clamped
}

TEST_CASE("snapshots merge and subtract") {
  LatencyHistogram a, b;
  for (int i = 0; i < 10; ++i)
    a.record(100'000);
  const HistogramSnapshot a1 = a.snapshot();
  for (int i = 0; i < 30; ++i)
    a.record(5'000'000);
  b.record(1'000);
  HistogramSnapshot merged = a.snapshot();
  merged.merge(b.snapshot());
  CHECK(merged.count() == 41);
  CHECK(merged.sum_ns == 10 * 100'000ull + 30 * 5'000'000ull + 1'000);
  CHECK(merged.export_count() == 41);

  const HistogramSnapshot delta = a.snapshot().since(a1);
  CHECK(delta.count() == 30);
  CHECK(delta.sum_ns == 30 * 5'000'000ull);
  CHECK(std::abs(delta.percentile(50) - 5e6) <= 5e6 / 8);
  // Counters that went down (a restart) count from zero.
  CHECK(a1.since(a.snapshot()).count() == a1.count());
}

TEST_CASE("queue counters count by kind and group latency") {
  QueueCounters q;
  q.record_completion(RequestKind::read, 4096, 10'000, true);
  q.record_completion(RequestKind::read, 4096, 10'000, false); // failed: no bytes
  q.record_completion(RequestKind::write, 512, 20'000, true);
  q.record_completion(RequestKind::flush, 0, 30'000, true);
  q.record_completion(RequestKind::discard, 1 << 20, 40'000, true); // no data bytes
  q.record_completion(RequestKind::write_zeroes, 1 << 20, 50'000, true);
  q.record_completion(RequestKind::other, 20, 1'000, true);
  q.record_bad_chain();
  q.record_interrupt();
  q.record_interrupt();
  q.set_in_flight(7);
  const QueueSnapshot s = q.snapshot();
  CHECK(s.requests_of(RequestKind::read) == 2);
  CHECK(s.requests_of(RequestKind::write) == 1);
  CHECK(s.requests_of(RequestKind::flush) == 1);
  CHECK(s.requests_of(RequestKind::discard) == 1);
  CHECK(s.requests_of(RequestKind::write_zeroes) == 1);
  CHECK(s.requests_of(RequestKind::other) == 1);
  CHECK(s.total_requests() == 7);
  CHECK(s.bytes_read == 4096);
  CHECK(s.bytes_written == 512);
  CHECK(s.errors == 1);
  CHECK(s.bad_chains == 1);
  CHECK(s.interrupts == 2);
  CHECK(s.in_flight == 7);
  CHECK(s.latency_of(LatencyGroup::read).count() == 2);
  CHECK(s.latency_of(LatencyGroup::write).count() == 1);
  CHECK(s.latency_of(LatencyGroup::other).count() == 4);

  QueueSnapshot merged = s;
  merged.merge(s);
  CHECK(merged.total_requests() == 14);
  CHECK(merged.in_flight == 14);
  CHECK(merged.latency_of(LatencyGroup::other).count() == 8);
  CHECK(std::string(to_string(RequestKind::write_zeroes)) == "write_zeroes");
}

TEST_CASE("a reader thread sees monotonic snapshots while one writer records") {
  QueueCounters q;
  constexpr std::uint64_t kN = 2'000'000;
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> snapshots{0};
  std::atomic<bool> went_back{false};
  std::atomic<bool> too_many{false};
  std::thread reader([&] {
    QueueSnapshot prev;
    while (!done.load(std::memory_order_acquire)) {
      const QueueSnapshot s = q.snapshot();
      const auto h = s.latency_of(LatencyGroup::read);
      const auto hp = prev.latency_of(LatencyGroup::read);
      for (std::size_t i = 0; i < kLatencyBuckets; ++i)
        if (h.buckets[i] < hp.buckets[i])
          went_back = true;
      if (s.requests_of(RequestKind::read) < prev.requests_of(RequestKind::read) || s.bytes_read < prev.bytes_read ||
          h.sum_ns < hp.sum_ns || s.errors < prev.errors)
        went_back = true;
      if (s.total_requests() > kN || h.count() > kN)
        too_many = true;
      prev = s;
      snapshots.fetch_add(1, std::memory_order_relaxed);
    }
  });
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < kN; ++i) {
    const std::uint64_t ns = 1'000 + (i * 7919) % 5'000'000;
    sum += ns;
    q.record_completion(RequestKind::read, 4096, ns, i % 1000 != 0);
  }
  done.store(true, std::memory_order_release);
  reader.join();
  CHECK_FALSE(went_back);
  CHECK_FALSE(too_many);
  CHECK(snapshots.load() > 0);
  const QueueSnapshot s = q.snapshot();
  CHECK(s.requests_of(RequestKind::read) == kN);
  CHECK(s.errors == kN / 1000);
  CHECK(s.bytes_read == (kN - kN / 1000) * 4096);
  CHECK(s.latency_of(LatencyGroup::read).count() == kN);
  CHECK(s.latency_of(LatencyGroup::read).export_count() == kN);
  CHECK(s.latency_of(LatencyGroup::read).sum_ns == sum);
}

TEST_CASE("rates come from two snapshots and the elapsed time") {
  QueueCounters q;
  for (int i = 0; i < 100; ++i)
    q.record_completion(RequestKind::read, 4096, 100'000, true);
  const QueueSnapshot before = q.snapshot();
  for (int i = 0; i < 500; ++i)
    q.record_completion(RequestKind::read, 4096, 2'000'000, true);
  for (int i = 0; i < 50; ++i)
    q.record_completion(RequestKind::write, 65536, 1'000'000, i != 0);
  const QueueSnapshot after = q.snapshot();
  const Rates r = compute_rates(before, after, 2.0);
  CHECK(r.iops_of(RequestKind::read) == doctest::Approx(250));
  CHECK(r.iops_of(RequestKind::write) == doctest::Approx(25));
  CHECK(r.total_iops() == doctest::Approx(275));
  CHECK(r.read_bytes_per_second == doctest::Approx(500 * 4096 / 2.0));
  CHECK(r.write_bytes_per_second == doctest::Approx(49 * 65536 / 2.0));
  CHECK(r.errors_per_second == doctest::Approx(0.5));
  // The interval's latency holds only what completed in it.
  CHECK(r.latency[0].count() == 500);
  CHECK(std::abs(r.latency[0].percentile(50) - 2e6) <= 2e6 / 8);

  const Rates zero = compute_rates(before, after, 0);
  CHECK(zero.total_iops() == 0);
  const Rates reset = compute_rates(after, before, 1.0); // counters replaced: count from zero
  CHECK(reset.iops_of(RequestKind::read) == doctest::Approx(100));

  std::vector<DeviceStatus> prev{make_device("disk0", 10, 1000)}, cur{make_device("disk0", 30, 1000)};
  cur.push_back(make_device("disk1", 1, 1000));
  fill_rates(cur, prev, 4.0);
  REQUIRE(cur[0].rates);
  CHECK(cur[0].rates->iops_of(RequestKind::read) == doctest::Approx(5));
  CHECK_FALSE(cur[1].rates);
}

TEST_CASE("prometheus output parses back with families typed and histograms cumulative") {
  std::vector<DeviceStatus> devices{make_device("disk0", 1000, 300'000), make_device("we\"ird\\name\nx", 5, 40'000)};
  devices[1].backend_state = BackendState::reconnecting;
  devices[1].disk.clear();
  const std::string text = format_prometheus(devices);
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');

  std::map<std::string, std::string> types; // family -> type
  std::set<std::string> helped, finished;
  std::string current_family;
  std::vector<Sample> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    REQUIRE_MESSAGE(!line.empty(), "empty line in output");
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string name = line.substr(7, line.find(' ', 7) - 7);
      CHECK(name.rfind("vduse_bridge_", 0) == 0);
      CHECK(helped.insert(name).second);
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream f(line.substr(7));
      std::string name, type;
      f >> name >> type;
      CHECK_MESSAGE(helped.count(name) == 1, "TYPE before HELP for " << name);
      CHECK((type == "counter" || type == "gauge" || type == "histogram"));
      CHECK(types.emplace(name, type).second);
      continue;
    }
    REQUIRE_MESSAGE(line[0] != '#', line);
    Sample s = parse_sample(line);
    const std::string family = family_of(s.name, types);
    REQUIRE_MESSAGE(types.count(family) == 1, "sample before its # TYPE: " << line);
    if (family != current_family) {
      CHECK_MESSAGE(finished.count(family) == 0, "family " << family << " is not contiguous");
      if (!current_family.empty())
        finished.insert(current_family);
      current_family = family;
    }
    if (types[family] == "counter")
      CHECK(s.name.size() > 6);
    samples.push_back(std::move(s));
  }

  auto value = [&](const std::string &name, std::map<std::string, std::string> labels) {
    for (const Sample &s : samples)
      if (s.name == name && std::all_of(labels.begin(), labels.end(), [&](const auto &kv) {
            auto it = s.labels.find(kv.first);
            return it != s.labels.end() && it->second == kv.second;
          }))
        return s.value;
    FAIL("no sample " << name);
    return -1.0;
  };
  CHECK(value("vduse_bridge_requests_total", {{"device", "disk0"}, {"op", "read"}}) == 1000);
  CHECK(value("vduse_bridge_requests_total", {{"device", "disk0"}, {"op", "write"}}) == 2);
  CHECK(value("vduse_bridge_requests_total", {{"device", "disk0"}, {"op", "flush"}}) == 1);
  CHECK(value("vduse_bridge_bytes_total", {{"device", "disk0"}, {"direction", "read"}}) == 1000 * 4096);
  CHECK(value("vduse_bridge_bytes_total", {{"device", "disk0"}, {"direction", "write"}}) == 8192);
  CHECK(value("vduse_bridge_errors_total", {{"device", "disk0"}}) == 1);
  CHECK(value("vduse_bridge_bad_chains_total", {{"device", "disk0"}}) == 1);
  CHECK(value("vduse_bridge_in_flight", {{"device", "disk0"}}) == 5);
  CHECK(value("vduse_bridge_capacity_bytes", {{"device", "disk0"}}) == 1073741824.0);
  CHECK(value("vduse_bridge_start_time_seconds", {{"device", "disk0"}}) == 1.7e9);
  CHECK(value("vduse_bridge_backend_up", {{"device", "disk0"}, {"backend", "nbd"}}) == 1);
  // Escaping round-trips: the odd device name comes back intact.
  CHECK(value("vduse_bridge_backend_up", {{"device", "we\"ird\\name\nx"}}) == 0);
  CHECK(value("vduse_bridge_device_info", {{"device", "we\"ird\\name\nx"}, {"disk", ""}}) == 1);
  CHECK(text.find("device=\"we\\\"ird\\\\name\\nx\"") != std::string::npos);

  // Histograms: per series, le ascending, counts cumulative, +Inf == _count, _sum present.
  std::map<std::string, std::vector<std::pair<double, double>>> buckets; // series -> (le, count)
  std::map<std::string, double> counts, sums;
  for (const Sample &s : samples) {
    if (s.name.rfind("vduse_bridge_request_duration_seconds", 0) != 0)
      continue;
    const std::string series = s.labels.at("device") + "/" + s.labels.at("op");
    if (s.name.ends_with("_bucket")) {
      const std::string le = s.labels.at("le");
      buckets[series].emplace_back(le == "+Inf" ? std::numeric_limits<double>::infinity() : std::stod(le), s.value);
    } else if (s.name.ends_with("_count")) {
      counts[series] = s.value;
    } else if (s.name.ends_with("_sum")) {
      sums[series] = s.value;
    }
  }
  CHECK(buckets.size() == 6); // 2 devices x read/write/other
  for (const auto &[series, b] : buckets) {
    INFO(series);
    REQUIRE(b.size() == kExportBuckets);
    for (std::size_t i = 1; i < b.size(); ++i) {
      CHECK(b[i].first > b[i - 1].first);
      CHECK(b[i].second >= b[i - 1].second);
    }
    CHECK(std::isinf(b.back().first));
    CHECK(b.back().second == counts.at(series));
    CHECK(sums.count(series) == 1);
  }
  CHECK(counts.at("disk0/read") == 1000);
  // 300 us reads: none at le 0.00025, all at le 0.0005.
  CHECK(buckets.at("disk0/read")[2] == std::make_pair(0.00025, 0.0));
  CHECK(buckets.at("disk0/read")[3] == std::make_pair(0.0005, 1000.0));
  CHECK(sums.at("disk0/read") == doctest::Approx(1000 * 300e-6));
  // The 20 s write is only in +Inf.
  CHECK(buckets.at("disk0/write")[kExportBuckets - 2].second == 1);
  CHECK(buckets.at("disk0/write").back().second == 2);
  CHECK(escape_label_value("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
}

TEST_CASE("prometheus output of no devices still declares the families") {
  const std::string text = format_prometheus({});
  CHECK(text.find("# TYPE vduse_bridge_requests_total counter\n") != std::string::npos);
  CHECK(text.find("# TYPE vduse_bridge_request_duration_seconds histogram\n") != std::string::npos);
  CHECK(text.find("\nvduse_bridge_") == std::string::npos);
}

TEST_CASE("status text shows the numbers of every device") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000)) + 2h + 3min;
  std::vector<DeviceStatus> prev{make_device("disk0", 1000, 300'000)};
  std::vector<DeviceStatus> devices{make_device("disk0", 3000, 300'000), make_device("disk1", 7, 40'000)};
  fill_rates(devices, prev, 4.0);
  devices[1].backend_state = BackendState::reconnecting;
  devices[1].backend_state_since = now - 35s;
  devices[1].last_error = "connection refused";
  devices[1].read_only = true;
  devices[1].disk.clear();
  const std::string text = format_status_text(devices, now);
  INFO(text);
  CHECK(text.find("disk0 (vda): nbd nbd+unix:///export?socket=/run/nbd.sock, virtio-vdpa\n") == 0);
  CHECK(text.find("Backend: connected\n") != std::string::npos);
  CHECK(text.find("Capacity: 1 GiB (1073741824 bytes)\n") != std::string::npos);
  CHECK(text.find("Uptime: 2h 3m\n") != std::string::npos);
  CHECK(text.find("Queue depth: 2 queues, 5 in flight (q0 3, q1 2)\n") != std::string::npos);
  CHECK(text.find("Requests: 3000 read, 2 write, 1 flush, 0 discard, 0 write_zeroes, 0 other\n") != std::string::npos);
  CHECK(text.find("IOPS: 500 read, 0 write, 0 other (last 4s)\n") != std::string::npos);
  CHECK(text.find("Throughput: " + vb::format_size(500 * 4096) + "/s read, 0 B/s written (last 4s)\n") !=
        std::string::npos);
  // 2000 reads of 300 us in the interval: every percentile within 12.5% of 300us.
  const auto p50 = text.find("Read latency: p50 ");
  REQUIRE(p50 != std::string::npos);
  CHECK(text.find("p99.9 ", p50) != std::string::npos);
  CHECK(text.find("(last 4s)", p50) != std::string::npos);
  CHECK(text.find("Errors: 1 failed requests, 1 bad chains\n") != std::string::npos);
  CHECK(text.find("\n\ndisk1: nbd") != std::string::npos);
  CHECK(text.find("reconnecting since ") != std::string::npos);
  CHECK(text.find("(35s ago): connection refused\n") != std::string::npos);
  CHECK(text.find("read-only") != std::string::npos);
  CHECK(text.find("(since start)") != std::string::npos); // disk1 has no rates
  CHECK(format_status_text({}, now) == "no devices\n");
}

TEST_CASE("latency and duration formatting for humans") {
  CHECK(format_latency(0) == "0ns");
  CHECK(format_latency(850) == "850ns");
  CHECK(format_latency(120'000) == "120us");
  CHECK(format_latency(1'234'567) == "1.23ms");
  CHECK(format_latency(999'999) == "1ms");
  CHECK(format_latency(4.5e9) == "4.5s");
  CHECK(format_elapsed(5s) == "5s");
  CHECK(format_elapsed(185s) == "3m 5s");
  CHECK(format_elapsed(2h + 3min + 4s) == "2h 3m");
  CHECK(format_elapsed(50h) == "2d 2h");
  DeviceStatus d;
  d.backend_state = BackendState::failing;
  const auto now = std::chrono::system_clock::now();
  d.backend_state_since = now - 90s;
  d.last_error = "reconnect-timeout passed";
  const std::string s = describe_backend_state(d, now);
  CHECK(s.rfind("failing I/O since ", 0) == 0);
  CHECK(s.find("(1m 30s ago): reconnect-timeout passed") != std::string::npos);
  d.backend_state = BackendState::connected;
  CHECK(describe_backend_state(d, now) == "connected; last error: reconnect-timeout passed");
}
