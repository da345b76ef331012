#include "control/control_server.h"
#include "common/unique_fd.h"

#include "common/errors.h"
#include "common/log.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <stdexcept>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <utility>

namespace vb::control {
namespace {

using Fd = UniqueFd;

[[noreturn]] void fail(const std::string &what) { throw std::runtime_error(errno_message(what, errno)); }

sockaddr_un unix_address(const std::string &path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    throw std::runtime_error("control socket path \"" + path + "\" must be 1 to " +
                             std::to_string(sizeof addr.sun_path - 1) + " bytes long");
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

enum class Existing { none, stale, live };

// Whether something listens on path: a socket file whose listener died refuses connections.
Existing probe(const std::string &path, const sockaddr_un &addr) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT)
      return Existing::none;
    fail("stat " + path);
  }
  if (!S_ISSOCK(st.st_mode))
    throw std::runtime_error(path + " exists and is not a socket; not replacing it");
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0)
    fail("socket(AF_UNIX)");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr *>(&addr), sizeof addr) == 0)
    return Existing::live;
  switch (errno) {
  case EAGAIN: // its backlog is full: it is alive
  case EINPROGRESS:
    return Existing::live;
  case ECONNREFUSED:
    return Existing::stale;
  case ENOENT:
    return Existing::none;
  default:
    fail("connect " + path);
  }
}

std::string trim(std::string_view s) {
  const char *blanks = " \t\r\n";
  const auto b = s.find_first_not_of(blanks);
  if (b == std::string_view::npos)
    return {};
  return std::string(s.substr(b, s.find_last_not_of(blanks) - b + 1));
}

// A client's word, safe to echo: printable ASCII only, bounded.
std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64))
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 64)
    out += "...";
  return out;
}

std::string reply(ControlServer::Status status, std::string text) {
  if (!text.empty() && text.back() != '\n')
    text += '\n';
  switch (status) {
  case ControlServer::Status::ok:
    return "ok\n" + text;
  case ControlServer::Status::unhealthy:
    return "unhealthy\n" + text;
  case ControlServer::Status::error:
    break;
  }
  return "error\n" + text;
}

std::string reply(bool ok, std::string text) {
  return reply(ok ? ControlServer::Status::ok : ControlServer::Status::error, std::move(text));
}

} // namespace

ControlServer::ControlServer(EventLoop &loop, std::string socket_path, ServerLimits limits)
    : path_(std::move(socket_path)) {
  const sockaddr_un addr = unix_address(path_);

  // Two daemons starting together must not both find the socket stale and replace each other's.
  const std::string lock_path = path_ + ".lock";
  Fd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (lock.get() < 0)
    fail("open " + lock_path);
  while (::flock(lock.get(), LOCK_EX) != 0)
    if (errno != EINTR)
      fail("flock " + lock_path);

  switch (probe(path_, addr)) {
  case Existing::live:
    throw std::runtime_error("another vduse-bridge is running (its control socket " + path_ + " answers)");
  case Existing::stale:
    VB_LOG_INFO("replacing stale control socket %s (nothing answers on it)", path_.c_str());
    if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
      fail("unlink stale " + path_);
    break;
  case Existing::none:
    break;
  }

  Fd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (sock.get() < 0)
    fail("socket(AF_UNIX)");
  // The socket inode's mode becomes the file's at bind (minus the umask): 0600 from the first
  // instant, with no umask change, which would affect every thread.
  if (::fchmod(sock.get(), 0600) != 0)
    fail("fchmod control socket");
  if (::bind(sock.get(), reinterpret_cast<const sockaddr *>(&addr), sizeof addr) != 0) {
    if (errno == EADDRINUSE)
      throw std::runtime_error("another vduse-bridge is running (it created its control socket " + path_ +
                               " just now)");
    fail("bind " + path_);
  }
  try {
    if (::chmod(path_.c_str(), 0600) != 0) // exactly 0600, whatever the umask took away
      fail("chmod " + path_);
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0)
      fail("stat " + path_);
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    if (::listen(sock.get(), 64) != 0)
      fail("listen " + path_);
    StreamServer::Protocol protocol{
        [this](std::string_view input, bool eof, std::string &out) { return on_input(input, eof, out); },
        [max = limits.max_request_bytes] {
          return reply(false, "request longer than " + std::to_string(max) + " bytes");
        }};
    server_ = std::make_unique<StreamServer>(loop, sock.get(), limits, std::move(protocol), "control " + path_);
    sock.release();
  } catch (...) {
    ::unlink(path_.c_str());
    throw;
  }
}

ControlServer::~ControlServer() {
  server_.reset();
  // A successor may already have replaced the file (after deciding this server was stale).
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(path_.c_str());
}

void ControlServer::add_command(const std::string &name, Handler handler) {
  handlers_[name] = [handler = std::move(handler)](const std::string &command, const Reply &answer) {
    bool ok = true;
    std::string text = handler(command, ok);
    answer(ok ? Status::ok : Status::error, text);
  };
}

void ControlServer::add_async_command(const std::string &name, AsyncHandler handler) {
  handlers_[name] = std::move(handler);
}

bool ControlServer::on_input(std::string_view input, bool eof, std::string &out) noexcept {
  const auto newline = input.find('\n');
  if (newline == std::string_view::npos && (!eof || input.empty()))
    return false;
  out = dispatch(trim(input.substr(0, newline)));
  return true;
}

std::string ControlServer::dispatch(const std::string &line) noexcept {
  try {
    if (line.empty())
      return reply(false, "empty command (\"help\" lists the commands)");
    const std::string word = line.substr(0, line.find_first_of(" \t"));
    const auto it = handlers_.find(word);
    if (it == handlers_.end()) {
      std::string names;
      for (const auto &[name, h] : handlers_)
        names += name + ", ";
      if (word == "help")
        return reply(true, "commands: " + names + "help");
      return reply(false, "unknown command \"" + printable(word) + "\" (commands: " + names + "help)");
    }
    // Answered at once unless the handler keeps the reply for later.
    struct Pending {
      std::string now;
      bool answered = false;
      bool deferred = false;
      StreamServer::Later later;
    };
    auto pending = std::make_shared<Pending>();
    const Reply answer = [pending](Status status, const std::string &text) {
      if (pending->answered)
        return; // once
      pending->answered = true;
      if (!pending->deferred)
        pending->now = reply(status, text);
      else if (pending->later)
        std::exchange(pending->later, nullptr)(reply(status, text));
    };
    it->second(line, answer);
    if (pending->answered)
      return pending->now;
    pending->deferred = true;
    pending->later = server_->defer_reply();
    return {};
  } catch (const std::exception &e) {
    return reply(false, e.what());
  } catch (...) {
    return reply(false, "internal error");
  }
}

} // namespace vb::control
