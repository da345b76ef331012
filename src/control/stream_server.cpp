#include "control/stream_server.h"

#include "common/errors.h"
#include "common/log.h"

#include <algorithm>
#include <cerrno>
#include <event2/event.h>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

namespace vb::control {

using namespace std::chrono_literals;

struct StreamServer::Connection {
  enum class Phase { reading, writing, lingering };

  Connection(StreamServer &server, int socket_fd)
      : fd(socket_fd),
        watch(server.loop_, socket_fd, [&server, this](short ev) { server.on_connection_event(this, ev); }),
        timer(server.loop_, [&server, this] { server.on_timeout(this); }) {}

  int fd;
  Phase phase = Phase::reading;
  bool peer_eof = false; // the client shut down its side: nothing more will arrive
  std::string input;
  std::string output;
  std::size_t sent = 0;
  bool deferred = false;                                  // the reply comes through defer_reply()
  std::shared_ptr<char> alive = std::make_shared<char>(); // reset when closed
  IoWatch watch;
  Timer timer;
};

StreamServer::StreamServer(EventLoop &loop, int listen_fd, ServerLimits limits, Protocol protocol, std::string name)
    : loop_(loop), listen_fd_(listen_fd), limits_(limits), protocol_(std::move(protocol)), name_(std::move(name)),
      listen_watch_(loop, listen_fd, [this](short) { on_accept(); }),
      accept_retry_(loop, [this] { update_accepting(); }), reap_(loop, [this] { closed_.clear(); }) {
  if (limits_.max_clients == 0)
    limits_.max_clients = 1;
  if (limits_.max_request_bytes == 0)
    limits_.max_request_bytes = 1;
  listen_watch_.set_events(EV_READ);
}

StreamServer::~StreamServer() {
  listen_watch_.set_events(0);
  for (auto &c : connections_) {
    c->watch.set_events(0);
    ::close(c->fd);
  }
  ::close(listen_fd_);
}

void StreamServer::update_accepting() noexcept {
  if (accept_retry_.pending())
    return;
  listen_watch_.set_events(connections_.size() < limits_.max_clients ? EV_READ : 0);
}

void StreamServer::on_accept() noexcept {
  while (connections_.size() < limits_.max_clients) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: the client stays in the backlog; a level-triggered
      // watch would spin on it, so look again a little later.
      VB_LOG_WARN("%s: accept: %s (trying again in 100 ms)", name_.c_str(), errno_text(errno));
      listen_watch_.set_events(0);
      accept_retry_.arm(100ms);
      return;
    }
    auto c = std::make_unique<Connection>(*this, fd);
    c->watch.set_events(EV_READ);
    c->timer.arm(limits_.idle_timeout);
    connections_.push_back(std::move(c));
  }
  update_accepting();
}

void StreamServer::on_connection_event(Connection *c, short events) noexcept {
  if (c->phase == Connection::Phase::writing) {
    if (events & EV_WRITE)
      write_some(c);
    return;
  }
  if (events & EV_READ)
    on_readable(c);
}

void StreamServer::on_readable(Connection *c) noexcept {
  // One read per callback: the watch is level-triggered, so a client that keeps sending cannot
  // hold the loop.
  char buf[4096];
  ssize_t n = 0;
  do
    n = ::recv(c->fd, buf, sizeof buf, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      close(c);
    return;
  }
  if (c->phase == Connection::Phase::lingering) {
    if (n == 0)
      close(c);
    return;
  }
  const auto got = static_cast<std::size_t>(n);
  const std::size_t room = limits_.max_request_bytes - c->input.size();
  c->input.append(buf, std::min(got, room));
  const bool overflow = got > room;
  if (n == 0)
    c->peer_eof = true;

  std::string reply;
  current_ = c;
  const bool complete = protocol_.on_input(c->input, c->peer_eof, reply);
  current_ = nullptr;
  if (complete && c->deferred) {
    c->watch.set_events(0);
    c->timer.cancel();
  } else if (complete) {
    start_reply(c, std::move(reply));
  } else if (overflow || c->input.size() >= limits_.max_request_bytes) {
    VB_LOG_DEBUG("%s: request longer than %zu bytes", name_.c_str(), limits_.max_request_bytes);
    start_reply(c, protocol_.on_oversize());
  } else if (c->peer_eof) {
    close(c);
  }
}

StreamServer::Later StreamServer::defer_reply() {
  if (!current_)
    throw std::logic_error("StreamServer::defer_reply() outside on_input");
  Connection *c = current_;
  Later later = [this, c, conn = std::weak_ptr<char>(c->alive),
                 server = std::weak_ptr<char>(alive_)](std::string reply) {
    if (server.expired() || conn.expired() || c->phase != Connection::Phase::reading)
      return;
    start_reply(c, std::move(reply));
  };
  c->deferred = true; // last: if making `later` threw, the request is answered with an error now
  return later;
}

void StreamServer::start_reply(Connection *c, std::string reply) noexcept {
  c->phase = Connection::Phase::writing;
  c->output = std::move(reply);
  c->sent = 0;
  std::string().swap(c->input);
  c->watch.set_events(0);
  c->timer.arm(limits_.idle_timeout);
  write_some(c);
}

void StreamServer::write_some(Connection *c) noexcept {
  bool progress = false;
  while (c->sent < c->output.size()) {
    const ssize_t n = ::send(c->fd, c->output.data() + c->sent, c->output.size() - c->sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (progress)
          c->timer.arm(limits_.idle_timeout); // a slow reader is fine as long as it reads
        c->watch.set_events(EV_WRITE);
        return;
      }
      close(c); // EPIPE, ECONNRESET: the client went away
      return;
    }
    c->sent += static_cast<std::size_t>(n);
    progress = true;
  }
  std::string().swap(c->output);
  if (c->peer_eof) {
    close(c);
    return;
  }
  // Half-close, then wait for the client's close: closing with its input unread could reset
  // the connection and destroy the reply in flight.
  ::shutdown(c->fd, SHUT_WR);
  c->phase = Connection::Phase::lingering;
  c->watch.set_events(EV_READ);
  c->timer.arm(limits_.idle_timeout);
}

void StreamServer::on_timeout(Connection *c) noexcept {
  VB_LOG_DEBUG("%s: client timed out (%s)", name_.c_str(),
               c->phase == Connection::Phase::reading   ? "no complete request"
               : c->phase == Connection::Phase::writing ? "not reading the reply"
                                                        : "not closing");
  close(c);
}

void StreamServer::close(Connection *c) noexcept {
  c->watch.set_events(0);
  c->timer.cancel();
  ::close(c->fd);
  c->fd = -1;
  c->alive.reset(); // a deferred reply for it does nothing now
  const auto it = std::find_if(connections_.begin(), connections_.end(), [c](const auto &p) { return p.get() == c; });
  if (it != connections_.end()) {
    closed_.push_back(std::move(*it));
    connections_.erase(it);
  }
  reap_.schedule();
  update_accepting();
}

} // namespace vb::control
