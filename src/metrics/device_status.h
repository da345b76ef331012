// What the operator surface reports about one device: plain data gathered by the daemon (from
// the export, the backend and every queue's counters) and handed to the formatters.
//
// Threading: plain values; build on any thread, then read-only.
#pragma once

#include "metrics/queue_counters.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vb::metrics {

enum class BackendState : std::uint8_t {
  connected,    // serving I/O
  reconnecting, // the storage went away; I/O is held while a new connection is tried
  failing,      // gave up reconnecting (past reconnect-timeout): I/O fails
};
const char *to_string(BackendState state) noexcept; // "connected", "reconnecting", "failing"

// Rates over an interval between two snapshots of the same counters.
struct Rates {
  double seconds = 0; // length of the interval
  std::array<double, kRequestKinds> iops{};
  double read_bytes_per_second = 0;
  double write_bytes_per_second = 0;
  double errors_per_second = 0;
  std::array<HistogramSnapshot, kLatencyGroups> latency; // what completed within the interval

  double total_iops() const noexcept;
  double iops_of(RequestKind kind) const noexcept { return iops[static_cast<std::size_t>(kind)]; }
};

// previous and current are snapshots of the same counters taken elapsed_seconds apart. A counter
// that went down (counters replaced by a restart) counts from zero. elapsed_seconds <= 0 gives
// zero rates (the interval's latency is still filled).
Rates compute_rates(const QueueSnapshot &previous, const QueueSnapshot &current, double elapsed_seconds) noexcept;

struct DeviceStatus {
  std::string name;             // the VDUSE/vDPA name, "disk0"
  std::string disk;             // "vda", "vhost-vdpa-0"; empty if not attached (or not known yet)
  std::string attach;           // "virtio-vdpa", "vhost-vdpa", "none"
  std::string backend;          // backend kind: "memory", "nbd", "iscsi"
  std::string backend_identity; // what it serves, e.g. the URI without secrets
  BackendState backend_state = BackendState::connected;
  std::chrono::system_clock::time_point backend_state_since{}; // when it entered backend_state
  std::string last_error;                                      // the backend's latest error text, may be empty
  std::uint64_t capacity_bytes = 0;
  bool read_only = false;
  std::chrono::system_clock::time_point started{}; // when this daemon began serving the device
  std::vector<QueueSnapshot> queues;               // one per virtqueue, in queue order
  std::optional<Rates> rates;                      // over a recent interval, if the caller has two samples

  // Every queue merged.
  QueueSnapshot total() const noexcept;
};

// "connected", "reconnecting since 2026-11-02 10:11:12 CET (35s ago): <last error>",
// "failing I/O since ...". The last error is added whenever it is not empty.
std::string describe_backend_state(const DeviceStatus &device, std::chrono::system_clock::time_point now);

// Sets current[i].rates from the device of the same name in previous (sampled elapsed_seconds
// earlier); devices without a predecessor keep no rates.
void fill_rates(std::vector<DeviceStatus> &current, const std::vector<DeviceStatus> &previous, double elapsed_seconds);

// "2d 3h", "1h 2m", "3m 4s", "5s": a duration for humans, two units at most.
std::string format_elapsed(std::chrono::seconds elapsed);

} // namespace vb::metrics
