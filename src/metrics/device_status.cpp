#include "metrics/device_status.h"

#include <ctime>
#include <string_view>

namespace vb::metrics {
namespace {

std::uint64_t delta(std::uint64_t current, std::uint64_t previous) noexcept {
  return current >= previous ? current - previous : current;
}

} // namespace

std::string format_time(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  if (::localtime_r(&tt, &tm) == nullptr)
    return "?";
  char buf[64];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &tm);
  return n == 0 ? std::string("?") : std::string(buf, n);
}

const char *to_string(BackendState state) noexcept {
  switch (state) {
  case BackendState::connected:
    return "connected";
  case BackendState::reconnecting:
    return "reconnecting";
  case BackendState::failing:
    break;
  }
  return "failing";
}

const char *to_string(DeviceState state) noexcept {
  switch (state) {
  case DeviceState::waiting:
    return "waiting";
  case DeviceState::starting:
    return "starting";
  case DeviceState::serving:
    return "serving";
  case DeviceState::stopping:
    break;
  }
  return "stopping";
}

double Rates::total_iops() const noexcept {
  double n = 0;
  for (double r : iops)
    n += r;
  return n;
}

Rates compute_rates(const QueueSnapshot &previous, const QueueSnapshot &current, double elapsed_seconds) noexcept {
  Rates r;
  r.seconds = elapsed_seconds;
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    r.latency[i] = current.latency[i].since(previous.latency[i]);
  if (elapsed_seconds <= 0)
    return r;
  auto per_second = [&](std::uint64_t cur, std::uint64_t prev) {
    return static_cast<double>(delta(cur, prev)) / elapsed_seconds;
  };
  for (std::size_t i = 0; i < kRequestKinds; ++i)
    r.iops[i] = per_second(current.requests[i], previous.requests[i]);
  r.read_bytes_per_second = per_second(current.bytes_read, previous.bytes_read);
  r.write_bytes_per_second = per_second(current.bytes_written, previous.bytes_written);
  r.errors_per_second = per_second(current.errors, previous.errors);
  return r;
}

QueueSnapshot DeviceStatus::total() const noexcept {
  QueueSnapshot t;
  for (const QueueSnapshot &q : queues)
    t.merge(q);
  return t;
}

std::string device_node(const DeviceStatus &device) {
  if (device.disk.empty())
    return {};
  return "/dev/" + device.disk;
}

std::string by_id_link(const DeviceStatus &device) {
  if (device.serial.empty() || device.attach != "virtio-vdpa")
    return {};
  std::string name;
  for (char ch : device.serial) {
    const auto c = static_cast<unsigned char>(ch);
    const bool plain = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                       std::string_view("#+-.:=@_").find(ch) != std::string_view::npos;
    name += plain ? ch : '_';
  }
  return "/dev/disk/by-id/virtio-" + name;
}

std::string format_elapsed(std::chrono::seconds elapsed) {
  long long s = elapsed.count();
  if (s < 0)
    s = 0;
  const long long d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
  if (d > 0)
    return std::to_string(d) + "d " + std::to_string(h) + "h";
  if (h > 0)
    return std::to_string(h) + "h " + std::to_string(m) + "m";
  if (m > 0)
    return std::to_string(m) + "m " + std::to_string(sec) + "s";
  return std::to_string(sec) + "s";
}

std::string describe_backend_state(const DeviceStatus &device, std::chrono::system_clock::time_point now) {
  std::string text;
  switch (device.backend_state) {
  case BackendState::connected:
    text = "connected";
    break;
  case BackendState::reconnecting:
    text = "reconnecting";
    break;
  case BackendState::failing:
    text = "failing I/O";
    break;
  }
  if (device.backend_state != BackendState::connected) {
    text += " since " + format_time(device.backend_state_since) + " (" +
            format_elapsed(std::chrono::duration_cast<std::chrono::seconds>(now - device.backend_state_since)) +
            " ago)";
  }
  if (!device.last_error.empty())
    text += (device.backend_state == BackendState::connected ? "; last error: " : ": ") + device.last_error;
  return text;
}

std::string describe_device_state(const DeviceStatus &device, std::chrono::system_clock::time_point now) {
  using std::chrono::duration_cast;
  using std::chrono::seconds;
  if (device.state == DeviceState::serving)
    return "serving";
  std::string text = device.state == DeviceState::waiting ? "waiting for its backend" : to_string(device.state);
  if (device.state_since != std::chrono::system_clock::time_point{})
    text += " since " + format_time(device.state_since) + " (" +
            format_elapsed(duration_cast<seconds>(now - device.state_since)) + " ago)";
  if (device.state == DeviceState::waiting) {
    text += " (" + std::to_string(device.start_attempts) + (device.start_attempts == 1 ? " attempt" : " attempts");
    if (device.next_attempt != std::chrono::system_clock::time_point{}) {
      // Rounded up: "next in 0s" only once it is due.
      const auto left = device.next_attempt > now ? std::chrono::ceil<seconds>(device.next_attempt - now) : seconds{0};
      text += ", next in " + format_elapsed(left);
    }
    text += ")";
    if (!device.last_error.empty())
      text += ": " + device.last_error;
  }
  return text;
}

void fill_rates(std::vector<DeviceStatus> &current, const std::vector<DeviceStatus> &previous, double elapsed_seconds) {
  for (DeviceStatus &d : current) {
    for (const DeviceStatus &p : previous) {
      if (p.name == d.name) {
        d.rates = compute_rates(p.total(), d.total(), elapsed_seconds);
        break;
      }
    }
  }
}

} // namespace vb::metrics
