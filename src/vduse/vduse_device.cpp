#include "vduse/vduse_device.h"
#include "common/unique_fd.h"

#include "common/errors.h"
#include "common/log.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <stdexcept>
#include <sys/ioctl.h>
#include <thread>
#include <unistd.h>

namespace vb::vduse {
namespace {

constexpr const char *kControlPath = "/dev/vduse/control";

[[noreturn]] void fail(const std::string &what) { throw std::runtime_error(errno_message(what, errno)); }

using Fd = UniqueFd;

int open_control() {
  const int fd = ::open(kControlPath, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return -1;
  std::uint64_t version = VDUSE_API_VERSION;
  if (::ioctl(fd, VDUSE_SET_API_VERSION, &version) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

void write_sysfs(const std::string &path, const std::string &value) {
  std::ofstream f(path);
  f << value;
  f.flush();
  if (!f)
    throw std::runtime_error("cannot write '" + value + "' to " + path);
}

const char *message_name(std::uint32_t type) {
  switch (type) {
  case VDUSE_GET_VQ_STATE:
    return "GET_VQ_STATE";
  case VDUSE_SET_STATUS:
    return "SET_STATUS";
  case VDUSE_UPDATE_IOTLB:
    return "UPDATE_IOTLB";
  default:
    return "unknown";
  }
}

} // namespace

bool VduseDevice::available() noexcept { return ::access(kControlPath, R_OK | W_OK) == 0; }

bool VduseDevice::exists(const std::string &name) noexcept {
  return ::access(("/dev/vduse/" + name).c_str(), F_OK) == 0;
}

VduseDevice::VduseDevice(const DeviceSpec &spec) : name_(spec.name) {
  if (name_.empty() || name_.size() >= VDUSE_NAME_MAX)
    throw std::runtime_error("invalid VDUSE device name '" + name_ + "'");
  Fd control(open_control());
  if (control.get() < 0)
    fail(std::string("cannot open ") + kControlPath + " (is the vduse module loaded?)");

  std::vector<std::uint8_t> buf(sizeof(vduse_dev_config) + spec.config.size(), 0);
  auto *cfg = reinterpret_cast<vduse_dev_config *>(buf.data());
  std::memcpy(cfg->name, name_.c_str(), name_.size() + 1);
  cfg->vendor_id = spec.vendor_id;
  cfg->device_id = spec.device_id;
  cfg->features = spec.features;
  cfg->vq_num = spec.num_queues;
  cfg->vq_align = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
  cfg->config_size = static_cast<std::uint32_t>(spec.config.size());
  std::memcpy(buf.data() + sizeof(vduse_dev_config), spec.config.data(), spec.config.size());
  if (::ioctl(control.get(), VDUSE_CREATE_DEV, cfg) != 0) {
    if (errno != EEXIST)
      fail("VDUSE_CREATE_DEV " + name_);
    // The device outlived a previous run (crash or planned restart): serve it again.
    reattached_ = true;
  }

  fd_ = ::open(("/dev/vduse/" + name_).c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) {
    const int err = errno;
    if (!reattached_)
      ::ioctl(control.get(), VDUSE_DESTROY_DEV, name_.c_str());
    errno = err;
    fail(err == EBUSY ? "/dev/vduse/" + name_ + " is open elsewhere (another vduse-bridge serving it?)"
                      : "open /dev/vduse/" + name_);
  }
  for (std::uint32_t i = 0; i < spec.num_queues; ++i) {
    vduse_vq_config vq{};
    vq.index = i;
    vq.max_size = spec.queue_size_max;
    if (::ioctl(fd_, VDUSE_VQ_SETUP, &vq) != 0) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      if (!reattached_)
        ::ioctl(control.get(), VDUSE_DESTROY_DEV, name_.c_str());
      errno = err;
      fail("VDUSE_VQ_SETUP " + name_);
    }
  }
}

VduseDevice::~VduseDevice() {
  if (fd_ >= 0)
    ::close(fd_);
}

void VduseDevice::set_bounce_size(std::uint64_t bytes) {
  write_sysfs("/sys/class/vduse/" + name_ + "/bounce_size", std::to_string(bytes));
}

void VduseDevice::set_msg_timeout(unsigned seconds) {
  write_sysfs("/sys/class/vduse/" + name_ + "/msg_timeout", std::to_string(seconds));
}

std::uint64_t VduseDevice::driver_features() const {
  std::uint64_t features = 0;
  if (::ioctl(fd_, VDUSE_DEV_GET_FEATURES, &features) != 0)
    fail("VDUSE_DEV_GET_FEATURES");
  return features;
}

VqInfo VduseDevice::vq_info(std::uint32_t index) const {
  vduse_vq_info info{};
  info.index = index;
  if (::ioctl(fd_, VDUSE_VQ_GET_INFO, &info) != 0)
    fail("VDUSE_VQ_GET_INFO");
  VqInfo out;
  out.index = index;
  out.num = info.num;
  out.desc = info.desc_addr;
  out.driver = info.driver_addr;
  out.device = info.device_addr;
  out.avail_index = info.split.avail_index;
  out.ready = info.ready != 0;
  return out;
}

void VduseDevice::set_kickfd(unsigned index, int fd) {
  vduse_vq_eventfd e{};
  e.index = index;
  e.fd = fd;
  if (::ioctl(fd_, VDUSE_VQ_SETUP_KICKFD, &e) != 0)
    fail("VDUSE_VQ_SETUP_KICKFD");
}

int VduseDevice::inject_vq_irq(unsigned index) const noexcept {
  std::uint32_t i = index;
  return ::ioctl(fd_, VDUSE_VQ_INJECT_IRQ, &i) == 0 ? 0 : errno;
}

void VduseDevice::set_config(std::uint32_t offset, const void *data, std::uint32_t len) {
  std::vector<std::uint8_t> buf(sizeof(vduse_config_data) + len);
  auto *c = reinterpret_cast<vduse_config_data *>(buf.data());
  c->offset = offset;
  c->length = len;
  std::memcpy(buf.data() + sizeof(vduse_config_data), data, len);
  if (::ioctl(fd_, VDUSE_DEV_SET_CONFIG, c) != 0)
    fail("VDUSE_DEV_SET_CONFIG");
}

void VduseDevice::inject_config_irq() {
  if (::ioctl(fd_, VDUSE_DEV_INJECT_CONFIG_IRQ) != 0)
    fail("VDUSE_DEV_INJECT_CONFIG_IRQ");
}

bool VduseDevice::handle_messages(ControlHandler &handler) {
  for (;;) {
    vduse_dev_request req{};
    const ssize_t n = ::read(fd_, &req, sizeof req);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR)
        return true;
      VB_LOG_ERROR("%s: reading control messages: %s", name_.c_str(), errno_text(errno));
      return false;
    }
    if (n != static_cast<ssize_t>(sizeof req)) {
      VB_LOG_ERROR("%s: short control message (%zd bytes)", name_.c_str(), n);
      return false;
    }
    vduse_dev_response resp{};
    resp.request_id = req.request_id;
    resp.result = VDUSE_REQ_RESULT_OK;
    switch (req.type) {
    case VDUSE_GET_VQ_STATE:
      resp.vq_state.index = req.vq_state.index;
      resp.vq_state.split.avail_index = handler.on_get_vq_state(req.vq_state.index);
      break;
    case VDUSE_SET_STATUS:
      if (!handler.on_set_status(req.s.status))
        resp.result = VDUSE_REQ_RESULT_FAILED;
      break;
    case VDUSE_UPDATE_IOTLB:
      handler.on_update_iotlb(req.iova.start, req.iova.last);
      break;
    default:
      VB_LOG_WARN("%s: unknown control message type %u", name_.c_str(), req.type);
      resp.result = VDUSE_REQ_RESULT_FAILED;
      break;
    }
    VB_LOG_DEBUG("%s: %s -> %s", name_.c_str(), message_name(req.type),
                 resp.result == VDUSE_REQ_RESULT_OK ? "ok" : "failed");
    if (::write(fd_, &resp, sizeof resp) != static_cast<ssize_t>(sizeof resp)) {
      VB_LOG_ERROR("%s: answering control message: %s", name_.c_str(), errno_text(errno));
      return false;
    }
    if (req.type == VDUSE_SET_STATUS && resp.result == VDUSE_REQ_RESULT_OK)
      handler.after_set_status(req.s.status);
  }
}

bool VduseDevice::destroy(unsigned timeout_ms) {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto delay = std::chrono::milliseconds(1);
  for (;;) {
    const int err = destroy_by_name(name_);
    if (err == 0 || err == ENOENT || err == EINVAL)
      return err == 0;
    if (err != EBUSY || std::chrono::steady_clock::now() >= deadline) {
      VB_LOG_ERROR("%s: cannot destroy the VDUSE device: %s", name_.c_str(), errno_text(err));
      return false;
    }
    // Still attached or still open while the vDPA device goes away: retry briefly.
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(100));
  }
}

int VduseDevice::destroy_by_name(const std::string &name) noexcept {
  const int fd = open_control();
  if (fd < 0)
    return errno;
  char buf[VDUSE_NAME_MAX] = {};
  std::strncpy(buf, name.c_str(), sizeof buf - 1);
  const int rc = ::ioctl(fd, VDUSE_DESTROY_DEV, buf);
  const int err = rc == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

} // namespace vb::vduse
