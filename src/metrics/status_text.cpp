#include "metrics/status_text.h"

#include "common/units.h"

#include <algorithm>
#include <cstdio>

namespace vb::metrics {
namespace {

std::string from_snprintf(const char *buf, int n, std::size_t size) {
  if (n < 0)
    return {};
  return std::string(buf, std::min(static_cast<std::size_t>(n), size - 1));
}

// Three significant digits: "1.23", "45.6", "789".
std::string g3(double v) {
  char buf[64];
  return from_snprintf(buf, std::snprintf(buf, sizeof buf, "%.3g", v), sizeof buf);
}

std::string whole(double v) {
  char buf[64];
  return from_snprintf(buf, std::snprintf(buf, sizeof buf, "%.0f", v), sizeof buf);
}

// "1234", "12.5", "0.5"
std::string format_rate(double r) { return r >= 100 ? whole(r) : g3(r); }

void line(std::string &out, const char *key, const std::string &value) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%13s: ", key);
  out.append(buf, static_cast<std::size_t>(n));
  out += value;
  out += '\n';
}

std::string latency_line(const HistogramSnapshot &h, const std::string &when) {
  if (h.count() == 0)
    return "no requests " + when;
  return "p50 " + format_latency(h.percentile(50)) + ", p90 " + format_latency(h.percentile(90)) + ", p99 " +
         format_latency(h.percentile(99)) + ", p99.9 " + format_latency(h.percentile(99.9)) + " " + when;
}

void format_device(std::string &out, const DeviceStatus &d, std::chrono::system_clock::time_point now) {
  const QueueSnapshot total = d.total();

  out += d.name;
  if (!d.disk.empty())
    out += " (" + d.disk + ")";
  out += ": " + (d.backend.empty() ? std::string("?") : d.backend);
  if (!d.backend_identity.empty())
    out += " " + d.backend_identity;
  if (!d.attach.empty())
    out += ", " + d.attach;
  out += '\n';

  line(out, "Backend", describe_backend_state(d, now));
  line(out, "Capacity",
       format_size(d.capacity_bytes) + " (" + std::to_string(d.capacity_bytes) + " bytes)" +
           (d.read_only ? ", read-only" : ""));
  if (d.started != std::chrono::system_clock::time_point{})
    line(out, "Uptime", format_elapsed(std::chrono::duration_cast<std::chrono::seconds>(now - d.started)));

  std::string depth = std::to_string(d.queues.size()) + (d.queues.size() == 1 ? " queue" : " queues") + ", " +
                      std::to_string(total.in_flight) + " in flight";
  if (d.queues.size() > 1) {
    depth += " (";
    for (std::size_t i = 0; i < d.queues.size(); ++i)
      depth += (i ? ", q" : "q") + std::to_string(i) + " " + std::to_string(d.queues[i].in_flight);
    depth += ")";
  }
  line(out, "Queue depth", depth);

  std::string requests;
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    requests += (i ? ", " : "") + std::to_string(total.requests[i]) + " " + to_string(static_cast<RequestKind>(i));
  line(out, "Requests", requests);
  line(out, "Data", format_size(total.bytes_read) + " read, " + format_size(total.bytes_written) + " written");

  std::string when = "(since start)";
  const std::array<HistogramSnapshot, kLatencyGroups> *latency = &total.latency;
  if (d.rates) {
    const Rates &r = *d.rates;
    when = "(last " + g3(r.seconds) + "s)";
    const double other = r.total_iops() - r.iops_of(RequestKind::read) - r.iops_of(RequestKind::write);
    line(out, "IOPS",
         format_rate(r.iops_of(RequestKind::read)) + " read, " + format_rate(r.iops_of(RequestKind::write)) +
             " write, " + format_rate(other) + " other " + when);
    line(out, "Throughput",
         format_size(static_cast<std::uint64_t>(r.read_bytes_per_second)) + "/s read, " +
             format_size(static_cast<std::uint64_t>(r.write_bytes_per_second)) + "/s written " + when);
    latency = &r.latency;
  }
  line(out, "Read latency", latency_line((*latency)[static_cast<std::size_t>(LatencyGroup::read)], when));
  line(out, "Write latency", latency_line((*latency)[static_cast<std::size_t>(LatencyGroup::write)], when));
  line(out, "Errors",
       std::to_string(total.errors) + " failed requests, " + std::to_string(total.bad_chains) + " bad chains" +
           (d.rates && d.rates->errors_per_second > 0 ? " (" + format_rate(d.rates->errors_per_second) + "/s now)"
                                                      : std::string()));
  line(out, "Interrupts", std::to_string(total.interrupts));
}

} // namespace

std::string format_latency(double ns) {
  static const char *const units[] = {"ns", "us", "ms", "s"};
  if (!(ns > 0))
    return "0ns";
  std::size_t unit = 0;
  double v = ns;
  // 999.5 would print as "1e+03" with three digits: move to the next unit first.
  while (v >= 999.5 && unit < 3) {
    v /= 1000;
    ++unit;
  }
  return (unit == 0 ? whole(v) : g3(v)) + units[unit];
}

std::string format_status_text(const std::vector<DeviceStatus> &devices, std::chrono::system_clock::time_point now) {
  if (devices.empty())
    return "no devices\n";
  std::string out;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    if (i)
      out += '\n';
    format_device(out, devices[i], now);
  }
  return out;
}

} // namespace vb::metrics
