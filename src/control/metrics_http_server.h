// An HTTP listener for Prometheus scrapes on a loopback TCP address: `GET /metrics` (or HEAD)
// answers 200 with the metrics text (Content-Type text/plain; version=0.0.4), any other
// well-formed request 404, anything else 400; then the connection closes. No authentication,
// so only loopback addresses are accepted. Limits as for the control socket (ServerLimits: the
// request head must fit max_request_bytes and arrive within idle_timeout).
//
// Threading: construct and destroy on the loop thread or while the loop is not running; the
// metrics function runs on the loop thread and must be quick.
#pragma once

#include "control/stream_server.h"
#include "event/event_loop.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <sys/socket.h>

namespace vb::control {

// A parsed listen address: 127.0.0.0/8 as "127.0.0.1:9100", or "[::1]:9100". Port 0 lets the
// kernel pick one (tests).
struct LoopbackAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};
// Throws std::invalid_argument naming the address and what is wrong (the form, the port, or a
// non-loopback host).
LoopbackAddress parse_loopback_address(const std::string &text);

class MetricsHttpServer {
public:
  // Binds (SO_REUSEADDR) and listens on address; throws std::invalid_argument for a bad or
  // non-loopback address, std::runtime_error if it cannot listen. metrics may throw: the
  // scrape then gets 500 with the message.
  MetricsHttpServer(EventLoop &loop, const std::string &address, std::function<std::string()> metrics,
                    ServerLimits limits = {});
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer &) = delete;
  MetricsHttpServer &operator=(const MetricsHttpServer &) = delete;

  // The bound port (the kernel's choice if the address said 0).
  std::uint16_t port() const noexcept { return port_; }
  std::size_t clients() const noexcept { return server_->clients(); }

private:
  bool on_input(std::string_view input, bool eof, std::string &reply) noexcept;

  std::function<std::string()> metrics_;
  std::uint16_t port_ = 0;
  std::unique_ptr<StreamServer> server_;
};

} // namespace vb::control
