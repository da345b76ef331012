// Prometheus text exposition format 0.0.4 of every device's metrics
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Every name starts with vduse_bridge_; every family has # HELP and # TYPE before its samples,
// which are grouped by family. Counters are since this daemon began serving the device.
// Threading: pure functions; any thread.
#pragma once

#include "metrics/device_status.h"

#include <string>
#include <string_view>
#include <vector>

namespace vb::metrics {

// The Content-Type of format_prometheus()'s output.
inline constexpr const char *kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

// Which build is running, for vduse_bridge_build_info (the daemon passes its own version and commit).
struct BuildInfo {
  std::string version; // "0.4.0"
  std::string commit;  // the git commit it was built from; may be empty
};

// Families (labels; every one but build_info has `device`, the configured device name, and no other
// label holds anything the configuration's author wrote):
//   build_info (version, commit) = 1
//   device_info (disk, attach, backend, read_only) = 1
//   device_state (state = waiting|starting|serving|stopping): one sample per state, the current one 1
//   capacity_bytes (if known), start_time_seconds (unix time; devices with a start time)
//   backend_up 0/1; backend_state (state = connected|reconnecting|failing), devices serving or stopping
//   backend_reconnects_total, requests_total (op), bytes_total (op = read|write), errors_total,
//   bad_chains_total, interrupts_total, requests_in_flight, requests_held
//   request_duration_seconds, a histogram (op) with le = 50us .. 300s and +Inf
// op takes the same values everywhere: read|write|flush|discard|write_zeroes|other.
std::string format_prometheus(const std::vector<DeviceStatus> &devices, const BuildInfo &build = {});

// A label value as the format wants it: \ -> \\, " -> \", newline -> \n.
std::string escape_label_value(std::string_view value);

} // namespace vb::metrics
