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
    protocol,    // the reply is not "ok"/"error"/"unhealthy" + text
    failed,      // the daemon answered "error": what() is its message
  };
  ControlError(Reason reason, const std::string &what) : std::runtime_error(what), reason_(reason) {}
  Reason reason() const noexcept { return reason_; }

private:
  Reason reason_;
};

// The reply's status line: the command ran ("ok"), failed ("error"), or ran but reports something
// not healthy ("unhealthy": a device waiting for its backend, a backend reconnecting).
enum class ReplyStatus { ok, error, unhealthy };

struct ControlReply {
  ReplyStatus status = ReplyStatus::ok;
  std::string text; // everything after the status line, up to EOF
};

// Sends command (one line, without "\n") to the daemon listening on socket_path and returns its
// reply, whatever its status. timeout bounds the whole exchange; any value is safe (a huge one
// saturates: it waits for ever). Throws ControlError (not_running: "no daemon is listening on
// PATH (is vduse-bridge running?)"; unreachable: "cannot connect to PATH: Permission denied";
// timeout: "no reply from vduse-bridge on PATH within 5s"; protocol), std::invalid_argument for a
// command holding a newline.
ControlReply control_exchange(const std::string &socket_path, const std::string &command,
                              std::chrono::milliseconds timeout);

// As control_exchange, but returns the text of an "ok" or "unhealthy" reply and throws
// ControlError(failed) with the daemon's message for an "error" one.
std::string control_request(const std::string &socket_path, const std::string &command,
                            std::chrono::milliseconds timeout = std::chrono::seconds(5));

// What `vduse-bridge COMMAND` prints and exits with.
struct CommandOutcome {
  int exit_code = 0; // kExitOk, kExitFailed or kExitUnhealthy
  std::string out;   // for stdout: the reply's text (also when unhealthy)
  std::string err;   // for stderr: the daemon's error, or why it could not be asked (one line)
};
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1; // the daemon answered "error", or is not running/unreachable
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnhealthy = 3;

// Runs one exchange and maps it to an outcome; never throws ControlError.
CommandOutcome run_control_command(const std::string &socket_path, const std::string &command,
                                   std::chrono::milliseconds timeout);

// now + timeout, or the clock's end when that does not fit.
std::chrono::steady_clock::time_point saturating_deadline(std::chrono::steady_clock::time_point now,
                                                          std::chrono::milliseconds timeout) noexcept;

} // namespace vb::control
