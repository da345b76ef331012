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

// Where the daemon is with the device itself.
enum class DeviceState : std::uint8_t {
  waiting,  // not serving yet: its backend could not be opened or the device not created; retried
            // in the background with backoff (last_error says why, next_attempt when)
  starting, // being created (or taken over) and attached
  serving,  // created and attached (or attach: none): I/O flows, subject to backend_state
  stopping, // being detached and destroyed, or left for the next daemon
};
const char *to_string(DeviceState state) noexcept; // "waiting", "starting", "serving", "stopping"

// Rates over an interval between two snapshots of the same counters.
struct Rates {
  double seconds = 0; // length of the interval
  std::array<double, kRequestKinds> iops{};
  double read_bytes_per_second = 0;
  double write_bytes_per_second = 0;
  double errors_per_second = 0;
  std::array<HistogramSnapshot, kRequestKinds> latency; // what completed within the interval, by kind

  double total_iops() const noexcept;
  double iops_of(RequestKind kind) const noexcept { return iops[static_cast<std::size_t>(kind)]; }
};

// previous and current are snapshots of the same counters taken elapsed_seconds apart. A counter
// that went down (counters replaced by a restart) counts from zero. elapsed_seconds <= 0 gives
// zero rates (the interval's latency is still filled).
Rates compute_rates(const QueueSnapshot &previous, const QueueSnapshot &current, double elapsed_seconds) noexcept;

// One path to the storage (iSCSI multipath), as the backend reports it.
struct PathStatus {
  std::string name;      // "192.0.2.1:3260"
  unsigned sessions = 0; // one per queue
  unsigned sessions_up = 0;
  std::uint64_t failovers = 0; // requests moved off it when it failed
  std::string last_error;
  std::string alua; // its ALUA state; empty: the target has no ALUA
  // "up" (every queue's session), "degraded" (some), "down" (none).
  const char *state() const noexcept { return sessions_up == 0 ? "down" : sessions_up < sessions ? "degraded" : "up"; }
};

struct DeviceStatus {
  std::string name;             // the VDUSE/vDPA name, "disk0"
  std::string disk;             // "vda", "vhost-vdpa-0"; empty if not attached (or not known yet)
  std::string attach;           // "virtio-vdpa", "vhost-vdpa", "none"
  std::string backend;          // backend kind: "memory", "nbd", "iscsi"
  std::string backend_identity; // what it serves, e.g. the URI without secrets
  std::string serial;           // the serial the driver reads (config `serial`): /dev/disk/by-id/virtio-SERIAL
  DeviceState state = DeviceState::serving;
  std::chrono::system_clock::time_point state_since{};  // when it entered state
  unsigned start_attempts = 0;                          // tries to open/create it so far (waiting)
  std::chrono::system_clock::time_point next_attempt{}; // waiting: when it is tried again
  BackendState backend_state = BackendState::connected;
  std::chrono::system_clock::time_point backend_state_since{}; // when it entered backend_state
  std::string last_error;          // the backend's latest error text, or why the device is waiting; may be empty
  std::uint64_t reconnects = 0;    // times the backend was connected again after it was lost, since started
  std::uint64_t held_requests = 0; // requests in the backend while it reconnects (held, not failed), now
  std::uint64_t capacity_bytes = 0;
  bool read_only = false;
  std::chrono::system_clock::time_point started{}; // when this daemon began serving the device
  std::vector<QueueSnapshot> queues;               // one per virtqueue, in queue order
  std::vector<PathStatus> paths;                   // several paths to the storage (multipath); else empty
  std::optional<Rates> rates;                      // over a recent interval, if the caller has two samples

  // Every queue merged.
  QueueSnapshot total() const noexcept;
  // Serving with its backend connected: what `status` exits 0 for.
  bool healthy() const noexcept { return state == DeviceState::serving && backend_state == BackendState::connected; }
};

// "connected", "reconnecting since 2026-11-02 10:11:12 CET (35s ago): <last error>",
// "failing I/O since ...". The last error is added whenever it is not empty.
std::string describe_backend_state(const DeviceStatus &device, std::chrono::system_clock::time_point now);

// "serving", "starting since ... (3s ago)", "stopping since ...", and for a waiting device
// "waiting for its backend since 2026-11-02 10:11:12 CET (35s ago) (3 attempts, next in 8s): <last error>".
std::string describe_device_state(const DeviceStatus &device, std::chrono::system_clock::time_point now);

// "2026-11-02 10:11:12 CET": local time, for humans; "?" if it cannot be converted.
std::string format_time(std::chrono::system_clock::time_point t);

// Sets current[i].rates from the device of the same name in previous (sampled elapsed_seconds
// earlier); devices without a predecessor keep no rates.
void fill_rates(std::vector<DeviceStatus> &current, const std::vector<DeviceStatus> &previous, double elapsed_seconds);

// The device's node: "/dev/vda" for disk "vda", "/dev/vhost-vdpa-0"; empty if it has none (yet).
std::string device_node(const DeviceStatus &device);
// The udev link to a virtio-vdpa disk by its serial, "/dev/disk/by-id/virtio-SERIAL" (udev's
// usual rule: every character but [0-9A-Za-z#+-.:=@_] becomes '_'); empty without a serial or
// for other attach modes (vhost-vdpa disks are the guest's).
std::string by_id_link(const DeviceStatus &device);

// "2d 3h", "1h 2m", "3m 4s", "5s": a duration for humans, two units at most.
std::string format_elapsed(std::chrono::seconds elapsed);

} // namespace vb::metrics
