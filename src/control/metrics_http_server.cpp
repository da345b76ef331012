#include "control/metrics_http_server.h"

#include "common/errors.h"

#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <netinet/in.h>
#include <stdexcept>
#include <unistd.h>

namespace vb::control {
namespace {

constexpr const char *kContentType = "text/plain; version=0.0.4; charset=utf-8";

std::string response(int code, const char *reason, const char *content_type, const std::string &body, bool head_only) {
  std::string r = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + content_type +
                  "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  if (!head_only)
    r += body;
  return r;
}

std::string plain(int code, const char *reason, const std::string &body) {
  return response(code, reason, "text/plain; charset=utf-8", body, false);
}

} // namespace

LoopbackAddress parse_loopback_address(const std::string &text) {
  const auto bad = [&](const std::string &why) {
    return std::invalid_argument("metrics address \"" + text + "\": " + why);
  };
  std::string host;
  std::string port_text;
  bool v6 = false;
  if (!text.empty() && text[0] == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw bad("expected 127.0.0.1:PORT or [::1]:PORT");
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
    v6 = true;
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon)
      throw bad("expected 127.0.0.1:PORT or [::1]:PORT");
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535)
    throw bad("the port must be a number from 0 to 65535");

  LoopbackAddress a;
  if (v6) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET6, host.c_str(), &sin6.sin6_addr) != 1)
      throw bad("\"" + host + "\" is not an IPv6 address");
    if (!IN6_IS_ADDR_LOOPBACK(&sin6.sin6_addr))
      throw bad("not a loopback address: the metrics endpoint has no authentication, so it listens only on "
                "127.0.0.0/8 or [::1]");
    std::memcpy(&a.storage, &sin6, sizeof sin6);
    a.length = sizeof sin6;
  } else {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &sin.sin_addr) != 1)
      throw bad("\"" + host + "\" is not an IPv4 address (write IPv6 as [::1]:PORT)");
    if ((ntohl(sin.sin_addr.s_addr) >> 24) != 127)
      throw bad("not a loopback address: the metrics endpoint has no authentication, so it listens only on "
                "127.0.0.0/8 or [::1]");
    std::memcpy(&a.storage, &sin, sizeof sin);
    a.length = sizeof sin;
  }
  return a;
}

MetricsHttpServer::MetricsHttpServer(EventLoop &loop, const std::string &address, std::function<std::string()> metrics,
                                     ServerLimits limits)
    : metrics_(std::move(metrics)) {
  LoopbackAddress a = parse_loopback_address(address);
  const int fd = ::socket(a.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    throw std::runtime_error(errno_message("socket for metrics " + address, errno));
  try {
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a.storage.ss_family == AF_INET6)
      ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<const sockaddr *>(&a.storage), a.length) != 0)
      throw std::runtime_error(errno_message("bind metrics address " + address, errno));
    if (::listen(fd, 64) != 0)
      throw std::runtime_error(errno_message("listen on metrics address " + address, errno));
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (::getsockname(fd, reinterpret_cast<sockaddr *>(&bound), &len) != 0)
      throw std::runtime_error(errno_message("getsockname for metrics " + address, errno));
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6 *>(&bound)->sin6_port
                                              : reinterpret_cast<const sockaddr_in *>(&bound)->sin_port);
    StreamServer::Protocol protocol{
        [this](std::string_view input, bool eof, std::string &out) { return on_input(input, eof, out); },
        [] { return plain(431, "Request Header Fields Too Large", "request head too long\n"); }};
    server_ = std::make_unique<StreamServer>(loop, fd, limits, std::move(protocol), "metrics " + address);
  } catch (...) {
    ::close(fd);
    throw;
  }
}

MetricsHttpServer::~MetricsHttpServer() = default;

bool MetricsHttpServer::on_input(std::string_view input, bool eof, std::string &out) noexcept {
  try {
    // The head ends with an empty line; tolerate bare "\n" line ends as HTTP allows.
    auto end = input.find("\r\n\r\n");
    if (end == std::string_view::npos)
      end = input.find("\n\n");
    if (end == std::string_view::npos) {
      if (!eof || input.empty())
        return false;
      out = plain(400, "Bad Request", "incomplete request\n");
      return true;
    }
    std::string_view request_line = input.substr(0, input.find('\n'));
    if (!request_line.empty() && request_line.back() == '\r')
      request_line.remove_suffix(1);
    // METHOD SP TARGET SP HTTP/1.x
    const auto sp1 = request_line.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : request_line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || request_line.substr(sp2 + 1).rfind("HTTP/1.", 0) != 0 ||
        request_line.substr(sp2 + 1).size() != 8) {
      out = plain(400, "Bad Request", "malformed request line\n");
      return true;
    }
    const std::string_view method = request_line.substr(0, sp1);
    std::string_view target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    const bool head = method == "HEAD";
    if ((method != "GET" && !head) || target != "/metrics") {
      out = plain(404, "Not Found", "not found; metrics are at /metrics\n");
      return true;
    }
    try {
      out = response(200, "OK", kContentType, metrics_(), head);
    } catch (const std::exception &e) {
      out = plain(500, "Internal Server Error", std::string(e.what()) + "\n");
    }
    return true;
  } catch (...) {
    out = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    return true;
  }
}

} // namespace vb::control
