// The service manager's readiness protocol (sd_notify(3)), written out rather than linking
// libsystemd for one datagram: when $NOTIFY_SOCKET is set (systemd Type=notify), send it
// "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=..." lines. Without it, nothing happens.
#pragma once

#include <string>

namespace vb {

// Sends state (newline-separated KEY=VALUE lines). Returns false only when a socket is set and
// the send failed; the daemon logs that once and carries on.
bool notify_service_manager(const std::string &state) noexcept;

} // namespace vb
