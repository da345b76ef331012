#include "test_support.h"

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <sstream>
#include <stdexcept>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace vb::test {
namespace {

[[noreturn]] void fail(const std::string &what) { throw std::runtime_error(what); }

std::string errno_text(const std::string &what) { return what + ": " + std::strerror(errno); }

// fork + exec with stdout/stderr redirected; the child dies with us.
pid_t spawn(const std::vector<std::string> &argv, const std::string &log_path) {
  if (argv.empty())
    fail("spawn: empty argv");
  std::vector<char *> args;
  for (const auto &a : argv)
    args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  const char *out = log_path.empty() ? "/dev/null" : log_path.c_str();
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0)
    fail(errno_text("fork"));
  if (pid == 0) {
    // Only async-signal-safe calls from here on.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
      ::_exit(127);
    int fd = ::open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || devnull < 0)
      ::_exit(127);
    ::dup2(devnull, STDIN_FILENO);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

} // namespace

void announce_skip(const std::string &reason) {
  std::printf("VB_SKIP: %s\n", reason.c_str());
  std::fflush(stdout);
}

std::optional<std::string> find_program(const std::string &name) {
  const char *env = std::getenv("PATH");
  std::string path = env ? env : "";
  path += ":/usr/sbin:/sbin:/usr/bin:/bin";
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty())
      continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0)
      return candidate;
  }
  return std::nullopt;
}

bool wait_until(const std::function<bool()> &pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto interval = std::chrono::milliseconds(1);
  for (;;) {
    if (pred())
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(interval);
    interval = std::min(interval * 2, std::chrono::milliseconds(50));
  }
}

TempDir::TempDir() {
  const char *base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/vduse-bridge-test.XXXXXX";
  if (!::mkdtemp(templ.data()))
    fail(errno_text("mkdtemp " + templ));
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ChildProcess::ChildProcess(const std::vector<std::string> &argv, const std::string &log_path) : log_path_(log_path) {
  pid_ = spawn(argv, log_path);
}

ChildProcess::~ChildProcess() { stop(); }

bool ChildProcess::running() {
  if (pid_ <= 0)
    return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    status_ = status;
    pid_ = -1;
    return false;
  }
  return true;
}

int ChildProcess::stop(std::chrono::milliseconds grace) {
  if (!running())
    return status_;
  ::kill(pid_, SIGTERM);
  if (!wait_until([this] { return !running(); }, grace)) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    status_ = -1;
  }
  return status_;
}

