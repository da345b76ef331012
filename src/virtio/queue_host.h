// What a virtqueue server needs from the device that owns the queue: somewhere to install the
// eventfd the driver kicks, and a way to interrupt the driver. VDUSE devices implement it;
// unit tests implement it in-process.
#pragma once

namespace vb::virtio {

class QueueHost {
public:
  virtual ~QueueHost() = default;
  // Control thread. Throws on failure.
  virtual void set_kickfd(unsigned index, int fd) = 0;
  // Any thread. Returns 0 or an errno.
  virtual int inject_vq_irq(unsigned index) const noexcept = 0;
};

} // namespace vb::virtio
