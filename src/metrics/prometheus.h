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

// Families (labels): device_info (device, disk, attach, backend, identity, read_only) = 1,
// capacity_bytes, start_time_seconds (unix time; only for devices with a start time),
// backend_up (device, backend) 0/1, requests_total (device, op = read|write|flush|discard|
// write_zeroes|other), bytes_total (device, direction = read|write), errors_total,
// bad_chains_total, interrupts_total, in_flight, and request_duration_seconds, a histogram
// (device, op = read|write|other) with le = 50us .. 10s and +Inf.
std::string format_prometheus(const std::vector<DeviceStatus> &devices);

// A label value as the format wants it: \ -> \\, " -> \", newline -> \n.
std::string escape_label_value(std::string_view value);

} // namespace vb::metrics
