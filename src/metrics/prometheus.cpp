#include "metrics/prometheus.h"

#include <array>
#include <charconv>
#include <chrono>
#include <initializer_list>
#include <utility>

namespace vb::metrics {
namespace {

using Labels = std::initializer_list<std::pair<const char *, std::string_view>>;

std::string number(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// A bound as a plain decimal ("0.00005", "2.5", "10"): easier to read than "5e-05".
std::string seconds_bound(std::uint64_t ns) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, static_cast<double>(ns) / 1e9, std::chars_format::fixed);
  return std::string(buf, r.ptr);
}

constexpr std::array kDeviceStates = {DeviceState::waiting, DeviceState::starting, DeviceState::serving,
                                      DeviceState::stopping};
constexpr std::array kBackendStates = {BackendState::connected, BackendState::reconnecting, BackendState::failing};

// A device whose backend is open: serving, or stopping after it served.
bool has_backend(const DeviceStatus &d) { return d.state == DeviceState::serving || d.state == DeviceState::stopping; }

std::string escape_help(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

class Writer {
public:
  void family(const char *name, const char *type, const char *help) {
    out_ += "# HELP vduse_bridge_";
    out_ += name;
    out_ += ' ';
    out_ += escape_help(help);
    out_ += "\n# TYPE vduse_bridge_";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  void sample(std::string_view name, Labels labels, const std::string &value) {
    out_ += "vduse_bridge_";
    out_ += name;
    if (labels.size() > 0) {
      out_ += '{';
      bool first = true;
      for (const auto &[key, val] : labels) {
        if (!first)
          out_ += ',';
        first = false;
        out_ += key;
        out_ += "=\"";
        out_ += escape_label_value(val);
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  void sample(std::string_view name, Labels labels, std::uint64_t value) {
    sample(name, labels, std::to_string(value));
  }

  std::string take() { return std::move(out_); }

private:
  std::string out_;
};

} // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string format_prometheus(const std::vector<DeviceStatus> &devices, const BuildInfo &build) {
  std::vector<QueueSnapshot> totals;
  totals.reserve(devices.size());
  for (const DeviceStatus &d : devices)
    totals.push_back(d.total());

  Writer w;
  w.family("build_info", "gauge", "The running vduse-bridge; the labels say which build, the value is always 1.");
  w.sample("build_info", {{"version", build.version}, {"commit", build.commit}}, 1);

  // Only what the daemon itself names: the disk node, the attach mode and the backend kind. What
  // the configuration's author wrote (URI, export, serial) stays out of the labels.
  w.family("device_info", "gauge", "A device served by this daemon; the labels describe it, the value is always 1.");
  for (const DeviceStatus &d : devices)
    w.sample("device_info",
             {{"device", d.name},
              {"disk", d.disk},
              {"attach", d.attach},
              {"backend", d.backend},
              {"read_only", d.read_only ? "true" : "false"}},
             1);

  w.family("device_state", "gauge",
           "Where the daemon is with the device: 1 for its state (waiting, starting, serving, stopping), 0 for the "
           "others.");
  for (const DeviceStatus &d : devices)
    for (DeviceState s : kDeviceStates)
      w.sample("device_state", {{"device", d.name}, {"state", to_string(s)}}, d.state == s ? 1 : 0);

  w.family("capacity_bytes", "gauge", "Size of the device in bytes (devices whose size is known).");
  for (const DeviceStatus &d : devices)
    if (d.capacity_bytes != 0)
      w.sample("capacity_bytes", {{"device", d.name}}, d.capacity_bytes);

  w.family("start_time_seconds", "gauge", "When this daemon began serving the device, in seconds since the epoch.");
  for (const DeviceStatus &d : devices) {
    if (d.started == std::chrono::system_clock::time_point{})
      continue;
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(d.started.time_since_epoch()).count();
    w.sample("start_time_seconds", {{"device", d.name}}, std::to_string(s));
  }

  w.family("backend_up", "gauge",
           "1 if the device is serving with its backend connected; 0 while it reconnects, fails I/O, or the device "
           "waits for it.");
  for (const DeviceStatus &d : devices)
    w.sample("backend_up", {{"device", d.name}}, has_backend(d) && d.backend_state == BackendState::connected ? 1 : 0);

  w.family("backend_state", "gauge",
           "The backend of a serving device: 1 for its state (connected, reconnecting, failing), 0 for the others.");
  for (const DeviceStatus &d : devices)
    if (has_backend(d))
      for (BackendState s : kBackendStates)
        w.sample("backend_state", {{"device", d.name}, {"state", to_string(s)}}, d.backend_state == s ? 1 : 0);

  w.family("backend_reconnects_total", "counter", "New backend connections made after a lost one.");
  for (const DeviceStatus &d : devices)
    w.sample("backend_reconnects_total", {{"device", d.name}}, d.reconnects);

  // Paths are labelled by their number (0 = the URI's portal, then the portals key's order):
  // labels carry no user-written text but the device name; status shows each path's portal.
  auto per_path = [&](const char *family, auto value) {
    for (const DeviceStatus &d : devices)
      for (std::size_t i = 0; i < d.paths.size(); ++i)
        w.sample(family, {{"device", d.name}, {"path", std::to_string(i)}}, value(d.paths[i]));
  };
  w.family("backend_path_sessions_up", "gauge",
           "Multipath: the queues' sessions logged in on each path (of backend_path_sessions).");
  per_path("backend_path_sessions_up", [](const PathStatus &p) { return std::uint64_t{p.sessions_up}; });
  w.family("backend_path_sessions", "gauge", "Multipath: sessions each path has, one per queue.");
  per_path("backend_path_sessions", [](const PathStatus &p) { return std::uint64_t{p.sessions}; });
  w.family("backend_path_failovers_total", "counter",
           "Multipath: requests sent again on another path after this one failed.");
  per_path("backend_path_failovers_total", [](const PathStatus &p) { return p.failovers; });
  w.family("backend_path_alua_state", "gauge",
           "Multipath: each path's ALUA access state as a state set (paths of a target with ALUA only).");
  for (const DeviceStatus &d : devices)
    for (std::size_t i = 0; i < d.paths.size(); ++i)
      if (!d.paths[i].alua.empty())
        for (const char *s : {"active/optimized", "active/non-optimized", "standby", "unavailable", "lba-dependent",
                              "offline", "transitioning"})
          w.sample("backend_path_alua_state", {{"device", d.name}, {"path", std::to_string(i)}, {"state", s}},
                   d.paths[i].alua == s ? 1 : 0);

  w.family("requests_total", "counter", "Requests completed, by operation.");
  for (std::size_t i = 0; i < devices.size(); ++i)
    for (std::size_t k = 0; k < kRequestKinds; ++k)
      w.sample("requests_total", {{"device", devices[i].name}, {"op", to_string(static_cast<RequestKind>(k))}},
               totals[i].requests[k]);

  w.family("bytes_total", "counter", "Data bytes of successful reads and writes, by operation.");
  for (std::size_t i = 0; i < devices.size(); ++i) {
    w.sample("bytes_total", {{"device", devices[i].name}, {"op", to_string(RequestKind::read)}}, totals[i].bytes_read);
    w.sample("bytes_total", {{"device", devices[i].name}, {"op", to_string(RequestKind::write)}},
             totals[i].bytes_written);
  }

  w.family("errors_total", "counter", "Requests completed with an error status.");
  for (std::size_t i = 0; i < devices.size(); ++i)
    w.sample("errors_total", {{"device", devices[i].name}}, totals[i].errors);

  w.family("bad_chains_total", "counter", "Malformed descriptor chains failed without being parsed.");
  for (std::size_t i = 0; i < devices.size(); ++i)
    w.sample("bad_chains_total", {{"device", devices[i].name}}, totals[i].bad_chains);

  w.family("interrupts_total", "counter", "Used-ring notifications sent to the driver.");
  for (std::size_t i = 0; i < devices.size(); ++i)
    w.sample("interrupts_total", {{"device", devices[i].name}}, totals[i].interrupts);

  w.family("requests_in_flight", "gauge", "Requests taken off the rings and not yet completed, every queue together.");
  for (std::size_t i = 0; i < devices.size(); ++i)
    w.sample("requests_in_flight", {{"device", devices[i].name}}, totals[i].in_flight);

  w.family("requests_held", "gauge", "Requests held, neither sent nor failed, while the backend reconnects.");
  for (const DeviceStatus &d : devices)
    w.sample("requests_held", {{"device", d.name}}, d.held_requests);

  static const std::array<std::string, kExportBoundsNs.size()> bounds = [] {
    std::array<std::string, kExportBoundsNs.size()> b;
    for (std::size_t i = 0; i < b.size(); ++i)
      b[i] = seconds_bound(kExportBoundsNs[i]);
    return b;
  }();
  w.family("request_duration_seconds", "histogram",
           "Time from taking a request off the ring to its completion, by operation; a request held while the "
           "backend reconnects counts its wait.");
  for (std::size_t i = 0; i < devices.size(); ++i) {
    for (std::size_t k = 0; k < kRequestKinds; ++k) {
      const std::string_view op = to_string(static_cast<RequestKind>(k));
      const HistogramSnapshot &h = totals[i].latency[k];
      const auto cumulative = h.cumulative_export();
      for (std::size_t b = 0; b < bounds.size(); ++b)
        w.sample("request_duration_seconds_bucket", {{"device", devices[i].name}, {"op", op}, {"le", bounds[b]}},
                 cumulative[b]);
      // +Inf and _count come from the same counts, so they agree even while queues record.
      w.sample("request_duration_seconds_bucket", {{"device", devices[i].name}, {"op", op}, {"le", "+Inf"}},
               cumulative.back());
      w.sample("request_duration_seconds_sum", {{"device", devices[i].name}, {"op", op}},
               number(static_cast<double>(h.sum_ns) / 1e9));
      w.sample("request_duration_seconds_count", {{"device", devices[i].name}, {"op", op}}, cumulative.back());
    }
  }
  return w.take();
}

} // namespace vb::metrics
