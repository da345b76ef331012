#include "daemon/version.h"

#include <cstdint>
#include <event2/event.h>
#include <fcntl.h>
#include <libnbd.h>
#include <linux/vduse.h>
#include <sys/ioctl.h>
#include <unistd.h>

// Set by src/CMakeLists.txt: git describe at configure time, pkg-config's versions.
#ifndef VDUSE_BRIDGE_VERSION
#define VDUSE_BRIDGE_VERSION "unknown"
#endif
#ifndef VDUSE_BRIDGE_GIT_COMMIT
#define VDUSE_BRIDGE_GIT_COMMIT "unknown"
#endif
#ifndef VB_BUILT_LIBNBD
#define VB_BUILT_LIBNBD "unknown"
#endif
#ifndef VB_BUILT_LIBISCSI
#define VB_BUILT_LIBISCSI "unknown"
#endif
#ifndef VB_BUILT_LIBURING
#define VB_BUILT_LIBURING "unknown"
#endif
#ifndef VB_BUILT_LIBEVENT
#define VB_BUILT_LIBEVENT "unknown"
#endif

namespace vb {

std::string release_version() { return VDUSE_BRIDGE_VERSION; }
std::string git_commit() { return VDUSE_BRIDGE_GIT_COMMIT; }

std::string version_text(const std::string &vduse_control) {
  std::string out = "vduse-bridge " VDUSE_BRIDGE_VERSION " (git " VDUSE_BRIDGE_GIT_COMMIT ")\n";
  // libnbd tells its version only through a handle: one costs a malloc, no connection.
  std::string nbd = "unknown";
  if (nbd_handle *h = nbd_create()) {
    if (const char *v = nbd_get_version(h))
      nbd = v;
    nbd_close(h);
  }
  out += "libnbd " + nbd + " (built with " VB_BUILT_LIBNBD ")\n";
  out += std::string("libevent ") + event_get_version() + " (built with " VB_BUILT_LIBEVENT ")\n";
  out += "libiscsi built with " VB_BUILT_LIBISCSI "\n"; // no run-time version call
  out += "liburing built with " VB_BUILT_LIBURING "\n"; // likewise (2.3)
  const int fd = ::open(vduse_control.c_str(), O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    std::uint64_t api = 0;
    if (::ioctl(fd, VDUSE_GET_API_VERSION, &api) == 0)
      out += "VDUSE API " + std::to_string(api) + " (kernel)\n";
    ::close(fd);
  }
  return out;
}

} // namespace vb
