// What `vduse-bridge --version` prints: the release, the git commit it was built from, and the
// libraries it was built with and runs with.
#pragma once

#include <string>

namespace vb {

// Lines such as
//   vduse-bridge 0.1.0 (git v0.1.0-12-gabcdef0)
//   libnbd 1.14.2 (built with 1.14.2)
//   libevent 2.1.12-stable (built with 2.1.12-stable)
//   libiscsi built with 1.19.0
//   liburing built with 2.3
//   VDUSE API 0 (kernel)
// The kernel's line only where vduse_control (/dev/vduse/control) can be opened.
// The release ("0.1.0") and the commit it was built from ("v0.1.0-12-gabcdef0", "unknown"):
// what the metrics' build_info carries.
std::string release_version();
std::string git_commit();

std::string version_text(const std::string &vduse_control = "/dev/vduse/control");

} // namespace vb
