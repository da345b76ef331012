// The client side of the control socket, for `vduse-bridge status` and friends.
//
// Threading: blocking (poll with a deadline); any thread, never a loop thread.
#pragma once

#include <chrono>
#include <stdexcept>
#include <string>

namespace vb::control {

inline constexpr const char *kDefaultControlSocket = "/run/vduse-bridge/control.sock";

class ControlError : public std::runtime_error {
public:
  enum class Reason {
    not_running, // nothing listens on the socket (no file, or a stale one)
    unreachable, // cannot connect for another reason (permissions, bad path)
    timeout,     // no complete reply in time
    protocol,    // the reply is not "ok"/"error" + text
    failed,      // the daemon answered "error": what() is its message
  };
  ControlError(Reason reason, const std::string &what) : std::runtime_error(what), reason_(reason) {}
  Reason reason() const noexcept { return reason_; }

private:
  Reason reason_;
};

// Sends command (one line, without "\n") to the daemon listening on socket_path and returns the
// text of an "ok" reply. Throws ControlError: "no vduse-bridge is running (nothing listens on
// PATH)", "cannot connect to PATH: Permission denied", "no reply from vduse-bridge on PATH within
// 5s", or the daemon's own message for an "error" reply. std::invalid_argument for a command
// holding a newline.
std::string control_request(const std::string &socket_path, const std::string &command,
                            std::chrono::milliseconds timeout = std::chrono::seconds(5));

} // namespace vb::control
