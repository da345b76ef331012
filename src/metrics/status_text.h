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

// Per device: a header (name, disk node, backend, identity, attach), then its state (serving;
// waiting for its backend since when, attempts, next try and last error; starting; stopping),
// and for a device serving or stopping the backend state,
// capacity, uptime, queue depth, requests and data per kind, IOPS and throughput (when the
// device carries rates), read and write latency p50/p90/p99/p99.9 (over the rates' interval
// when there are rates, else since start), errors, and reconnects and held requests when there
// were any. A waiting or starting device shows only its header, state and capacity. Devices are
// separated by a blank line.
std::string format_status_text(const std::vector<DeviceStatus> &devices, std::chrono::system_clock::time_point now);

// The same as one JSON object (RFC 8259), a line: {"time": unix seconds, "devices": [...]}, each
// device with the members documented under STATUS in vduse-bridge(8).
std::string format_status_json(const std::vector<DeviceStatus> &devices, std::chrono::system_clock::time_point now);

// `vduse-bridge list`: one line per device, columns aligned and separated by two or more spaces:
// name, device node (/dev/vda, /dev/vhost-vdpa-0), /dev/disk/by-id/virtio-SERIAL, attach mode,
// backend kind:identity (no secrets), and state ("serving", "waiting", "serving,reconnecting");
// "-" for an empty column, no header, nothing for no devices. json: {"devices": [...]} with the
// members name, dev, by_id, attach, backend, identity, state, backend_state, healthy.
std::string format_device_list(const std::vector<DeviceStatus> &devices, bool json);

// "850ns", "120us", "1.23ms", "4.5s": three significant digits.
std::string format_latency(double ns);

} // namespace vb::metrics
