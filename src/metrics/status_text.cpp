#include "metrics/status_text.h"

#include "common/units.h"
#include "metrics/json_writer.h"

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <utility>

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

  line(out, "State", describe_device_state(d, now));
  const bool open = d.state == DeviceState::serving || d.state == DeviceState::stopping;
  if (open)
    line(out, "Backend", describe_backend_state(d, now));
  if (d.capacity_bytes != 0)
    line(out, "Capacity",
         format_size(d.capacity_bytes) + " (" + std::to_string(d.capacity_bytes) + " bytes)" +
             (d.read_only ? ", read-only" : ""));
  if (!open)
    return; // waiting or starting: no backend, no queues yet
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
  const std::array<HistogramSnapshot, kRequestKinds> *latency = &total.latency;
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
  line(out, "Read latency", latency_line((*latency)[static_cast<std::size_t>(RequestKind::read)], when));
  line(out, "Write latency", latency_line((*latency)[static_cast<std::size_t>(RequestKind::write)], when));
  line(out, "Errors",
       std::to_string(total.errors) + " failed requests, " + std::to_string(total.bad_chains) + " bad chains" +
           (d.rates && d.rates->errors_per_second > 0 ? " (" + format_rate(d.rates->errors_per_second) + "/s now)"
                                                      : std::string()));
  line(out, "Interrupts", std::to_string(total.interrupts));
  if (d.reconnects != 0 || d.held_requests != 0)
    line(out, "Reconnects",
         std::to_string(d.reconnects) + ", " + std::to_string(d.held_requests) + " requests held now");
  for (std::size_t i = 0; i < d.paths.size(); ++i) {
    const PathStatus &p = d.paths[i];
    std::string text = p.name + ": " + p.state() + " (" + std::to_string(p.sessions_up) + " of " +
                       std::to_string(p.sessions) + " sessions), " + std::to_string(p.failovers) + " failovers";
    if (!p.alua.empty())
      text += ", ALUA " + p.alua;
    if (!p.last_error.empty())
      text += ", last error: " + p.last_error;
    line(out, ("Path " + std::to_string(i)).c_str(), text);
  }
}

// Seconds since the epoch, or null for an unset time.
void time_member(JsonWriter &w, std::string_view name, std::chrono::system_clock::time_point t) {
  w.key(name);
  if (t == std::chrono::system_clock::time_point{})
    w.null();
  else
    w.value(static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count()));
}

// A string member, null when empty.
void text_member(JsonWriter &w, std::string_view name, const std::string &text) {
  w.key(name);
  if (text.empty())
    w.null();
  else
    w.value(text);
}

bool has_backend(const DeviceStatus &d) { return d.state == DeviceState::serving || d.state == DeviceState::stopping; }

// The members `list --json` and `status --json` share.
void identity_members(JsonWriter &w, const DeviceStatus &d) {
  w.member("name", d.name);
  text_member(w, "dev", device_node(d));
  text_member(w, "by_id", by_id_link(d));
  text_member(w, "attach", d.attach);
  text_member(w, "backend", d.backend);
  text_member(w, "identity", d.backend_identity);
  w.member("state", to_string(d.state));
  w.key("backend_state");
  if (has_backend(d))
    w.value(to_string(d.backend_state));
  else
    w.null();
  w.member("healthy", d.healthy());
}

void latency_json(JsonWriter &w, const HistogramSnapshot &h) {
  w.begin_object();
  w.member("count", h.count());
  for (const auto &[name, p] : {std::pair{"p50", 50.0}, {"p90", 90.0}, {"p99", 99.0}, {"p99_9", 99.9}}) {
    w.key(name);
    if (h.count() == 0)
      w.null();
    else
      w.value(h.percentile(p) / 1e9);
  }
  w.end_object();
}

