// Attaching VDUSE devices to the vDPA bus: what `vdpa dev add name NAME mgmtdev vduse` does,
// over generic netlink (libmnl packs the attributes and parses ACKs and errors for us), plus
// choosing the bus driver and finding the block device that appears.
//
// add_device() and del_device() block until the kernel has probed/removed the bus driver, and
// that probe sends control messages to the VDUSE device: call them from a thread that is not the
// one answering those messages, or they deadlock until the kernel's timeout breaks the device.
#pragma once

#include <optional>
#include <string>

namespace vb::vdpa {

enum class Driver { virtio_vdpa, vhost_vdpa };

const char *driver_name(Driver d) noexcept; // the kernel's name: "virtio_vdpa" / "vhost_vdpa"

// Throws with the kernel's error text (and a hint for the usual causes) on failure.
void add_device(const std::string &name, const std::string &mgmtdev = "vduse");
void del_device(const std::string &name);

bool device_exists(const std::string &name);
// The driver the device is bound to now, if any.
std::optional<std::string> bound_driver(const std::string &name);
// Rebinds the device to driver unless it is bound there already (driver_override + bind).
void bind_driver(const std::string &name, Driver driver);

// With virtio_vdpa: "vda" for /dev/vda, once the disk has appeared.
std::optional<std::string> block_device(const std::string &name);
// With vhost_vdpa: "vhost-vdpa-0" for /dev/vhost-vdpa-0.
std::optional<std::string> vhost_device(const std::string &name);

} // namespace vb::vdpa
