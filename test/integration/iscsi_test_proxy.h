// What the iSCSI integration tests share: small helpers, and a TCP proxy in front of tgtd, one
// path to the target that a test can rewrite (a unit attention), freeze (a network that
// delivers late) or cut.
#pragma once

#include "common/log.h"
#include "event/event_loop.h"
#include "iscsi/iscsi_options.h"
#include "test_support.h"
#include "vduse-bridge/backend.h"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace vb::test {

// Set up once per test program: VB_TEST_DEBUG=1 shows the backend's and libiscsi's debug
// messages; SIGPIPE is ignored as the daemon does (libiscsi writes to sockets a cut path closed:
// EPIPE, not death).
inline const bool iscsi_test_setup = [] {
  if (std::getenv("VB_TEST_DEBUG"))
    vb::set_log_level(vb::LogLevel::debug);
  (void)::signal(SIGPIPE, SIG_IGN);
  return true;
}();

inline bool have_tgtd() { return find_program("tgtd") && find_program("tgtadm"); }
inline constexpr const char *kNoTgtd = "tgtd/tgtadm not installed (package tgt; scripts/install-deps installs it)";

inline void run_for(vb::EventLoop &loop, std::chrono::milliseconds duration) {
  bool expired = false;
  vb::Timer deadline(loop, [&] { expired = true; });
  deadline.arm(duration);
  while (!expired)
    loop.run_once(true);
}

inline vb::Request rw(vb::Op op, std::uint64_t offset, std::vector<char> &buf, iovec &iov) {
  iov = {buf.data(), buf.size()};
  return {op, offset, buf.size(), &iov, 1};
}

inline vb::IscsiOptions options_for(const std::string &uri) {
  vb::IscsiOptions o;
  o.uri = uri;
  o.initiator_name = "iqn.2026-11.org.vduse-bridge.test:initiator";
  o.reconnect_timeout = std::chrono::seconds(20);
  o.request_timeout = std::chrono::seconds(10);
  return o;
}

inline std::vector<char> pattern(std::size_t size, unsigned seed) {
  std::vector<char> v(size);
  for (std::size_t i = 0; i < size; ++i)
    v[i] = static_cast<char>((i * 131 + seed * 7 + i / 4096) & 0xff);
  return v;
}