int run_command(const std::vector<std::string> &argv, const std::string &log_path) {
  const pid_t pid = spawn(argv, log_path);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      fail(errno_text("waitpid"));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string read_file(const std::string &path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uint16_t free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    fail(errno_text("socket"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0) {
    ::close(fd);
    fail(errno_text("bind 127.0.0.1:0"));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

NbdkitServer::NbdkitServer(const TempDir &dir, const std::vector<std::string> &plugin_args,
                           const std::vector<std::string> &extra_options, const std::string &unix_socket) {
  static int counter = 0;
  const std::string tag = "nbdkit" + std::to_string(counter++);
  socket_ = unix_socket.empty() ? dir.file(tag + ".sock") : unix_socket;
  const std::string pidfile = dir.file(tag + ".pid");
  // -f: stay our child, so the PID we hold is nbdkit's; the pidfile is written only once
  // the socket accepts connections, which is the readiness signal.
  std::vector<std::string> argv{"nbdkit", "-f", "--exit-with-parent", "-P", pidfile};
  if (socket_ != "none") {
    argv.push_back("-U");
    argv.push_back(socket_);
  }
  argv.insert(argv.end(), extra_options.begin(), extra_options.end());
  argv.insert(argv.end(), plugin_args.begin(), plugin_args.end());
  process_.emplace(argv, dir.file(tag + ".log"));
  if (!wait_until([&] { return ::access(pidfile.c_str(), R_OK) == 0 || !process_->running(); }) || !process_->running())
    fail("nbdkit did not start: " + read_file(process_->log_path()));
}

TgtdServer::TgtdServer(const TempDir &dir) : dir_(dir), log_(dir.file("tgtd.log")) {
  // The control "port" only names tgtd's unix socket /var/run/tgtd/socket.N; pick an unused N.
  for (control_ = 1000 + (::getpid() % 30000);; ++control_) {
    struct stat st {};
    if (::stat(("/var/run/tgtd/socket." + std::to_string(control_)).c_str(), &st) != 0)
      break;
  }
  port_ = free_tcp_port();
  start();
}

void TgtdServer::start() {
  const std::string c = std::to_string(control_);
  const std::string sock = "/var/run/tgtd/socket." + c;
  ::unlink(sock.c_str());
  ::unlink((sock + ".lock").c_str());
  process_.reset();
  // Only the loopback portal: never a port on another interface.
  process_.emplace(std::vector<std::string>{"tgtd", "-f", "-C", c, "--iscsi", "portal=" + portal()}, log_);
  // Ready when its management socket answers.
  const bool ready = wait_until([&] {
    return !process_->running() || run_command({"tgtadm", "-C", c, "--mode", "sys", "--op", "show"}) == 0;
  });
  if (!ready || !process_->running())
    fail("tgtd did not start: " + read_file(process_->log_path()));
  if (target_created_) {
    target_created_ = false;
    create_target();
  }
}

TgtdServer::~TgtdServer() {
  if (!process_)
    return;
  if (paused_)
    resume();
  // tgtd ignores SIGTERM by design and refuses to exit while targets exist: delete them,
  // ask it to shut down, and fall back to signals by PID.
  const std::string c = std::to_string(control_);
  if (process_->running()) {
    if (target_created_)
      run_command({"tgtadm", "-C", c, "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1"});
    run_command({"tgtadm", "-C", c, "--mode", "sys", "--op", "delete"});
    if (!wait_until([&] { return !process_->running(); }, std::chrono::seconds(5)))
      process_->stop(std::chrono::milliseconds(100));
  }
  const std::string sock = "/var/run/tgtd/socket." + c;
  ::unlink(sock.c_str());
  ::unlink((sock + ".lock").c_str());
}

void TgtdServer::tgtadm(const std::vector<std::string> &args) {
  std::vector<std::string> argv{"tgtadm", "-C", std::to_string(control_), "--lld", "iscsi"};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string log = dir_.file("tgtadm.log");
  if (run_command(argv, log) != 0)
    fail("tgtadm failed: " + read_file(log));
}

void TgtdServer::add_lun_to_target(const Lun &l) {
  tgtadm({"--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", std::to_string(l.lun), "--backing-store",
          backing_file(l.lun), "--blocksize", std::to_string(l.block_size)});
  if (!l.params.empty())
    tgtadm({"--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", std::to_string(l.lun), "--params",
            l.params});
}

void TgtdServer::create_target() {
  if (target_created_)
    return;
  tgtadm({"--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn()});
  tgtadm({"--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"});
  target_created_ = true;
  for (const Lun &l : luns_)
    add_lun_to_target(l);
  for (const Account &a : accounts_) {
    tgtadm({"--mode", "account", "--op", "new", "--user", a.user, "--password", a.password});
    std::vector<std::string> bind{"--mode", "account", "--op", "bind", "--tid", "1", "--user", a.user};
    if (a.outgoing)
      bind.emplace_back("--outgoing");
    tgtadm(bind);
  }
}

void TgtdServer::delete_target() {
  if (!target_created_)
    return;
  tgtadm({"--mode", "target", "--op", "delete", "--force", "--tid", "1"});
  for (const Account &a : accounts_)
    tgtadm({"--mode", "account", "--op", "delete", "--user", a.user});
  target_created_ = false;
}

void TgtdServer::add_lun(int lun, std::uint64_t size, unsigned block_size, const std::string &params) {
  create_target();
  const std::string backing = backing_file(lun);
  { std::ofstream f(backing); }
  std::filesystem::resize_file(backing, size);
  luns_.push_back({lun, block_size, params});
  add_lun_to_target(luns_.back());
}

void TgtdServer::add_account(const std::string &user, const std::string &password, bool outgoing) {
  create_target();
  accounts_.push_back({user, password, outgoing});
  tgtadm({"--mode", "account", "--op", "new", "--user", user, "--password", password});
  std::vector<std::string> bind{"--mode", "account", "--op", "bind", "--tid", "1", "--user", user};
  if (outgoing)
    bind.emplace_back("--outgoing");
  tgtadm(bind);
}

void TgtdServer::kill() {
  if (!process_ || !process_->running())
    return;
  if (paused_)
    resume();
  ::kill(process_->pid(), SIGKILL);
  process_->stop(std::chrono::milliseconds(2000));
}

void TgtdServer::pause() {
  if (process_ && process_->running() && ::kill(process_->pid(), SIGSTOP) == 0)
    paused_ = true;
}

void TgtdServer::resume() {
  if (process_ && process_->running())
    ::kill(process_->pid(), SIGCONT);
  paused_ = false;
}

void TgtdServer::resize_lun(int lun, std::uint64_t size) { std::filesystem::resize_file(backing_file(lun), size); }

} // namespace vb::test
