#include "vdpa/vdpa_bus.h"

#include "common/errors.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <libmnl/libmnl.h>
#include <linux/genetlink.h>
#include <linux/vdpa.h>
#include <memory>
#include <stdexcept>
#include <unistd.h>
#include <vector>

namespace vb::vdpa {
namespace {

namespace fs = std::filesystem;

const std::string kBus = "/sys/bus/vdpa";

struct SocketCloser {
  void operator()(mnl_socket *s) const { mnl_socket_close(s); }
};
using Socket = std::unique_ptr<mnl_socket, SocketCloser>;

Socket open_genl() {
  Socket s(mnl_socket_open(NETLINK_GENERIC));
  if (!s)
    throw std::runtime_error(errno_message("netlink socket", errno));
  if (mnl_socket_bind(s.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    throw std::runtime_error(errno_message("netlink bind", errno));
  return s;
}

// Sends one request and reads until its ACK; the callback sees each data message.
int transact(mnl_socket *s, nlmsghdr *nlh, mnl_cb_t cb, void *data) {
  const unsigned portid = mnl_socket_get_portid(s);
  const unsigned seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(s, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(s, buf.data(), buf.size());
    if (n < 0)
      return -errno;
    const int rc = mnl_cb_run(buf.data(), static_cast<size_t>(n), seq, portid, cb, data);
    if (rc == MNL_CB_ERROR)
      return -errno;
    if (rc == MNL_CB_STOP)
      return 0;
  }
}

int on_family(const nlmsghdr *nlh, void *data) {
  auto *id = static_cast<int *>(data);
  // mnl_attr_for_each is a C macro with an implicit void* conversion; walk the attributes by hand.
  const auto *attr = static_cast<const nlattr *>(mnl_nlmsg_get_payload_offset(nlh, sizeof(genlmsghdr)));
  const auto *end = static_cast<const char *>(mnl_nlmsg_get_payload_tail(nlh));
  while (mnl_attr_ok(attr, static_cast<int>(end - reinterpret_cast<const char *>(attr)))) {
    if (mnl_attr_get_type(attr) == CTRL_ATTR_FAMILY_ID)
      *id = mnl_attr_get_u16(attr);
    attr = mnl_attr_next(attr);
  }
  return MNL_CB_OK;
}

nlmsghdr *start_genl(char *buf, int type, std::uint8_t cmd, std::uint8_t version, unsigned flags) {
  nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = static_cast<std::uint16_t>(type);
  nlh->nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | flags);
  nlh->nlmsg_seq = static_cast<std::uint32_t>(::time(nullptr));
  auto *g = static_cast<genlmsghdr *>(mnl_nlmsg_put_extra_header(nlh, sizeof(genlmsghdr)));
  g->cmd = cmd;
  g->version = version;
  return nlh;
}

int vdpa_family(mnl_socket *s) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr *nlh = start_genl(buf.data(), GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, NLM_F_ACK);
  mnl_attr_put_strz(nlh, CTRL_ATTR_FAMILY_NAME, VDPA_GENL_NAME);
  int id = -1;
  const int rc = transact(s, nlh, on_family, &id);
  if (rc < 0 || id < 0)
    throw std::runtime_error("the kernel has no vDPA netlink family (is the vdpa module loaded?)");
  return id;
}

void vdpa_command(std::uint8_t cmd, const std::string &name, const std::string *mgmtdev) {
  Socket s = open_genl();
  const int family = vdpa_family(s.get());
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr *nlh = start_genl(buf.data(), family, cmd, VDPA_GENL_VERSION, NLM_F_ACK);
  if (mgmtdev)
    mnl_attr_put_strz(nlh, VDPA_ATTR_MGMTDEV_DEV_NAME, mgmtdev->c_str());
  mnl_attr_put_strz(nlh, VDPA_ATTR_DEV_NAME, name.c_str());
  const int rc = transact(s.get(), nlh, nullptr, nullptr);
  if (rc < 0) {
    std::string what = std::string(cmd == VDPA_CMD_DEV_NEW ? "vdpa dev add " : "vdpa dev del ") + name;
    if (-rc == EPERM)
      what += " (needs CAP_NET_ADMIN)";
    else if (-rc == EEXIST)
      what += " (a vDPA device of that name exists)";
    else if (-rc == ENODEV && cmd == VDPA_CMD_DEV_DEL)
      what += " (no such vDPA device)";
    throw std::runtime_error(errno_message(what, -rc));
  }
}

void write_sysfs(const std::string &path, const std::string &value) {
  std::ofstream f(path);
  f << value;
  f.flush();
  if (!f)
    throw std::runtime_error("cannot write '" + value + "' to " + path + ": " + errno_text(errno));
}

} // namespace

const char *driver_name(Driver d) noexcept { return d == Driver::vhost_vdpa ? "vhost_vdpa" : "virtio_vdpa"; }

void add_device(const std::string &name, const std::string &mgmtdev) { vdpa_command(VDPA_CMD_DEV_NEW, name, &mgmtdev); }

void del_device(const std::string &name) { vdpa_command(VDPA_CMD_DEV_DEL, name, nullptr); }

bool device_exists(const std::string &name) {
  std::error_code ec;
  return fs::exists(kBus + "/devices/" + name, ec);
}

std::optional<std::string> bound_driver(const std::string &name) {
  std::error_code ec;
  const fs::path link = fs::read_symlink(kBus + "/devices/" + name + "/driver", ec);
  if (ec)
    return std::nullopt;
  return link.filename().string();
}

void bind_driver(const std::string &name, Driver driver) {
  const std::string want = driver_name(driver);
  if (bound_driver(name) == want)
    return;
  std::error_code ec;
  if (!fs::exists(kBus + "/drivers/" + want, ec))
    throw std::runtime_error("vDPA bus driver " + want + " is not loaded (modprobe " + want + ")");
  if (auto current = bound_driver(name))
    write_sysfs(kBus + "/drivers/" + *current + "/unbind", name);
  write_sysfs(kBus + "/devices/" + name + "/driver_override", want);
  write_sysfs(kBus + "/drivers/" + want + "/bind", name);
}

std::optional<std::string> block_device(const std::string &name) {
  std::error_code ec;
  for (const auto &virtio : fs::directory_iterator(fs::path(kBus) / "devices" / name, ec)) {
    if (virtio.path().filename().string().rfind("virtio", 0) != 0)
      continue;
    for (const auto &blk : fs::directory_iterator(virtio.path() / "block", ec))
      return blk.path().filename().string();
  }
  return std::nullopt;
}

std::optional<std::string> vhost_device(const std::string &name) {
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(fs::path(kBus) / "devices" / name, ec)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("vhost-vdpa-", 0) == 0)
      return f;
  }
  return std::nullopt;
}

} // namespace vb::vdpa
