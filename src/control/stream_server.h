// The connection engine shared by the control socket and the metrics listener: accepts on a
// listening socket, reads one request per connection, writes one reply as the socket drains,
// then closes. Never blocks the loop; a protocol only turns request bytes into a reply.
//
// Per connection: the request must be complete within limits.idle_timeout of the accept and
// within limits.max_request_bytes; the reply may be of any size, and the connection lives as long
// as the client keeps taking it (the timeout restarts whenever some of it is sent). After the
// reply the server shuts down its side and discards input until the client closes (so that a
// close with unread input cannot reset the connection under the reply), for at most
// idle_timeout again. With limits.max_clients connections open, accepting pauses: further
// clients wait in the listen backlog rather than being refused.
//
// Threading: everything on the loop thread (construction and destruction may also happen while
// the loop is not running). Lifetime: must outlive nothing; destroying it closes every connection.
#pragma once

#include "event/event_loop.h"

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace vb::control {

struct ServerLimits {
  std::size_t max_request_bytes = 4096; // the request (line or HTTP head), terminator included
  std::chrono::milliseconds idle_timeout{5000};
  unsigned max_clients = 16;
};

class StreamServer {
public:
  struct Protocol {
    // Called after every read with the request bytes so far (at most max_request_bytes) and
    // eof when the client has shut down its side. Returns true with reply set once the request
    // is complete (or malformed); false to wait for more (with eof: close without a reply).
    // Runs on the loop thread; must not throw.
    std::function<bool(std::string_view input, bool eof, std::string &reply)> on_input;
    // The reply to a request that reaches max_request_bytes without being complete.
    std::function<std::string()> on_oversize;
  };

  // Takes ownership of listen_fd (bound, listening, non-blocking, close-on-exec). name is for logs.
  StreamServer(EventLoop &loop, int listen_fd, ServerLimits limits, Protocol protocol, std::string name);
  ~StreamServer();
  StreamServer(const StreamServer &) = delete;
  StreamServer &operator=(const StreamServer &) = delete;

  // A reply given later: call it once, on the loop thread. Calling it after the connection (or
  // the server) is gone does nothing.
  using Later = std::function<void(std::string reply)>;
  // Only from within Protocol::on_input (which then returns true with reply left empty): the
  // request's reply comes later, through the returned function. Until then the connection waits
  // with no timeout of its own (the client has its own).
  Later defer_reply();

  int listen_fd() const noexcept { return listen_fd_; }
  // Open connections, lingering ones included.
  std::size_t clients() const noexcept { return connections_.size(); }

private:
  struct Connection;
  void on_accept() noexcept;
  void update_accepting() noexcept;
  void on_connection_event(Connection *c, short events) noexcept;
  void on_readable(Connection *c) noexcept;
  void on_timeout(Connection *c) noexcept;
  void start_reply(Connection *c, std::string reply) noexcept;
  void write_some(Connection *c) noexcept;
  void close(Connection *c) noexcept;

  EventLoop &loop_;
  int listen_fd_;
  ServerLimits limits_;
  Protocol protocol_;
  std::string name_;
  IoWatch listen_watch_;
  Timer accept_retry_; // after EMFILE and the like: try accepting again later, not in a busy loop
  Deferred reap_;      // frees closed connections outside their own callbacks
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<std::unique_ptr<Connection>> closed_;
  Connection *current_ = nullptr; // the connection whose on_input runs, for defer_reply()
  std::shared_ptr<char> alive_ = std::make_shared<char>();
};

} // namespace vb::control
