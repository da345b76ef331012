#include "metrics/device_status.h"
#include "metrics/json_writer.h"
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
#include <memory>
#include <optional>
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

// The whole text in the exposition format, checked as it is read: HELP then TYPE once per
// family, every sample after its family's TYPE, each family's samples together.
struct Exposition {
  std::map<std::string, std::string> types; // family -> type
  std::vector<Sample> samples;
  std::vector<std::string> families; // in order
};

Exposition parse_exposition(const std::string &text) {
  Exposition e;
  std::set<std::string> helped, finished;
  std::string current_family;
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
      CHECK(e.types.emplace(name, type).second);
      e.families.push_back(name);
      continue;
    }
    REQUIRE_MESSAGE(line[0] != '#', line);
    Sample s = parse_sample(line);
    const std::string family = family_of(s.name, e.types);
    REQUIRE_MESSAGE(e.types.count(family) == 1, "sample before its # TYPE: " << line);
    if (family != current_family) {
      CHECK_MESSAGE(finished.count(family) == 0, "family " << family << " is not contiguous");
      if (!current_family.empty())
        finished.insert(current_family);
      current_family = family;
    }
    if (e.types[family] == "counter")
      CHECK(s.name.size() > 6);
    e.samples.push_back(std::move(s));
  }

  return e;
}

// A strict JSON (RFC 8259) reader for checking the writers' output: the whole text must be one
// value; objects keep their member order and refuse duplicate names.
struct Json {
  enum class Type { null, boolean, number, string, array, object } type = Type::null;
  bool b = false;
  double n = 0;
  std::string s;
  std::vector<Json> items;                           // array
  std::vector<std::pair<std::string, Json>> members; // object

  const Json &operator[](const std::string &key) const {
    for (const auto &[k, v] : members)
      if (k == key)
        return v;
    FAIL("no member " << key);
    static const Json none;
    return none;
  }
  bool has(const std::string &key) const {
    return std::any_of(members.begin(), members.end(), [&](const auto &m) { return m.first == key; });
  }
  bool is_null() const { return type == Type::null; }
};

class JsonReader {
public:
  explicit JsonReader(std::string text) : t_(std::move(text)) {}
  Json parse() {
    Json v = value();
    ws();
    REQUIRE_MESSAGE(i_ == t_.size(), "trailing text at " << i_ << " in " << t_);
    return v;
  }

private:
  void ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\t' || t_[i_] == '\r'))
      ++i_;
  }
  char peek() {
    REQUIRE_MESSAGE(i_ < t_.size(), "unexpected end of " << t_);
    return t_[i_];
  }
  void expect(const char *word) {
    const std::string w = word;
    REQUIRE_MESSAGE(t_.compare(i_, w.size(), w) == 0, "expected " << w << " at " << i_ << " in " << t_);
    i_ += w.size();
  }
  Json value() {
    ws();
    Json v;
    const char c = peek();
    if (c == '{') {
      v.type = Json::Type::object;
      ++i_;
      ws();
      if (peek() == '}') {
        ++i_;
        return v;
      }
      for (;;) {
        ws();
        REQUIRE(peek() == '"');
        std::string k = string();
        REQUIRE_MESSAGE(!v.has(k), "duplicate member " << k);
        ws();
        expect(":");
        Json m = value();
        v.members.emplace_back(std::move(k), std::move(m));
        ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect("}");
        return v;
      }
    }
    if (c == '[') {
      v.type = Json::Type::array;
      ++i_;
      ws();
      if (peek() == ']') {
        ++i_;
        return v;
      }
      for (;;) {
        v.items.push_back(value());
        ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect("]");
        return v;
      }
    }
    if (c == '"') {
      v.type = Json::Type::string;
      v.s = string();
      return v;
    }
    if (c == 't' || c == 'f') {
      v.type = Json::Type::boolean;
      v.b = c == 't';
      expect(v.b ? "true" : "false");
      return v;
    }
    if (c == 'n') {
      expect("null");
      return v;
    }
    // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    const std::size_t start = i_;
    auto digits = [&] {
      const std::size_t from = i_;
      while (i_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[i_])))
        ++i_;
      REQUIRE_MESSAGE(i_ > from, "bad number at " << start << " in " << t_);
    };
    if (peek() == '-')
      ++i_;
    if (peek() == '0')
      ++i_;
    else
      digits();
    if (i_ < t_.size() && t_[i_] == '.') {
      ++i_;
      digits();
    }
    if (i_ < t_.size() && (t_[i_] == 'e' || t_[i_] == 'E')) {
      ++i_;
      if (peek() == '+' || peek() == '-')
        ++i_;
      digits();
    }
    v.type = Json::Type::number;
    v.n = std::stod(t_.substr(start, i_ - start));
    return v;
  }
  std::string string() {
    expect("\"");
    std::string out;
    for (;;) {
      const auto c = static_cast<unsigned char>(peek());
      ++i_;
      if (c == '"')
        return out;
      REQUIRE_MESSAGE(c >= 0x20, "raw control character in a string: " << t_);
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      const char e = peek();
      ++i_;
      switch (e) {
      case '"':
      case '\\':
      case '/':
        out += e;
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        REQUIRE(i_ + 4 <= t_.size());
        const unsigned code = static_cast<unsigned>(std::stoul(t_.substr(i_, 4), nullptr, 16));
        i_ += 4;
        REQUIRE_MESSAGE(code < 0x80, "only \\u00XX expected from the writer");
        out += static_cast<char>(code);
        break;
      }
      default:
        FAIL("bad escape \\" << e);
      }
    }
  }
  std::string t_;
  std::size_t i_ = 0;
};

