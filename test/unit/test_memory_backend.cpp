#include "backend_events.h"
#include "event/event_loop.h"
#include "memory/memory_backend.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace {

using vb::test::Result;

int run(vb::BackendQueue &q, const vb::Request &req) {
  Result r;
  REQUIRE(q.submit(req, &Result::on_done, &r) == 0);
  REQUIRE(r.calls == 1); // exactly once (inline for memory)
  return r.error;
}

} // namespace

TEST_CASE("memory backend: read/write through scattered buffers, discard and zeroes read back zero") {
  vb::MemoryBackend backend(1ULL << 30); // 1 GiB: sparse, so this costs nothing
  backend.open(vb::test::new_events(backend));
  const auto &caps = backend.capabilities();
  CHECK(caps.size == 1ULL << 30);
  CHECK(caps.can_discard);
  CHECK(caps.can_write_zeroes);
  vb::EventLoop loop;
  auto q = backend.open_queue(loop, 0);

  std::vector<char> a(1000, 'a'), b(3096, 'b');
  iovec wv[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  CHECK(run(*q, {vb::Op::write, 512ULL << 20, 4096, wv, 2}) == 0);

  std::vector<char> in(4096, 0);
  iovec rv[1] = {{in.data(), in.size()}};
  CHECK(run(*q, {vb::Op::read, 512ULL << 20, 4096, rv, 1}) == 0);
  CHECK(std::memcmp(in.data(), a.data(), a.size()) == 0);
  CHECK(std::memcmp(in.data() + 1000, b.data(), b.size()) == 0);

  CHECK(run(*q, {vb::Op::flush, 0, 0, nullptr, 0}) == 0);

  vb::Request zero{vb::Op::write_zeroes, 512ULL << 20, 512, nullptr, 0};
  CHECK(run(*q, zero) == 0);
  CHECK(run(*q, {vb::Op::read, 512ULL << 20, 4096, rv, 1}) == 0);
  CHECK(std::all_of(in.begin(), in.begin() + 512, [](char c) { return c == 0; }));
  CHECK(in[512] == 'a');

  CHECK(run(*q, {vb::Op::discard, 512ULL << 20, 4096, nullptr, 0}) == 0);
  CHECK(run(*q, {vb::Op::read, 512ULL << 20, 4096, rv, 1}) == 0);
  CHECK(std::all_of(in.begin(), in.end(), [](char c) { return c == 0; }));
}

TEST_CASE("memory backend: out-of-range requests fail with EIO") {
  vb::MemoryBackend backend(1 << 20);
  backend.open(vb::test::new_events(backend));
  vb::EventLoop loop;
  auto q = backend.open_queue(loop, 0);
  std::vector<char> buf(4096);
  iovec v[1] = {{buf.data(), buf.size()}};
  CHECK(run(*q, {vb::Op::read, (1 << 20) - 512, 4096, v, 1}) == EIO);
  CHECK(run(*q, {vb::Op::write, ~0ULL - 100, 4096, v, 1}) == EIO);
}

TEST_CASE("memory backend: a size that is not a block multiple is refused at open") {
  vb::MemoryBackend backend(1000);
  CHECK_THROWS_WITH_AS(backend.open(vb::test::new_events(backend)), doctest::Contains("multiple of the block size"),
                       std::runtime_error);
}

// A temp dir stands in for /dev/shm: its vduse-bridge/ subdirectory holds the disks.
namespace {

std::string open_error(const std::string &path) {
  bool created = false;
  try {
    const int fd = vb::open_memory_disk_file(path, created);
    ::close(fd);
  } catch (const std::runtime_error &e) {
    return e.what();
  }
  return "(opened)";
}

} // namespace

TEST_CASE("memory disk file: its directory is made 0700, the file 0600 with O_EXCL, then reopened") {
  vb::test::TempDir shm;
  const std::string dir = shm.file("vduse-bridge");
  const std::string path = dir + "/d0.mem";
  const mode_t old_umask = ::umask(0);
  bool created = false;
  int fd = vb::open_memory_disk_file(path, created);
  ::umask(old_umask);
  REQUIRE(fd >= 0);
  CHECK(created);
  struct stat st {};
  REQUIRE(::lstat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
  REQUIRE(::fstat(fd, &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(::write(fd, "x", 1) == 1);
  ::close(fd);
  fd = vb::open_memory_disk_file(path, created);
  REQUIRE(fd >= 0);
  CHECK_FALSE(created);
  char c = 0;
  CHECK(::pread(fd, &c, 1, 0) == 1);
  CHECK(c == 'x');
  ::close(fd);
}

TEST_CASE("memory disk file: a directory others can reach, a symlink or another owner is refused") {
  vb::test::TempDir shm;
  const std::string dir = shm.file("vduse-bridge");
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  REQUIRE(::chmod(dir.c_str(), 0755) == 0);
  CHECK(open_error(dir + "/d.mem") ==
        "memory backend: " + dir + " has mode 0755: other users could reach the disks; chmod 0700 " + dir);
  REQUIRE(::rmdir(dir.c_str()) == 0);

  const std::string elsewhere = shm.file("elsewhere");
  REQUIRE(::mkdir(elsewhere.c_str(), 0700) == 0);
  REQUIRE(::symlink(elsewhere.c_str(), dir.c_str()) == 0);
  CHECK(open_error(dir + "/d.mem") ==
        "memory backend: " + dir + " is a symbolic link; it must be a directory (remove it)");
  REQUIRE(::unlink(dir.c_str()) == 0);

  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  if (::geteuid() == 0) { // only root can give a directory away
    REQUIRE(::chown(dir.c_str(), 65534, 65534) == 0);
    CHECK(open_error(dir + "/d.mem") ==
          "memory backend: " + dir + " belongs to uid 65534, not to this daemon's uid 0 (remove it)");
    REQUIRE(::chown(dir.c_str(), 0, 0) == 0);
  }
}

TEST_CASE("memory disk file: a symlink, a non-file or another user's file in its place is refused") {
  vb::test::TempDir shm;
  const std::string dir = shm.file("vduse-bridge");
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  const std::string target = shm.file("victim");
  { std::ofstream(target) << "precious"; }
  REQUIRE(::symlink(target.c_str(), (dir + "/link.mem").c_str()) == 0);
  CHECK(open_error(dir + "/link.mem") == "memory backend: " + dir + "/link.mem is a symbolic link (remove it)");
  REQUIRE(::mkfifo((dir + "/fifo.mem").c_str(), 0600) == 0);
  // O_RDWR on a FIFO does not block on Linux: it is opened, then refused.
  CHECK(open_error(dir + "/fifo.mem") == "memory backend: " + dir + "/fifo.mem is not a regular file (remove it)");
  if (::geteuid() == 0) {
    const std::string theirs = dir + "/theirs.mem";
    { std::ofstream(theirs) << "x"; }
    REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
    CHECK(open_error(theirs) ==
          "memory backend: " + theirs + " belongs to uid 65534, not to this daemon's uid 0 (remove it)");
  }
}

TEST_CASE("memory disk file: a missing /dev/shm is named") {
  vb::test::TempDir tmp;
  const std::string shm = tmp.file("shm"); // does not exist
  CHECK(open_error(shm + "/vduse-bridge/d.mem") == "memory backend: " + shm + " does not exist, so there is no " + shm +
                                                       "/vduse-bridge for the disk's contents (memory disks "
                                                       "need a tmpfs at " +
                                                       shm + ")");
}
