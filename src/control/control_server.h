// The daemon's control socket: a unix stream socket speaking one command per connection.
//
// Protocol: the client sends one line (at most ServerLimits::max_request_bytes with its "\n"; a
// client that shuts down its side may omit the "\n"), e.g. "status" or "status disk0". The first
// word selects the handler. The server answers with a status line, "ok", "error" or "unhealthy"
// (the command ran, and what it reports is not healthy: a device waiting for its backend, a
// backend reconnecting), then the handler's text (or the error message), and closes: the reply
// ends at EOF. Unknown commands, empty lines and oversize requests get "error". "help" lists the
// commands. An asynchronous handler (reload, add, remove wait for devices) answers later; the
// connection waits for it.
//
// The socket file is created with mode 0600 (only root, or the daemon's user, may talk to it).
// A socket file left by a daemon that died is replaced; one that still answers is not.
//
// Threading: construct, add commands, and destroy on the loop thread, or while the loop is not
// running. Handlers run on the loop thread and must be quick: the loop serves other clients only
// between them.
#pragma once

#include "control/stream_server.h"
#include "event/event_loop.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <sys/types.h>

namespace vb::control {

class ControlServer {
public:
  // command: the whole request line without its "\n" (and "\r"), leading and trailing blanks
  // removed. Set ok = false (it starts true) to answer "error" with the returned text.
  // Exceptions are caught and answered as "error" with their what().
  using Handler = std::function<std::string(const std::string &command, bool &ok)>;
  enum class Status { ok, error, unhealthy };
  // Answers the request: once, on the loop thread, at any time (nothing happens if the client
  // is gone by then).
  using Reply = std::function<void(Status status, const std::string &text)>;
  // May answer at once or later. Exceptions thrown before answering are answered as "error".
  using AsyncHandler = std::function<void(const std::string &command, const Reply &reply)>;

  // Binds and listens on socket_path. Throws std::runtime_error if the path is in use by a live
  // server ("another vduse-bridge is running (its control socket PATH answers)"), exists and is
  // not a socket, is too long, or cannot be bound. Serialises the check-and-replace with other
  // starting daemons through an flock on PATH.lock (left in place).
  ControlServer(EventLoop &loop, std::string socket_path, ServerLimits limits = {});
  // Removes the socket file if it is still the one this server created.
  ~ControlServer();
  ControlServer(const ControlServer &) = delete;
  ControlServer &operator=(const ControlServer &) = delete;

  // name: the first word of a request ("status"). Replaces an earlier handler of that name.
  void add_command(const std::string &name, Handler handler);
  void add_async_command(const std::string &name, AsyncHandler handler);

  const std::string &socket_path() const noexcept { return path_; }
  std::size_t clients() const noexcept { return server_->clients(); }

private:
  bool on_input(std::string_view input, bool eof, std::string &reply) noexcept;
  std::string dispatch(const std::string &line) noexcept;

  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  std::map<std::string, AsyncHandler, std::less<>> handlers_;
  std::unique_ptr<StreamServer> server_;
};

} // namespace vb::control
