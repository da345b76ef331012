#include "control/control_client.h"

#include "common/errors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace vb::control {
namespace {

using Clock = std::chrono::steady_clock;

class Socket {
public:
  Socket() : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) {}
  ~Socket() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  Socket(const Socket &) = delete;
  Socket &operator=(const Socket &) = delete;
  int get() const noexcept { return fd_; }

private:
  int fd_;
};

std::string seconds_text(std::chrono::milliseconds t) {
  if (t.count() % 1000 == 0)
    return std::to_string(t.count() / 1000) + "s";
  return std::to_string(t.count()) + "ms";
}

// Waits for events on fd until deadline; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0)
      return false;
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
    if (rc > 0)
      return true;
    if (rc < 0 && errno != EINTR)
      throw ControlError(ControlError::Reason::unreachable, errno_message("poll", errno));
  }
}

} // namespace

Clock::time_point saturating_deadline(Clock::time_point now, std::chrono::milliseconds timeout) noexcept {
  if (timeout.count() <= 0)
    return now;
  // Compare in milliseconds: converting a huge timeout to the clock's nanoseconds overflows.
  const auto room = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now);
  if (timeout >= room)
    return Clock::time_point::max();
  return now + timeout;
}

ControlReply control_exchange(const std::string &socket_path, const std::string &command,
                              std::chrono::milliseconds timeout) {
  if (command.find('\n') != std::string::npos)
    throw std::invalid_argument("a control command is one line");
  const auto deadline = saturating_deadline(Clock::now(), timeout);
  const auto timed_out = [&] {
    return ControlError(ControlError::Reason::timeout,
                        "no reply from vduse-bridge on " + socket_path + " within " + seconds_text(timeout));
  };

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path)
    throw ControlError(ControlError::Reason::unreachable, "control socket path \"" + socket_path + "\" is too long");
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  Socket sock;
  if (sock.get() < 0)
    throw ControlError(ControlError::Reason::unreachable, errno_message("socket(AF_UNIX)", errno));
  // A unix connect either completes or fails at once; EAGAIN means the backlog is full: retry.
  while (::connect(sock.get(), reinterpret_cast<const sockaddr *>(&addr), sizeof addr) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED)
      throw ControlError(ControlError::Reason::not_running,
                         "no daemon is listening on " + socket_path + " (is vduse-bridge running?)");
    if (errno != EAGAIN && errno != EINTR)
      throw ControlError(ControlError::Reason::unreachable, errno_message("cannot connect to " + socket_path, errno));
    if (Clock::now() >= deadline)
      throw timed_out();
    ::usleep(10'000);
  }

  const std::string line = command + "\n";
  std::size_t sent = 0;
  while (sent < line.size()) {
    const ssize_t n = ::send(sock.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
    } else if (errno == EAGAIN) {
      if (!wait_for(sock.get(), POLLOUT, deadline))
        throw timed_out();
    } else if (errno != EINTR) {
      // The daemon closes early only when it has answered (e.g. a request too long): read that.
      break;
    }
  }
  ::shutdown(sock.get(), SHUT_WR);

  std::string reply;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(sock.get(), buf, sizeof buf, 0);
    if (n > 0) {
      reply.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN) {
      if (!wait_for(sock.get(), POLLIN, deadline))
        throw timed_out();
    } else if (errno != EINTR) {
      if (!reply.empty() && errno == ECONNRESET)
        break;
      throw ControlError(ControlError::Reason::protocol, errno_message("read from " + socket_path, errno));
    }
  }

  const auto newline = reply.find('\n');
  std::string status = reply.substr(0, newline);
  if (status.ends_with('\r'))
    status.pop_back();
  ControlReply out;
  out.text = newline == std::string::npos ? std::string() : reply.substr(newline + 1);
  if (status == "ok")
    out.status = ReplyStatus::ok;
  else if (status == "error")
    out.status = ReplyStatus::error;
  else if (status == "unhealthy")
    out.status = ReplyStatus::unhealthy;
  else if (reply.empty())
    throw ControlError(ControlError::Reason::protocol, "vduse-bridge on " + socket_path + " closed without a reply");
  else
    throw ControlError(ControlError::Reason::protocol,
                       "unexpected reply from " + socket_path + ": \"" + status.substr(0, 80) + "\"");
  return out;
}

std::string control_request(const std::string &socket_path, const std::string &command,
                            std::chrono::milliseconds timeout) {
  ControlReply reply = control_exchange(socket_path, command, timeout);
  if (reply.status != ReplyStatus::error)
    return std::move(reply.text);
  std::string text = std::move(reply.text);
  while (!text.empty() && text.back() == '\n')
    text.pop_back();
  throw ControlError(ControlError::Reason::failed, text.empty() ? "the daemon reported an error" : text);
}

CommandOutcome run_control_command(const std::string &socket_path, const std::string &command,
                                   std::chrono::milliseconds timeout) {
  CommandOutcome o;
  try {
    ControlReply reply = control_exchange(socket_path, command, timeout);
    switch (reply.status) {
    case ReplyStatus::ok:
      o.exit_code = kExitOk;
      o.out = std::move(reply.text);
      break;
    case ReplyStatus::unhealthy:
      o.exit_code = kExitUnhealthy;
      o.out = std::move(reply.text);
      break;
    case ReplyStatus::error:
      o.exit_code = kExitFailed;
      o.err = std::move(reply.text);
      while (!o.err.empty() && o.err.back() == '\n')
        o.err.pop_back();
      if (o.err.empty())
        o.err = "the daemon reported an error";
      o.err = "vduse-bridge: " + o.err + "\n";
      break;
    }
  } catch (const std::exception &e) {
    o.exit_code = kExitFailed;
    o.out.clear();
    o.err = std::string("vduse-bridge: ") + e.what() + "\n";
  }
  return o;
}

} // namespace vb::control