// The backing file's bytes: what tgtd stored, not what it answers.
inline std::vector<char> stored(const std::string &file, std::uint64_t offset, std::size_t length) {
  std::ifstream in(file, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<char> out(length);
  in.read(out.data(), static_cast<std::streamsize>(length));
  REQUIRE(in.good());
  return out;
}

// The TCP port tgt listens on.
inline std::uint16_t port_of(const TgtdServer &tgt) {
  const std::string portal = tgt.portal();
  return static_cast<std::uint16_t>(std::stoi(portal.substr(portal.rfind(':') + 1)));
}

// A TCP proxy between the initiator and tgtd that can turn the next GOOD SCSI Response PDU (a
// write's or a flush's; reads end with a Data-In PDU instead) into CHECK CONDITION with UNIT
// ATTENTION, CAPACITY DATA HAS CHANGED: what a SAN array says after a LUN was resized, which
// tgtd never says. Everything else passes through unchanged (no digests are negotiated).
// freeze() stops the connections it has from forwarding what the initiator sends (kept, and
// the link to the target kept open even if the initiator goes away); release() sends it late:
// a network that delivers a dead session's command after its successor's.
class UnitAttentionProxy {
public:
  explicit UnitAttentionProxy(std::uint16_t upstream_port) : upstream_port_(upstream_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listen_fd_ >= 0);
    sockaddr_in addr = loopback(0);
    socklen_t len = sizeof addr;
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listen_fd_, 16) == 0);
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
    REQUIRE(::pipe2(stop_, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) == 0);
    thread_ = std::thread([this] { run(); });
  }
  ~UnitAttentionProxy() {
    (void)!::write(stop_[1], "x", 1);
    thread_.join();
    for (const Link &l : links_) {
      if (l.initiator >= 0)
        ::close(l.initiator);
      ::close(l.target);
    }
    ::close(listen_fd_);
    ::close(stop_[0]);
    ::close(stop_[1]);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }
  UnitAttentionProxy(const UnitAttentionProxy &) = delete;
  UnitAttentionProxy &operator=(const UnitAttentionProxy &) = delete;

  std::uint16_t port() const { return port_; }
  // The next GOOD SCSI Response becomes the unit attention.
  void arm() { armed_ = true; }
  unsigned injected() const { return injected_; }
  // Returns once the proxy thread has frozen every link: a write submitted after freeze()
  // returns is held, never forwarded (without the wait a write could race past the freeze).
  void freeze() {
    freeze_ = true;
    poke();
    while (freeze_)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void release() {
    release_ = true;
    poke();
  }
  // A path cut: every link is closed now, and connections are closed as soon as they are
  // accepted until restore(). Returns once the links are gone.
  void cut() {
    cut_ = true;
    cut_request_ = true;
    poke();
    while (cut_request_)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void restore() { cut_ = false; }
  // New connections are closed as they are accepted (the portal is gone) until restore();
  // the links there are, frozen ones too, stay.
  void refuse_new() { cut_ = true; }
  // Bytes the initiator sent that went on to the target (which path carried the I/O).
  std::size_t forwarded() const { return forwarded_; }
  // After release(): bytes delivered late, and frozen links the target had closed meanwhile.
  std::size_t released_bytes() const { return released_bytes_; }
  unsigned released_to_closed() const { return released_to_closed_; }
  bool released() const { return !release_; }

private:
  struct Link {
    int initiator = -1, target = -1;
    std::vector<unsigned char> from_target; // bytes of an incomplete PDU
    bool frozen = false;
    std::vector<unsigned char> to_target; // held while frozen
  };
  void poke() { (void)!::write(wake_[1], "x", 1); }
  // Sends what frozen links held; false if the target had closed the link.
  bool flush_frozen(Link &l) {
    l.frozen = false;
    const bool ok = send_all(l.target, l.to_target.data(), l.to_target.size());
    if (ok)
      released_bytes_ += l.to_target.size();
    l.to_target.clear();
    return ok;
  }

  static sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    return addr;
  }
  static bool send_all(int fd, const unsigned char *p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

  // Forwards the complete PDUs in l.from_target to the initiator, rewriting one if armed.
  bool forward_pdus(Link &l) {
    auto &b = l.from_target;
    std::size_t at = 0;
    while (b.size() - at >= 48) {
      const unsigned char *h = b.data() + at;
      const std::size_t data = (std::size_t{h[5]} << 16) | (std::size_t{h[6]} << 8) | h[7];
      const std::size_t total = 48 + std::size_t{h[4]} * 4 + ((data + 3) & ~std::size_t{3});
      if (b.size() - at < total)
        break;
      // SCSI Response (0x21), no AHS, command completed (response 0) with status GOOD.
      if (armed_ && (h[0] & 0x3f) == 0x21 && h[4] == 0 && h[2] == 0 && h[3] == 0) {
        armed_ = false;
        ++injected_;
        std::vector<unsigned char> pdu(h, h + 48);
        pdu[3] = 0x02; // CHECK CONDITION
        // SenseLength, then fixed-format sense: UNIT ATTENTION, ASC 0x2A ASCQ 0x09.
        const unsigned char sense[20] = {0x00, 18, 0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2a, 0x09, 0, 0, 0, 0};
        pdu[5] = 0;
        pdu[6] = 0;
        pdu[7] = sizeof sense;
        pdu.insert(pdu.end(), sense, sense + sizeof sense);
        if (!send_all(l.initiator, pdu.data(), pdu.size()))
          return false;
      } else if (!send_all(l.initiator, h, total)) {
        return false;
      }
      at += total;
    }
    b.erase(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(at));
    return true;
  }

  void run() {
    for (;;) {
      if (cut_request_) {
        for (const Link &l : links_) {
          if (l.initiator >= 0)
            ::close(l.initiator);
          ::close(l.target);
        }
        links_.clear();
        cut_request_ = false;
      }
      if (freeze_) {
        for (Link &l : links_)
          l.frozen = true;
        freeze_ = false;
      }
      if (release_) {
        for (std::size_t i = links_.size(); i-- > 0;) {
          Link &l = links_[i];
          if (!l.frozen)
            continue;
          // The target closed it already (a session reinstated): what was held can only fail.
          pollfd probe{l.target, POLLIN, 0};
          char peek;
          const bool closed = ::poll(&probe, 1, 0) == 1 && ::recv(l.target, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
          if (closed || !flush_frozen(l)) {
            ++released_to_closed_;
            if (l.initiator >= 0)
              ::close(l.initiator);
            ::close(l.target);
            links_.erase(links_.begin() + static_cast<std::ptrdiff_t>(i));
          }
        }
        release_ = false;
      }
      std::vector<pollfd> fds{{stop_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      for (const Link &l : links_) {
        fds.push_back({l.initiator, POLLIN, 0}); // -1 (initiator gone) is ignored by poll
        fds.push_back({l.target, static_cast<short>(l.frozen ? 0 : POLLIN), 0});
      }
      fds.push_back({wake_[0], POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR)
          continue;
        return;
      }
      if (fds[0].revents)
        return;
      if (fds.back().revents) {
        char drain[64];
        while (::read(wake_[0], drain, sizeof drain) > 0) {
        }
      }
      if (fds[1].revents & POLLIN) {
        const int in = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        const int out = in >= 0 && !cut_ ? ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
        sockaddr_in addr = loopback(upstream_port_);
        if (out >= 0 && ::connect(out, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0) {
          links_.push_back({in, out, {}, false, {}});
        } else {
          if (in >= 0)
            ::close(in);
          if (out >= 0)
            ::close(out);
        }
      }
      // Links accepted just now have no entry in fds yet.
      std::vector<bool> dead(links_.size(), false);
      for (std::size_t i = 0; 2 + 2 * i + 2 < fds.size(); ++i) {
        Link &l = links_[i];
        unsigned char buf[65536];
        if (fds[2 + 2 * i].revents) {
          const ssize_t n = ::recv(l.initiator, buf, sizeof buf, 0);
          if (l.frozen) {
            if (n > 0) {
              l.to_target.insert(l.to_target.end(), buf, buf + n);
            } else {
              ::close(l.initiator); // the initiator gave up; the held bytes still go, late
              l.initiator = -1;
            }
            continue;
          }
          dead[i] = n <= 0 || !send_all(l.target, buf, static_cast<std::size_t>(n));
          if (!dead[i])
            forwarded_ += static_cast<std::size_t>(n);
        }
        if (!dead[i] && fds[3 + 2 * i].revents) {
          const ssize_t n = ::recv(l.target, buf, sizeof buf, 0);
          if (n <= 0) {
            dead[i] = true;
          } else {
            l.from_target.insert(l.from_target.end(), buf, buf + n);
            dead[i] = !forward_pdus(l);
          }
        }
      }
      for (std::size_t i = links_.size(); i-- > 0;)
        if (dead[i]) {
          ::close(links_[i].initiator);
          ::close(links_[i].target);
          links_.erase(links_.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }
  }

  std::uint16_t upstream_port_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  int stop_[2] = {-1, -1};
  int wake_[2] = {-1, -1};
  std::atomic<bool> armed_{false};
  std::atomic<bool> freeze_{false};
  std::atomic<bool> release_{false};
  std::atomic<bool> cut_{false};
  std::atomic<bool> cut_request_{false};
  std::atomic<std::size_t> forwarded_{0};
  std::atomic<std::size_t> released_bytes_{0};
  std::atomic<unsigned> released_to_closed_{0};
  std::atomic<unsigned> injected_{0};
  std::vector<Link> links_; // the proxy thread's
  std::thread thread_;
};

// tgt's LUN 1 through proxy.
inline std::string through(const UnitAttentionProxy &proxy, const TgtdServer &tgt) {
  return "iscsi://127.0.0.1:" + std::to_string(proxy.port()) + "/" + tgt.iqn() + "/1";
}

} // namespace vb::test
