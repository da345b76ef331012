// `vduse-bridge status`: every device as a header line and indented "Key: value" lines, in the
// manner of `systemctl status`.
//
// Threading: pure functions of their arguments; any thread.
#pragma once

#include "metrics/device_status.h"

#include <chrono>
#include <string>
#include <vector>

namespace vb::metrics {

// Per device: a header (name, disk node, backend, identity, attach), then the backend state,
// capacity, uptime, queue depth, requests and data per kind, IOPS and throughput (when the
// device carries rates), read and write latency p50/p90/p99/p99.9 (over the rates' interval
// when there are rates, else since start) and errors. Devices are separated by a blank line.
std::string format_status_text(const std::vector<DeviceStatus> &devices, std::chrono::system_clock::time_point now);

// "850ns", "120us", "1.23ms", "4.5s": three significant digits.
std::string format_latency(double ns);

} // namespace vb::metrics