void device_json(JsonWriter &w, const DeviceStatus &d, std::chrono::system_clock::time_point now) {
  const QueueSnapshot total = d.total();
  w.begin_object();
  identity_members(w, d);
  time_member(w, "state_since", d.state_since);
  w.member("start_attempts", d.start_attempts);
  time_member(w, "next_attempt", d.state == DeviceState::waiting ? d.next_attempt : decltype(d.next_attempt){});
  time_member(w, "backend_state_since",
              has_backend(d) && d.backend_state != BackendState::connected ? d.backend_state_since
                                                                           : decltype(d.backend_state_since){});
  text_member(w, "last_error", d.last_error);
  w.member("reconnects", d.reconnects);
  w.member("held_requests", d.held_requests);
  w.member("capacity_bytes", d.capacity_bytes);
  w.member("read_only", d.read_only);
  time_member(w, "started", d.started);
  w.key("uptime_seconds");
  if (d.started == std::chrono::system_clock::time_point{})
    w.null();
  else
    w.value(static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::seconds>(now - d.started).count()));
  w.member("in_flight", total.in_flight);
  w.key("paths").begin_array();
  for (const PathStatus &p : d.paths) {
    w.begin_object();
    text_member(w, "name", p.name);
    w.member("state", std::string_view(p.state()));
    w.member("sessions", p.sessions).member("sessions_up", p.sessions_up).member("failovers", p.failovers);
    text_member(w, "last_error", p.last_error);
    text_member(w, "alua", p.alua);
    w.end_object();
  }
  w.end_array();
  w.key("queues").begin_array();
  for (const QueueSnapshot &q : d.queues)
    w.begin_object().member("in_flight", q.in_flight).member("requests", q.total_requests()).end_object();
  w.end_array();
  w.key("requests").begin_object();
  for (std::size_t k = 0; k < kRequestKinds; ++k)
    w.member(to_string(static_cast<RequestKind>(k)), total.requests[k]);
  w.end_object();
  w.key("bytes").begin_object().member("read", total.bytes_read).member("write", total.bytes_written).end_object();
  w.member("errors", total.errors);
  w.member("bad_chains", total.bad_chains);
  w.member("interrupts", total.interrupts);
  // Latency over the rates' interval when there is one, as the text shows it.
  const auto &latency = d.rates ? d.rates->latency : total.latency;
  w.key("latency_seconds").begin_object();
  w.member("interval_seconds", d.rates ? d.rates->seconds : 0.0);
  for (std::size_t k = 0; k < kRequestKinds; ++k) {
    w.key(to_string(static_cast<RequestKind>(k)));
    latency_json(w, latency[k]);
  }
  w.end_object();
  w.key("rates");
  if (!d.rates) {
    w.null();
  } else {
    const Rates &r = *d.rates;
    w.begin_object();
    w.member("interval_seconds", r.seconds);
    w.key("iops").begin_object();
    for (std::size_t k = 0; k < kRequestKinds; ++k)
      w.member(to_string(static_cast<RequestKind>(k)), r.iops[k]);
    w.end_object();
    w.member("read_bytes_per_second", r.read_bytes_per_second);
    w.member("write_bytes_per_second", r.write_bytes_per_second);
    w.member("errors_per_second", r.errors_per_second);
    w.end_object();
  }
  w.end_object();
}

// "-" for an empty column, so that every line has the same number of fields.
std::string column(const std::string &text) { return text.empty() ? std::string("-") : text; }

} // namespace

std::string format_status_json(const std::vector<DeviceStatus> &devices, std::chrono::system_clock::time_point now) {
  JsonWriter w;
  w.begin_object();
  time_member(w, "time", now);
  w.key("devices").begin_array();
  for (const DeviceStatus &d : devices)
    device_json(w, d, now);
  w.end_array();
  w.end_object();
  return w.take() + "\n";
}

std::string format_device_list(const std::vector<DeviceStatus> &devices, bool json) {
  if (json) {
    JsonWriter w;
    w.begin_object();
    w.key("devices").begin_array();
    for (const DeviceStatus &d : devices) {
      w.begin_object();
      identity_members(w, d);
      w.end_object();
    }
    w.end_array();
    w.end_object();
    return w.take() + "\n";
  }
  std::vector<std::array<std::string, 6>> rows;
  for (const DeviceStatus &d : devices) {
    std::string state = to_string(d.state);
    if (has_backend(d) && d.backend_state != BackendState::connected)
      state += std::string(",") + to_string(d.backend_state);
    std::string backend = column(d.backend);
    if (!d.backend_identity.empty())
      backend += ":" + d.backend_identity;
    rows.push_back({d.name, column(device_node(d)), column(by_id_link(d)), column(d.attach), backend, state});
  }
  std::array<std::size_t, 6> width{};
  for (const auto &r : rows)
    for (std::size_t i = 0; i < r.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  std::string out;
  for (const auto &r : rows) {
    std::string l;
    for (std::size_t i = 0; i < r.size(); ++i) {
      l += r[i];
      if (i + 1 < r.size())
        l += std::string(width[i] - r[i].size() + 2, ' ');
    }
    out += l + "\n";
  }
  return out;
}

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
