#include "csi/host_mounts.h"

#include "common/errors.h"
#include "common/small_file.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

extern char **environ;

namespace vb::csi {
namespace {

std::string unescape(const std::string &s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7' &&
        s[i + 3] >= '0' && s[i + 3] <= '7') {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string words(const CommandResult &r) {
  std::string out = r.output;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
    out.pop_back();
  for (char &c : out)
    if (c == '\n')
      c = ' ';
  if (r.timed_out)
    return "timed out" + (out.empty() ? "" : ": " + out);
  return "exit " + std::to_string(r.exit_code) + (out.empty() ? "" : ": " + out);
}

void run_or_throw(const std::vector<std::string> &argv, std::chrono::seconds timeout) {
  CommandResult r = run_command(argv, timeout);
  if (r.exit_code != 0)
    throw std::runtime_error(argv[0] + " " + argv.back() + ": " + words(r));
}

} // namespace

std::vector<MountEntry> parse_mountinfo(const std::string &text) {
  std::vector<MountEntry> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> fields;
    std::string w;
    while (f >> w && fields.size() < 64)
      fields.push_back(w);
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    std::size_t dash = 6;
    while (dash < fields.size() && fields[dash] != "-")
      ++dash;
    if (fields.size() < 6 || dash + 2 >= fields.size())
      continue;
    MountEntry m;
    const std::string &dev = fields[2];
    auto colon = dev.find(':');
    if (colon == std::string::npos)
      continue;
    try {
      m.major = static_cast<unsigned>(std::stoul(dev.substr(0, colon)));
      m.minor = static_cast<unsigned>(std::stoul(dev.substr(colon + 1)));
    } catch (const std::exception &) {
      continue;
    }
    m.root = unescape(fields[3]);
    m.mount_point = unescape(fields[4]);
    m.options = fields[5];
    m.fs_type = unescape(fields[dash + 1]);
    m.source = unescape(fields[dash + 2]);
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<MountEntry> read_mounts() {
  // A host with thousands of mounts has a mountinfo of a few MiB; 64 MiB is a bound, not a guess.
  SmallFile f = read_small_file("/proc/self/mountinfo", 64 << 20);
  if (f.error != 0)
    throw std::runtime_error("/proc/self/mountinfo: " + f.problem());
  if (f.too_large(64 << 20))
    throw std::runtime_error("/proc/self/mountinfo: more than 64 MiB");
  return parse_mountinfo(f.text);
}

std::optional<MountEntry> mount_at(const std::vector<MountEntry> &mounts, const std::string &path) {
  std::optional<MountEntry> found;
  for (const auto &m : mounts)
    if (m.mount_point == path)
      found = m;
  return found;
}

bool is_read_only(const MountEntry &m) {
  std::istringstream in(m.options);
  std::string o;
  while (std::getline(in, o, ','))
    if (o == "ro")
      return true;
  return false;
}

std::string path_problem(const std::string &path) {
  if (path.empty() || path[0] != '/')
    return "expected an absolute path";
  if (path.size() > 4096)
    return "expected a path of at most 4096 bytes";
  for (char c : path)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      return "expected a path without control characters";
  if (path.size() == 1 || path.back() == '/' || path.find("//") != std::string::npos)
    return "expected a plain path below / (no '//', no trailing '/')";
  std::istringstream in(path);
  std::string part;
  while (std::getline(in, part, '/'))
    if (part == "." || part == "..")
      return "expected a path without '.' or '..' parts";
  return "";
}

CommandResult run_command(const std::vector<std::string> &argv, std::chrono::seconds timeout) {
  CommandResult r;
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    r.output = errno_message("pipe", errno);
    return r;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  std::vector<char *> args;
  args.reserve(argv.size() + 1);
  for (const auto &a : argv)
    args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    r.output = errno_message("run " + argv[0], rc);
    return r;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd p{pipe_fds[0], POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      continue;
    ssize_t got = ::read(pipe_fds[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break; // EOF: the program (and whatever it started) closed its output
    if (r.output.size() < 65536)
      r.output.append(buf, static_cast<std::size_t>(std::min<ssize_t>(got, 65536 - r.output.size())));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!r.timed_out && WIFEXITED(status))
    r.exit_code = WEXITSTATUS(status);
  return r;
}

std::string probe_filesystem(const std::string &device) {
  // -p: low-level probe of the device itself, not blkid's cache. Exit 2: nothing found.
  CommandResult r = run_command({"blkid", "-p", "-o", "export", device}, std::chrono::seconds(60));
  if (r.exit_code == 2) {
    check_disk_reads(device);
    return "";
  }
  if (r.exit_code != 0)
    throw std::runtime_error("blkid -p " + device + ": " + words(r) +
                             ": what it holds cannot be told, and it is not formatted");
  std::istringstream in(r.output);
  std::string line, type, usage;
  while (std::getline(in, line)) {
    if (line.rfind("TYPE=", 0) == 0)
      type = line.substr(5);
    if (line.rfind("USAGE=", 0) == 0)
      usage = line.substr(6);
  }
  if (type.empty()) // a partition table, or something blkid names only by its usage
    return usage.empty() ? "unknown" : usage;
  return type;
}

void check_disk_reads(const std::string &device) {
  constexpr std::size_t kSpan = 1 << 20;
  const int fd = ::open(device.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error(errno_message("open " + device + " to read it", errno) +
                             ": it cannot be told blank, and is not formatted");
  void *buf = nullptr;
  if (::posix_memalign(&buf, 4096, kSpan) != 0) {
    ::close(fd);
    throw std::runtime_error("out of memory reading " + device);
  }
  std::string problem;
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size < 0) {
    problem = errno_message("the size of " + device, errno);
  } else {
    const off_t last = size > static_cast<off_t>(kSpan) ? (size - static_cast<off_t>(kSpan)) & ~off_t{4095} : 0;
    for (off_t at : {off_t{0}, last}) {
      const std::size_t want = std::min<std::size_t>(kSpan, static_cast<std::size_t>(size - at));
      const ssize_t got = ::pread(fd, buf, want, at);
      if (got < 0 || static_cast<std::size_t>(got) != want) {
        problem = got < 0 ? errno_message("read " + device + " at " + std::to_string(at), errno)
                          : "short read of " + device + " at " + std::to_string(at);
        break;
      }
    }
  }
  ::free(buf);
  ::close(fd);
  if (!problem.empty())
    throw std::runtime_error(problem + ": it cannot be told blank, and is not formatted");
}

std::string device_claimed(const std::string &device) {
  const int fd = ::open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) {
    ::close(fd);
    return "";
  }
  if (errno == EBUSY)
    return device + " is in use: a filesystem on it is mounted (perhaps in another mount namespace) or a "
                    "device-mapper or md device holds it";
  if (errno == ENOENT || errno == ENXIO || errno == ENODEV)
    return ""; // gone: nothing can hold it
  return errno_message("open " + device + " exclusively", errno);
}

std::string block_serial(const std::string &node) {
  struct stat st {};
  if (::stat(node.c_str(), &st) != 0 || !S_ISBLK(st.st_mode))
    return "";
  const std::string path =
      "/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev)) + "/serial";
  const SmallFile f = read_small_file(path, 64);
  if (f.error != 0 || f.too_large(64))
    return "";
  std::string serial = f.text;
  while (!serial.empty() && (serial.back() == '\n' || serial.back() == ' ' || serial.back() == '\0'))
    serial.pop_back();
  return serial;
}

void make_filesystem(const std::string &device, const std::string &fs_type) {
  if (fs_type == "xfs")
    run_or_throw({"mkfs.xfs", "-q", device}, std::chrono::seconds(600));
  else
    run_or_throw({"mkfs." + fs_type, "-q", "-F", device}, std::chrono::seconds(600));
}

void mount_filesystem(const std::string &device, const std::string &target, const std::string &fs_type,
                      const std::vector<std::string> &flags, bool read_only) {
  std::string options = read_only ? "ro" : "rw";
  for (const auto &f : flags)
    options += "," + f;
  run_or_throw({"mount", "-t", fs_type, "-o", options, device, target}, std::chrono::seconds(120));
}

void bind_mount(const std::string &source, const std::string &target, bool read_only) {
  if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0)
    throw std::runtime_error(errno_message("bind-mount " + source + " at " + target, errno));
  // A bind mount takes the source's flags; read-only needs a remount of the new mount alone.
  if (read_only && ::mount(nullptr, target.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0) {
    const int err = errno;
    ::umount2(target.c_str(), MNT_DETACH);
    throw std::runtime_error(errno_message("remount " + target + " read-only", err));
  }
}

void unmount_all(const std::string &target) {
  for (int i = 0; i < 16; ++i) {
    if (::umount2(target.c_str(), UMOUNT_NOFOLLOW) == 0)
      continue;
    if (errno == EINVAL || errno == ENOENT)
      return; // not a mount point (any more), or gone
    throw std::runtime_error(errno_message("unmount " + target, errno));
  }
  throw std::runtime_error("unmount " + target + ": still mounted after 16 unmounts");
}

void grow_filesystem(const std::string &device, const std::string &mount_point, const std::string &fs_type) {
  if (fs_type == "xfs")
    run_or_throw({"xfs_growfs", mount_point}, std::chrono::seconds(600));
  else
    run_or_throw({"resize2fs", device}, std::chrono::seconds(600));
}

} // namespace vb::csi
