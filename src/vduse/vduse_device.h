// One VDUSE device: creation (or re-attachment to a device that survived us), the per-device
// ioctls, and the control-message channel on /dev/vduse/NAME. Knows nothing of block storage.
//
// Threading: created and destroyed on the control thread. The ioctls that the data path uses
// (inject_vq_irq) are safe from any thread; everything else belongs to the control thread.
#pragma once

#include "virtio/queue_host.h"

#include <cstdint>
#include <linux/vduse.h>
#include <string>
#include <vector>

namespace vb::vduse {

struct DeviceSpec {
  std::string name;
  std::uint32_t device_id = 0; // virtio device id (2 = block)
  std::uint32_t vendor_id = 0;
  std::uint64_t features = 0;
  std::uint32_t num_queues = 1;
  std::uint16_t queue_size_max = 256;
  std::vector<std::uint8_t> config; // device config space
};

struct VqInfo {
  std::uint32_t index = 0;
  std::uint32_t num = 0;
  std::uint64_t desc = 0, driver = 0, device = 0;
  std::uint16_t avail_index = 0; // what the driver last set; not our progress
  bool ready = false;
};

// What the kernel asks on the control channel. Answers must never wait for backend I/O: the
// kernel gives up after msg_timeout and breaks the device for good.
class ControlHandler {
public:
  virtual ~ControlHandler() = default;
  virtual bool on_set_status(std::uint8_t status) noexcept = 0;
  virtual std::uint16_t on_get_vq_state(std::uint32_t index) noexcept = 0;
  virtual void on_update_iotlb(std::uint64_t start, std::uint64_t last) noexcept = 0;
  // Runs after the reply to a SET_STATUS was written (e.g. DRIVER_OK: start queues).
  virtual void after_set_status(std::uint8_t status) noexcept = 0;
};

class VduseDevice final : public virtio::QueueHost {
public:
  // Creates the device, or attaches to an existing one of that name (EEXIST: a previous run left
  // it, see reattached()). Opens /dev/vduse/NAME and sets up every virtqueue. Throws on failure.
  explicit VduseDevice(const DeviceSpec &spec);
  // Closes the device fd; does not destroy the device (see destroy()).
  ~VduseDevice() override;
  VduseDevice(const VduseDevice &) = delete;
  VduseDevice &operator=(const VduseDevice &) = delete;

  const std::string &name() const { return name_; }
  int fd() const { return fd_; }
  bool reattached() const { return reattached_; }

  // sysfs knobs; only meaningful before the device is attached to the vDPA bus.
  void set_bounce_size(std::uint64_t bytes);
  void set_msg_timeout(unsigned seconds);

  std::uint64_t driver_features() const;
  VqInfo vq_info(std::uint32_t index) const;
  void set_kickfd(unsigned index, int fd) override;
  // Any thread. Returns 0 or an errno.
  int inject_vq_irq(unsigned index) const noexcept override;
  void set_config(std::uint32_t offset, const void *data, std::uint32_t len);
  void inject_config_irq();

  // Reads and answers every pending control message. Returns false when the device is broken
  // (the kernel timed a message out) or the fd failed.
  bool handle_messages(ControlHandler &handler);

  // Closes the fd and destroys the device, retrying while it is still busy (detach in progress).
  // Returns true if destroyed.
  bool destroy(unsigned timeout_ms = 5000);

  // Destroys a device by name through the control node (for cleanup tools and tests).
  static int destroy_by_name(const std::string &name) noexcept;
  // Whether this kernel has VDUSE at all.
  static bool available() noexcept;
  // Whether a VDUSE device of that name exists (left by an earlier run or being served).
  static bool exists(const std::string &name) noexcept;

private:
  std::string name_;
  int fd_ = -1;
  bool reattached_ = false;
};

} // namespace vb::vduse
