// Helpers for tests that start real servers (nbdkit, tgtd): child processes owned by PID,
// private temporary directories, readiness polling without fixed sleeps, and skips.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <sys/types.h>
#include <vector>

namespace vb::test {

// Printed by a test that cannot run here; ctest's SKIP_REGULAR_EXPRESSION turns it into a skip.
#define VB_SKIP(reason)                                                                                                \
  do {                                                                                                                 \
    ::vb::test::announce_skip(reason);                                                                                 \
    return;                                                                                                            \
  } while (0)

void announce_skip(const std::string &reason);

// Records a backend completion (vb::CompletionFn with ctx = the Result): how often, and the error.
struct Result {
  int calls = 0;
  int error = -1;
  static void on_done(void *ctx, int error) noexcept {
    auto *r = static_cast<Result *>(ctx);
    ++r->calls;
    r->error = error;
  }
};

// The full path of an executable found in PATH (or /usr/sbin, /sbin), if any.
std::optional<std::string> find_program(const std::string &name);

// Polls pred with a short, growing interval until it is true or timeout passes.
bool wait_until(const std::function<bool()> &pred, std::chrono::milliseconds timeout = std::chrono::seconds(20));

// A directory under $TMPDIR (default /tmp) removed with its contents on destruction.
class TempDir {
public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  const std::string &path() const { return path_; }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

// A child process owned by PID: SIGTERM then SIGKILL on stop() or destruction, never
// signalled by name. It also dies with the test (PR_SET_PDEATHSIG) if the test crashes.
class ChildProcess {
public:
  // stdout and stderr go to log_path (appended) so a failing test can show them.
  ChildProcess(const std::vector<std::string> &argv, const std::string &log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess &) = delete;
  ChildProcess &operator=(const ChildProcess &) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Returns the exit status as from waitpid, or -1 if it had to be killed.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
  const std::string &log_path() const { return log_path_; }

private:
  pid_t pid_ = -1;
  int status_ = 0;
  std::string log_path_;
};

// Runs a command to completion and returns its exit code (-1 if it did not exit normally).
// Output goes to log_path if given, else is discarded.
int run_command(const std::vector<std::string> &argv, const std::string &log_path = {});

std::string read_file(const std::string &path);

// A TCP port on 127.0.0.1 that was free a moment ago.
std::uint16_t free_tcp_port();

// nbdkit serving one plugin on a private unix socket, e.g. {"memory", "64M"}.
class NbdkitServer {
public:
  // unix_socket: where to listen; empty = a new socket in dir; "none" = no unix socket (pass
  // "-i", "127.0.0.1", "-p", PORT in extra_options for TCP).
  NbdkitServer(const TempDir &dir, const std::vector<std::string> &plugin_args,
               const std::vector<std::string> &extra_options = {}, const std::string &unix_socket = {});
  const std::string &socket() const { return socket_; }
  std::string uri() const { return "nbd+unix:///?socket=" + socket_; }
  ChildProcess &process() { return *process_; }

private:
  std::string socket_;
  std::optional<ChildProcess> process_;
};

// tgtd on a free 127.0.0.1 port with a private control socket; LUNs backed by files. The
// target and its LUNs are remembered, so that the target can be deleted and made again, or tgtd
// killed and started again on the same port, with the same backing files.
class TgtdServer {
public:
  explicit TgtdServer(const TempDir &dir);
  ~TgtdServer();
  // Creates target tid 1 (first call) and adds a LUN backed by a new file of the given size.
  // params are tgtadm --params for the LUN, e.g. "thin_provisioning=1" (UNMAP, WRITE SAME
  // with UNMAP) or "readonly=1".
  void add_lun(int lun, std::uint64_t size, unsigned block_size = 512, const std::string &params = {});
  // A CHAP account bound to the target: incoming (the initiator proves itself) or outgoing (the
  // target proves itself, for mutual CHAP).
  void add_account(const std::string &user, const std::string &password, bool outgoing = false);
  // Deletes the target (its sessions are dropped) / makes it again as it was.
  void delete_target();
  void create_target();
  // SIGKILL, as a crash: connections drop without a logout. start() brings tgtd back on the same
  // port with the same target, LUNs and accounts.
  void kill();
  void start();
  // SIGSTOP / SIGCONT: a target that stops answering without closing anything.
  void pause();
  void resume();
  // Resizes a LUN's backing file; takes effect when the target is made again.
  void resize_lun(int lun, std::uint64_t size);
  std::string backing_file(int lun) const { return dir_.file("lun" + std::to_string(lun) + ".img"); }
  std::string iqn() const { return "iqn.2026-11.org.vduse-bridge.test:disk"; }
  std::string portal() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string uri(int lun) const { return "iscsi://" + portal() + "/" + iqn() + "/" + std::to_string(lun); }
  const std::string &log_path() const { return log_; }

private:
  struct Lun {
    int lun;
    unsigned block_size;
    std::string params;
  };
  struct Account {
    std::string user, password;
    bool outgoing;
  };
  void tgtadm(const std::vector<std::string> &args);
  void add_lun_to_target(const Lun &l);

  const TempDir &dir_;
  std::uint16_t port_ = 0;
  int control_ = 0;
  bool target_created_ = false;
  bool paused_ = false;
  std::string log_;
  std::vector<Lun> luns_;
  std::vector<Account> accounts_;
  std::optional<ChildProcess> process_;
};

} // namespace vb::test