Json parse_json(const std::string &text) { return JsonReader(text).parse(); }

DeviceStatus make_device(const std::string &name, std::uint64_t reads, std::uint64_t latency_ns) {
  QueueCounters q0, q1;
  for (std::uint64_t i = 0; i < reads; ++i)
    q0.record_completion(RequestKind::read, 4096, latency_ns, true);
  q1.record_completion(RequestKind::write, 8192, 2 * latency_ns, true);
  q1.record_completion(RequestKind::write, 8192, 400'000'000'000, false); // over 300 s
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

TEST_CASE("histogram buckets tile 0 to 550 s with 8 sub-buckets per power of two") {
  CHECK(latency_bucket(0) == 0);
  CHECK(latency_bucket(1023) == 0);
  CHECK(latency_bucket(1024) == 1);
  CHECK(latency_bucket_lower(1) == 1024);
  CHECK(latency_bucket_upper(0) == 1024);
  CHECK(latency_bucket(std::numeric_limits<std::uint64_t>::max()) == kLatencyBuckets - 1);
  CHECK(latency_bucket(kOverflowNs) == kLatencyBuckets - 1);
  CHECK(latency_bucket(kOverflowNs - 1) == kLatencyBuckets - 2);
  CHECK(kOverflowNs >= 300'000'000'000ull); // at least 300 s: a request held for a reconnect-timeout
  CHECK(kLatencyBuckets <= 256);            // and still about 2 KiB a histogram
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
  h.record(50'000);          // le 50us
  h.record(50'001);          // le 100us
  h.record(1'000'000);       // le 1ms
  h.record(10'000'000'000);  // le 10s
  h.record(300'000'000'001); // only +Inf
  const auto snap = h.snapshot();
  const auto cum = snap.cumulative_export();
  CHECK(cum[0] == 1);
  CHECK(cum[1] == 2);
  CHECK(cum[4] == 3);
  CHECK(cum[kExportBoundsNs.size() - 1] == 4);
  CHECK(cum.back() == 5);
  CHECK(snap.export_count() == 5);
  CHECK(snap.count() == 5);
  CHECK(snap.sum_ns == 50'000 + 50'001 + 1'000'000 + 10'000'000'000ull + 300'000'000'001ull);
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
  huge.record(600'000'000'000ull); // 600 s
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
  CHECK(s.latency_of(RequestKind::read).count() == 2);
  CHECK(s.latency_of(RequestKind::write).count() == 1);
  CHECK(s.latency_of(RequestKind::flush).count() == 1);
  CHECK(s.latency_of(RequestKind::discard).count() == 1);
  CHECK(s.latency_of(RequestKind::write_zeroes).count() == 1);
  CHECK(s.latency_of(RequestKind::other).count() == 1);
  CHECK(s.latency_of(RequestKind::write_zeroes).sum_ns == 50'000);

  QueueSnapshot merged = s;
  merged.merge(s);
  CHECK(merged.total_requests() == 14);
  CHECK(merged.in_flight == 14);
  CHECK(merged.latency_of(RequestKind::flush).count() == 2);
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
      const auto h = s.latency_of(RequestKind::read);
      const auto hp = prev.latency_of(RequestKind::read);
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
  CHECK(s.latency_of(RequestKind::read).count() == kN);
  CHECK(s.latency_of(RequestKind::read).export_count() == kN);
  CHECK(s.latency_of(RequestKind::read).sum_ns == sum);
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

  const Exposition parsed = parse_exposition(text);
  const std::vector<Sample> &samples = parsed.samples;

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
  CHECK(value("vduse_bridge_bytes_total", {{"device", "disk0"}, {"op", "read"}}) == 1000 * 4096);
  CHECK(value("vduse_bridge_bytes_total", {{"device", "disk0"}, {"op", "write"}}) == 8192);
  CHECK(value("vduse_bridge_errors_total", {{"device", "disk0"}}) == 1);
  CHECK(value("vduse_bridge_bad_chains_total", {{"device", "disk0"}}) == 1);
  CHECK(value("vduse_bridge_requests_in_flight", {{"device", "disk0"}}) == 5);
  CHECK(value("vduse_bridge_capacity_bytes", {{"device", "disk0"}}) == 1073741824.0);
  CHECK(value("vduse_bridge_start_time_seconds", {{"device", "disk0"}}) == 1.7e9);
  CHECK(value("vduse_bridge_backend_up", {{"device", "disk0"}}) == 1);
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
  CHECK(buckets.size() == 12); // 2 devices x 6 ops
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
  // The 400 s write is only in +Inf.
  CHECK(buckets.at("disk0/write")[kExportBuckets - 2].second == 1);
  CHECK(buckets.at("disk0/write").back().second == 2);
  CHECK(escape_label_value("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
}

TEST_CASE("prometheus output of no devices still declares the families") {
  const std::string text = format_prometheus({});
  CHECK(text.find("# TYPE vduse_bridge_requests_total counter\n") != std::string::npos);
  CHECK(text.find("# TYPE vduse_bridge_request_duration_seconds histogram\n") != std::string::npos);
  // No device samples: only the daemon's own build_info.
  const Exposition e = parse_exposition(text);
  REQUIRE(e.samples.size() == 1);
  CHECK(e.samples[0].name == "vduse_bridge_build_info");
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

namespace {

// A device whose backend could not be opened at start-up: listed, no queues.
DeviceStatus waiting_device(std::chrono::system_clock::time_point now) {
  DeviceStatus d;
  d.name = "disk9";
  d.attach = "virtio-vdpa";
  d.backend = "iscsi";
  d.backend_identity = "iscsi://storage.example/iqn.2026-01.example:tank/1";
  d.serial = "tank 1";
  d.state = DeviceState::waiting;
  d.state_since = now - 95s;
  d.start_attempts = 4;
  d.next_attempt = now + 7500ms;
  d.last_error = "iscsi://storage.example: connection refused";
  d.backend_state = BackendState::connected; // what a default leaves: not reported while waiting
  return d;
}

std::vector<const Sample *> samples_of(const Exposition &e, const std::string &name, const std::string &device) {
  std::vector<const Sample *> out;
  for (const Sample &s : e.samples)
    if (s.name == name && s.labels.count("device") && s.labels.at("device") == device)
      out.push_back(&s);
  return out;
}

} // namespace

TEST_CASE("prometheus names: counters end in _total, base units, one label name per concept") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  const std::vector<DeviceStatus> devices{make_device("disk0", 10, 300'000), waiting_device(now)};
  const Exposition e = parse_exposition(format_prometheus(devices, {"1.2.3", "abc123"}));
  const std::set<std::string> allowed_labels{"device", "disk", "attach", "backend", "read_only",
                                             "state",  "op",   "le",     "version", "commit"};
  for (const auto &[family, type] : e.types) {
    INFO(family);
    if (type == "counter")
      CHECK(family.ends_with("_total"));
    else
      CHECK_FALSE(family.ends_with("_total"));
    for (const char *bad : {"_ms", "milli", "micro", "_us", "_ns", "kib", "mib", "direction"})
      CHECK(family.find(bad) == std::string::npos);
    if (family.find("duration") != std::string::npos || family.find("time") != std::string::npos)
      CHECK(family.ends_with("_seconds"));
  }
  std::map<std::string, std::set<std::string>> ops; // family -> op values
  for (const Sample &s : e.samples) {
    INFO(s.name);
    for (const auto &[k, v] : s.labels)
      CHECK_MESSAGE(allowed_labels.count(k) == 1, "label " << k);
    if (s.labels.count("op"))
      ops[family_of(s.name, e.types)].insert(s.labels.at("op"));
  }
  const std::set<std::string> all{"read", "write", "flush", "discard", "write_zeroes", "other"};
  CHECK(ops.at("vduse_bridge_requests_total") == all);
  CHECK(ops.at("vduse_bridge_request_duration_seconds") == all);
  CHECK(ops.at("vduse_bridge_bytes_total") == std::set<std::string>{"read", "write"});
  // Every family is declared once, in order.
  CHECK(std::set<std::string>(e.families.begin(), e.families.end()).size() == e.families.size());
  for (const char *f :
       {"vduse_bridge_requests_in_flight", "vduse_bridge_requests_held", "vduse_bridge_backend_reconnects_total",
        "vduse_bridge_backend_state", "vduse_bridge_device_state", "vduse_bridge_build_info"})
    CHECK_MESSAGE(e.types.count(f) == 1, f);
}

TEST_CASE("prometheus labels carry no user-written text but the device name") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  std::vector<DeviceStatus> devices{make_device("disk0", 10, 300'000), waiting_device(now)};
  devices[0].serial = "SER-4242";
  devices[0].backend_identity = "nbd://user@host.example:10809/export-name";
  const std::string text = format_prometheus(devices, {"1.2.3", "abc123"});
  for (const char *secretish : {"SER-4242", "host.example", "export-name", "storage.example", "tank", "iqn."})
    CHECK_MESSAGE(text.find(secretish) == std::string::npos, secretish);
  const Exposition e = parse_exposition(text);
  for (const Sample &s : e.samples)
    for (const auto &[k, v] : s.labels)
      if (k != "device" && k != "le" && k != "version" && k != "commit")
        CHECK_MESSAGE(v.size() <= 16, s.name << " " << k << "=" << v); // enum values, "vda", "virtio-vdpa"
}

TEST_CASE("prometheus state sets: one sample per state, exactly one of them 1") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  std::vector<DeviceStatus> devices{make_device("disk0", 10, 300'000), make_device("disk1", 1, 1000),
                                    waiting_device(now)};
  devices[1].backend_state = BackendState::reconnecting;
  devices[1].reconnects = 3;
  devices[1].held_requests = 17;
  const Exposition e = parse_exposition(format_prometheus(devices, {}));
  auto states = [&](const std::string &family, const std::string &device) {
    std::map<std::string, double> m;
    for (const Sample *s : samples_of(e, family, device))
      CHECK(m.emplace(s->labels.at("state"), s->value).second);
    return m;
  };
  using M = std::map<std::string, double>;
  CHECK(states("vduse_bridge_device_state", "disk0") ==
        M{{"waiting", 0}, {"starting", 0}, {"serving", 1}, {"stopping", 0}});
  CHECK(states("vduse_bridge_device_state", "disk9") ==
        M{{"waiting", 1}, {"starting", 0}, {"serving", 0}, {"stopping", 0}});
  CHECK(states("vduse_bridge_backend_state", "disk0") == M{{"connected", 1}, {"reconnecting", 0}, {"failing", 0}});
  CHECK(states("vduse_bridge_backend_state", "disk1") == M{{"connected", 0}, {"reconnecting", 1}, {"failing", 0}});
  // A waiting device has no backend to report on; backend_up says it is not up.
  CHECK(states("vduse_bridge_backend_state", "disk9").empty());
  auto one = [&](const std::string &family, const std::string &device) {
    const auto v = samples_of(e, family, device);
    REQUIRE_MESSAGE(v.size() == 1, family << " " << device);
    return v[0]->value;
  };
  CHECK(one("vduse_bridge_backend_up", "disk0") == 1);
  CHECK(one("vduse_bridge_backend_up", "disk1") == 0);
  CHECK(one("vduse_bridge_backend_up", "disk9") == 0);
  CHECK(one("vduse_bridge_backend_reconnects_total", "disk1") == 3);
  CHECK(one("vduse_bridge_backend_reconnects_total", "disk0") == 0);
  CHECK(one("vduse_bridge_requests_held", "disk1") == 17);
  CHECK(one("vduse_bridge_requests_in_flight", "disk1") == 5);
  CHECK(one("vduse_bridge_requests_in_flight", "disk9") == 0);
  CHECK(samples_of(e, "vduse_bridge_capacity_bytes", "disk9").empty()); // not known yet
  CHECK(samples_of(e, "vduse_bridge_requests_total", "disk9").size() == kRequestKinds);
}

TEST_CASE("prometheus build_info carries the version and commit, escaped") {
  const Exposition e = parse_exposition(format_prometheus({}, {"0.5.0~rc\"1", "0123abc"}));
  std::vector<Sample> info;
  for (const Sample &s : e.samples)
    if (s.name == "vduse_bridge_build_info")
      info.push_back(s);
  REQUIRE(info.size() == 1);
  CHECK(info[0].value == 1);
  CHECK(info[0].labels == std::map<std::string, std::string>{{"version", "0.5.0~rc\"1"}, {"commit", "0123abc"}});
  CHECK(e.types.at("vduse_bridge_build_info") == "gauge");
}

TEST_CASE("prometheus latency buckets reach 300 s for requests held through a reconnect") {
  QueueCounters q;
  q.record_completion(RequestKind::write, 4096, 200'000'000'000, true); // 200 s
  q.record_completion(RequestKind::flush, 0, 45'000'000'000, true);     // 45 s
  DeviceStatus d;
  d.name = "disk0";
  d.queues = {q.snapshot()};
  const Exposition e = parse_exposition(format_prometheus({d}));
  auto bucket = [&](const std::string &op, const std::string &le) {
    for (const Sample &s : e.samples)
      if (s.name == "vduse_bridge_request_duration_seconds_bucket" && s.labels.at("op") == op &&
          s.labels.at("le") == le)
        return s.value;
    FAIL("no bucket " << op << " le=" << le);
    return -1.0;
  };
  CHECK(bucket("write", "120") == 0);
  CHECK(bucket("write", "300") == 1);
  CHECK(bucket("write", "+Inf") == 1);
  CHECK(bucket("flush", "30") == 0);
  CHECK(bucket("flush", "60") == 1);
  CHECK(kExportBoundsNs.back() >= 300'000'000'000ull);
}

TEST_CASE("json writer escapes quotes backslashes and control characters") {
  CHECK(json_quote("plain") == "\"plain\"");
  CHECK(json_quote("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json_quote("\b\f\n\r\t") == "\"\\b\\f\\n\\r\\t\"");
  CHECK(json_quote(std::string("\0\x01\x1f", 3)) == "\"\\u0000\\u0001\\u001f\"");
  CHECK(json_quote("\x7f/") == "\"\x7f/\"");
  CHECK(json_quote("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  // Not UTF-8: a lone continuation byte, a truncated sequence, an overlong '/', a surrogate.
  CHECK(json_quote("a\x80z") == "\"a\xef\xbf\xbdz\"");
  CHECK(json_quote("\xe2\x82") == "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK(json_quote("\xc0\xaf") == "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK(json_quote("\xed\xa0\x80") == "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
  // Every byte value round-trips through a strict reader (control characters escaped).
  std::string all;
  for (int c = 0; c < 0x80; ++c)
    all += static_cast<char>(c);
  CHECK(parse_json(json_quote(all)).s == all);
}

TEST_CASE("json writer nests arrays and objects with numbers booleans and null") {
  JsonWriter w;
  w.begin_object();
  w.member("s", "x");
  w.member("u", std::uint64_t{18446744073709551615ull});
  w.member("i", std::int64_t{-5});
  w.member("d", 0.25);
  w.member("inf", std::numeric_limits<double>::infinity());
  w.member("t", true).member("f", false);
  w.key("n").null();
  w.key("a").begin_array().value(1).begin_array().end_array().begin_object().end_object().value("z").end_array();
  w.key("o").begin_object().key("deep").begin_array().value(2.5e-7).end_array().end_object();
  w.end_object();
  const std::string text = w.take();
  CHECK(text == "{\"s\":\"x\",\"u\":18446744073709551615,\"i\":-5,\"d\":0.25,\"inf\":null,\"t\":true,\"f\":false,"
                "\"n\":null,\"a\":[1,[],{},\"z\"],\"o\":{\"deep\":[2.5e-07]}}");
  const Json j = parse_json(text);
  CHECK(j["a"].items.size() == 4);
  CHECK(j["o"]["deep"].items[0].n == doctest::Approx(2.5e-7));
  CHECK(j["inf"].is_null());
  JsonWriter empty;
  CHECK(empty.begin_array().end_array().take() == "[]");
}

TEST_CASE("status text shows a waiting device's attempts next try and last error") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  const std::vector<DeviceStatus> devices{waiting_device(now), make_device("disk0", 1, 1000)};
  const std::string text = format_status_text(devices, now);
  INFO(text);
  CHECK(text.rfind("disk9: iscsi iscsi://storage.example/iqn.2026-01.example:tank/1, virtio-vdpa\n", 0) == 0);
  const std::string state = "State: waiting for its backend since " + format_time(now - 95s) +
                            " (1m 35s ago) (4 attempts, next in 8s): iscsi://storage.example: connection refused\n";
  CHECK(text.find(state) != std::string::npos);
  // Nothing about queues or a backend connection it does not have.
  const std::string first = text.substr(0, text.find("\n\n"));
  CHECK(first.find("Queue depth") == std::string::npos);
  CHECK(first.find("Backend:") == std::string::npos);
  CHECK(first.find("Capacity") == std::string::npos);
  CHECK(text.find("State: serving\n") != std::string::npos);
  CHECK(text.find("Queue depth: 2 queues") != std::string::npos);

  DeviceStatus d = waiting_device(now);
  d.start_attempts = 1;
  d.next_attempt = now - 1s; // due
  d.last_error.clear();
  CHECK(describe_device_state(d, now).ends_with("(1m 35s ago) (1 attempt, next in 0s)"));
  d.state = DeviceState::starting;
  d.state_since = now - 3s;
  CHECK(describe_device_state(d, now) == "starting since " + format_time(now - 3s) + " (3s ago)");
}

TEST_CASE("status json holds every device with its state counters and latency") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000)) + 1h;
  std::vector<DeviceStatus> prev{make_device("disk0", 10, 300'000)};
  std::vector<DeviceStatus> devices{make_device("we\"ird\\name\x01", 30, 300'000), waiting_device(now)};
  devices[0].serial = "disk0";
  devices[0].last_error = "caf\xc3\xa9\n";
  devices[0].reconnects = 2;
  prev[0].name = devices[0].name;
  fill_rates(devices, prev, 2.0);
  const std::string text = format_status_json(devices, now);
  REQUIRE(text.back() == '\n');
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  const Json j = parse_json(text);
  CHECK(j["time"].n == 1'700'003'600);
  REQUIRE(j["devices"].items.size() == 2);
  const Json &a = j["devices"].items[0];
  CHECK(a["name"].s == "we\"ird\\name\x01");
  CHECK(a["dev"].s == "/dev/vda");
  CHECK(a["by_id"].s == "/dev/disk/by-id/virtio-disk0");
  CHECK(a["attach"].s == "virtio-vdpa");
  CHECK(a["backend"].s == "nbd");
  CHECK(a["identity"].s == "nbd+unix:///export?socket=/run/nbd.sock");
  CHECK(a["state"].s == "serving");
  CHECK(a["backend_state"].s == "connected");
  CHECK(a["healthy"].b);
  CHECK(a["last_error"].s == "caf\xc3\xa9\n");
  CHECK(a["reconnects"].n == 2);
  CHECK(a["capacity_bytes"].n == 1073741824.0);
  CHECK(a["started"].n == 1'700'000'000);
  CHECK(a["uptime_seconds"].n == 3600);
  CHECK(a["in_flight"].n == 5);
  CHECK(a["queues"].items.size() == 2);
  CHECK(a["queues"].items[0]["in_flight"].n == 3);
  CHECK(a["requests"]["read"].n == 30);
  CHECK(a["requests"]["write_zeroes"].n == 0);
  CHECK(a["bytes"]["read"].n == 30 * 4096);
  CHECK(a["errors"].n == 1);
  CHECK(a["latency_seconds"]["interval_seconds"].n == 2.0);
  CHECK(a["latency_seconds"]["read"]["count"].n == 20); // over the interval
  CHECK(std::abs(a["latency_seconds"]["read"]["p99"].n - 300e-6) <= 300e-6 / 8);
  CHECK(a["latency_seconds"]["discard"]["p50"].is_null());
  CHECK(a["rates"]["iops"]["read"].n == doctest::Approx(10));
  const Json &w = j["devices"].items[1];
  CHECK(w["state"].s == "waiting");
  CHECK(w["backend_state"].is_null());
  CHECK_FALSE(w["healthy"].b);
  CHECK(w["dev"].is_null());
  CHECK(w["start_attempts"].n == 4);
  CHECK(w["state_since"].n == 1'700'003'600 - 95);
  CHECK(w["next_attempt"].n == 1'700'003'607); // whole seconds, rounded down
  CHECK(w["last_error"].s == "iscsi://storage.example: connection refused");
  CHECK(w["queues"].items.empty());
  CHECK(w["rates"].is_null());
  CHECK(w["started"].is_null());
  CHECK(parse_json(format_status_json({}, now))["devices"].items.empty());
}

TEST_CASE("device list: one line per device with its node by-id link backend and state") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  std::vector<DeviceStatus> devices{make_device("disk0", 1, 1000), waiting_device(now), make_device("vm0", 1, 1)};
  devices[0].serial = "disk0";
  devices[0].backend_state = BackendState::reconnecting;
  devices[2].disk = "vhost-vdpa-0";
  devices[2].attach = "vhost-vdpa";
  devices[2].serial = "vm0";
  devices[2].backend = "memory";
  devices[2].backend_identity.clear();
  const std::string text = format_device_list(devices, false);
  INFO(text);
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    std::istringstream f(l);
    rows.emplace_back();
    for (std::string word; f >> word;)
      rows.back().push_back(word);
  }
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == std::vector<std::string>{"disk0", "/dev/vda", "/dev/disk/by-id/virtio-disk0", "virtio-vdpa",
                                            "nbd:nbd+unix:///export?socket=/run/nbd.sock", "serving,reconnecting"});
  CHECK(rows[1] == std::vector<std::string>{"disk9", "-", "/dev/disk/by-id/virtio-tank_1", "virtio-vdpa",
                                            "iscsi:iscsi://storage.example/iqn.2026-01.example:tank/1", "waiting"});
  CHECK(rows[2] == std::vector<std::string>{"vm0", "/dev/vhost-vdpa-0", "-", "vhost-vdpa", "memory", "serving"});
  // Columns line up.
  const auto second = [&](std::size_t line) {
    std::size_t start = 0;
    for (std::size_t i = 0; i < line; ++i)
      start = text.find('\n', start) + 1;
    return text.find('/', start) - start;
  };
  CHECK(second(0) == second(2));
  CHECK(format_device_list({}, false).empty());

  const Json j = parse_json(format_device_list(devices, true));
  REQUIRE(j["devices"].items.size() == 3);
  CHECK(j["devices"].items[0]["by_id"].s == "/dev/disk/by-id/virtio-disk0");
  CHECK(j["devices"].items[0]["backend_state"].s == "reconnecting");
  CHECK_FALSE(j["devices"].items[0]["healthy"].b);
  CHECK(j["devices"].items[1]["dev"].is_null());
  CHECK(j["devices"].items[1]["state"].s == "waiting");
  CHECK(j["devices"].items[2]["dev"].s == "/dev/vhost-vdpa-0");
  CHECK(j["devices"].items[2]["by_id"].is_null());
  CHECK(j["devices"].items[2]["identity"].is_null());
  CHECK(j["devices"].items[2].members.size() == 9);
}

TEST_CASE("multipath paths show in status text, status json and prometheus (labelled by number)") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000)) + 1h;
  std::vector<DeviceStatus> devices{make_device("disk0", 10, 300'000)};
  devices[0].backend = "iscsi";
  devices[0].paths = {{"192.0.2.1:3260", 2, 2, 0, "", ""},
                      {"[2001:db8::2]:3260", 2, 1, 17, "session lost: the connection closed or failed", ""}};
  const std::string text = format_status_text(devices, now);
  CHECK(text.find("Path 0: 192.0.2.1:3260: up (2 of 2 sessions), 0 failovers\n") != std::string::npos);
  CHECK(text.find("Path 1: [2001:db8::2]:3260: degraded (1 of 2 sessions), 17 failovers, last error: session "
                  "lost: the connection closed or failed\n") != std::string::npos);

  const Json j = parse_json(format_status_json(devices, now));
  const Json &paths = j["devices"].items[0]["paths"];
  REQUIRE(paths.items.size() == 2);
  CHECK(paths.items[0]["name"].s == "192.0.2.1:3260");
  CHECK(paths.items[0]["state"].s == "up");
  CHECK(paths.items[1]["state"].s == "degraded");
  CHECK(paths.items[1]["sessions_up"].n == 1);
  CHECK(paths.items[1]["failovers"].n == 17);
  CHECK(paths.items[1]["last_error"].s == "session lost: the connection closed or failed");
  devices[0].paths[1].sessions_up = 0;
  CHECK(parse_json(format_status_json(devices, now))["devices"].items[0]["paths"].items[1]["state"].s == "down");

  const Exposition e = parse_exposition(format_prometheus(devices, {"1.2.3", "abc123"}));
  CHECK(e.types.at("vduse_bridge_backend_path_failovers_total") == "counter");
  unsigned seen = 0;
  for (const Sample &s : e.samples)
    if (s.name == "vduse_bridge_backend_path_failovers_total") {
      ++seen;
      CHECK(s.labels.at("path") == (s.value == 17 ? "1" : "0"));
    } else if (s.name == "vduse_bridge_backend_path_sessions_up" && s.labels.at("path") == "1") {
      CHECK(s.value == 0);
    }
  CHECK(seen == 2);
}

TEST_CASE("multipath paths' ALUA states show in status text, status json and a prometheus state set") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000)) + 1h;
  std::vector<DeviceStatus> devices{make_device("disk0", 10, 300'000), make_device("disk1", 10, 300'000)};
  devices[0].backend = devices[1].backend = "iscsi";
  devices[0].paths = {{"192.0.2.1:3260", 1, 1, 0, "", "active/optimized"}, {"192.0.2.2:3260", 1, 1, 3, "", "standby"}};
  devices[1].paths = {{"192.0.2.9:3260", 1, 1, 0, "", ""}, {"192.0.2.10:3260", 1, 1, 0, "", ""}}; // no ALUA
  const std::string text = format_status_text(devices, now);
  CHECK(text.find("Path 0: 192.0.2.1:3260: up (1 of 1 sessions), 0 failovers, ALUA active/optimized\n") !=
        std::string::npos);
  CHECK(text.find("Path 1: 192.0.2.2:3260: up (1 of 1 sessions), 3 failovers, ALUA standby\n") != std::string::npos);
  CHECK(text.find("Path 0: 192.0.2.9:3260: up (1 of 1 sessions), 0 failovers\n") != std::string::npos);

  const Json j = parse_json(format_status_json(devices, now));
  CHECK(j["devices"].items[0]["paths"].items[0]["alua"].s == "active/optimized");
  CHECK(j["devices"].items[0]["paths"].items[1]["alua"].s == "standby");
  CHECK(j["devices"].items[1]["paths"].items[0]["alua"].is_null());

  const Exposition e = parse_exposition(format_prometheus(devices, {"1.2.3", "abc123"}));
  CHECK(e.types.at("vduse_bridge_backend_path_alua_state") == "gauge");
  std::map<std::string, double> set; // "path state" -> value, disk0 only
  for (const Sample &s : e.samples)
    if (s.name == "vduse_bridge_backend_path_alua_state") {
      CHECK(s.labels.at("device") == "disk0"); // a target without ALUA has no samples
      set[s.labels.at("path") + " " + s.labels.at("state")] = s.value;
    }
  CHECK(set.size() == 14); // 7 states for each of 2 paths
  CHECK(set["0 active/optimized"] == 1);
  CHECK(set["0 standby"] == 0);
  CHECK(set["1 standby"] == 1);
  CHECK(set["1 active/optimized"] == 0);
  double ones = 0;
  for (const auto &[k, v] : set)
    ones += v;
  CHECK(ones == 2); // one state each
}
