// The file backend against real files and a real block device: O_DIRECT on a disk-backed
// filesystem (/var/tmp), the page cache where O_DIRECT is refused (ramfs) or as tmpfs allows,
// a loop device; data checked against a shadow copy and read back from the file independently.
#include "backend_events.h"
#include "event/event_loop.h"
#include "file/file_backend.h"
#include "loop_wait.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <linux/loop.h>
#include <memory>
#include <random>
#include <string>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using vb::test::Result;

namespace {

constexpr std::uint64_t kMiB = 1 << 20;

// A private directory under base, removed with its contents (an optional ramfs mounted on it
// is unmounted first).
class ScratchDir {
public:
  explicit ScratchDir(const std::string &base) {
    std::string templ = base + "/vduse-bridge-file-test.XXXXXX";
    REQUIRE_MESSAGE(::mkdtemp(templ.data()) != nullptr, "mkdtemp under " << base << ": " << std::strerror(errno));
    path_ = templ;
  }
  ~ScratchDir() {
    if (mounted_)
      ::umount2(path_.c_str(), MNT_DETACH);
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir &) = delete;
  ScratchDir &operator=(const ScratchDir &) = delete;
  // A ramfs on the directory (root only); false if it cannot be mounted.
  bool mount_ramfs() {
    mounted_ = ::mount("vduse-bridge-test", path_.c_str(), "ramfs", 0, nullptr) == 0;
    return mounted_;
  }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
  std::string path_;
  bool mounted_ = false;
};

// Whether a file in dir can be opened with O_DIRECT.
bool direct_works_in(const ScratchDir &dir) {
  const std::string path = dir.file("probe");
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd >= 0)
    ::close(fd);
  ::unlink(path.c_str());
  return fd >= 0;
}

void make_file(const std::string &path, std::uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  ::close(fd);
}

std::vector<char> read_back(const std::string &path, std::uint64_t offset, std::size_t length) {
  std::vector<char> out(length);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pread(fd, out.data(), length, static_cast<off_t>(offset)) == static_cast<ssize_t>(length));
  ::close(fd);
  return out;
}

void write_at(const std::string &path, std::uint64_t offset, const std::vector<char> &data) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(data.size()));
  REQUIRE(::fsync(fd) == 0);
  ::close(fd);
}

std::int64_t blocks_of(const std::string &path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_blocks;
}

bool all_zero(const char *p, std::size_t n) {
  return std::all_of(p, p + n, [](char c) { return c == 0; });
}

// Memory aligned to 4096 bytes, freed on destruction.
class Buffer {
public:
  explicit Buffer(std::size_t size) : p_(static_cast<char *>(std::aligned_alloc(4096, round(size)))) {
    REQUIRE(p_ != nullptr);
    std::memset(p_, 0, round(size));
  }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer &) = delete;
  Buffer &operator=(const Buffer &) = delete;
  char *data() const { return p_; }

private:
  static std::size_t round(std::size_t n) { return (n + 4095) / 4096 * 4096 + 4096; }
  char *p_;
};

// A backend opened with its loop and queue 0 (destroyed before the loop).
struct Disk {
  explicit Disk(vb::FileBackendOptions options) : backend(std::move(options)) {
    backend.open(vb::test::new_events(backend));
    q = backend.open_queue(loop, 0);
  }
  vb::FileQueue &file_queue() { return dynamic_cast<vb::FileQueue &>(*q); }

  vb::FileBackend backend;
  vb::EventLoop loop;
  std::unique_ptr<vb::BackendQueue> q;
};

vb::FileBackendOptions options_for(const std::string &path, vb::FileBackendOptions::Direct direct) {
  vb::FileBackendOptions o;
  o.path = path;
  o.direct = direct;
  o.resize_poll_interval = 0ms;
  return o;
}

// run_once(true) with a fresh queue's Deferred pending is one loop iteration (libevent's
// EVLOOP_ONCE ends after the round that ran callbacks): the Deferred issues what it can, and the
// completions, signalled through the eventfd, wait for a later iteration. run_once(false) may go
// round again and reap them; so may a queue whose eventfd has an edge left from earlier I/O.

using vb::test::run_until;

int run(Disk &d, const vb::Request &req) {
  Result r;
  const int rc = d.q->submit(req, &Result::on_done, &r);
  if (rc != 0)
    return rc;
  run_until(d.loop, [&] { return r.calls > 0; });
  CHECK(r.calls == 1);
  return r.error;
}

int run_io(Disk &d, vb::Op op, std::uint64_t offset, char *buf, std::size_t length) {
  iovec v{buf, length};
  vb::Request req{op, offset, length, &v, 1};
  return run(d, req);
}

int run_range(Disk &d, vb::Op op, std::uint64_t offset, std::uint64_t length, bool may_unmap = false) {
  vb::Request req{op, offset, length, nullptr, 0};
  req.may_unmap = may_unmap;
  return run(d, req);
}

// One read or write of a random batch: its own buffer, cut into iovecs.
struct Io {
  vb::Op op = vb::Op::read;
  std::uint64_t offset = 0;
  std::size_t length = 0;
  std::unique_ptr<Buffer> mem;
  char *data = nullptr; // mem, or a few bytes into it (unaligned)
  std::vector<iovec> iov;
  Result result;
};

// Cuts [data, data + length) into up to 6 iovecs: at multiples of 4096 (aligned) or anywhere.
std::vector<iovec> cut(char *data, std::size_t length, bool unaligned, std::mt19937_64 &rng) {
  const std::size_t unit = unaligned ? 1 : 4096;
  std::vector<std::size_t> points{0, length};
  for (int i = 0; i < 5 && length / unit > 1; ++i)
    points.push_back(std::uniform_int_distribution<std::size_t>(1, length / unit - 1)(rng) * unit);
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  std::vector<iovec> iov;
  for (std::size_t i = 0; i + 1 < points.size(); ++i)
    iov.push_back({data + points[i], points[i + 1] - points[i]});
  return iov;
}

// Rounds of up to 8 concurrent reads and writes on disjoint random ranges (sometimes larger than
// one bounce piece); every read is checked against shadow, which follows the writes.
void random_io(Disk &d, std::vector<char> &shadow, std::mt19937_64 &rng, int rounds, bool unaligned) {
  const std::uint64_t lbs = d.backend.capabilities().logical_block_size;
  const std::uint64_t blocks = shadow.size() / lbs;
  int reads_checked = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::unique_ptr<Io>> batch;
    for (int i = 0; i < 8; ++i) {
      auto io = std::make_unique<Io>();
      const bool big = std::uniform_int_distribution<int>(0, 15)(rng) == 0;
      const std::uint64_t n = big ? (2 * kMiB) / lbs + 1 : std::uniform_int_distribution<std::uint64_t>(1, 64)(rng);
      const std::uint64_t first = std::uniform_int_distribution<std::uint64_t>(0, blocks - n)(rng);
      io->offset = first * lbs;
      io->length = static_cast<std::size_t>(n * lbs);
      const bool overlaps = std::any_of(batch.begin(), batch.end(), [&](const auto &o) {
        return io->offset < o->offset + o->length && o->offset < io->offset + io->length;
      });
      if (overlaps)
        continue;
      io->op = std::uniform_int_distribution<int>(0, 1)(rng) ? vb::Op::write : vb::Op::read;
      io->mem = std::make_unique<Buffer>(io->length + 8);
      io->data = io->mem->data() + (unaligned ? std::uniform_int_distribution<int>(1, 7)(rng) : 0);
      if (io->op == vb::Op::write) {
        for (std::size_t k = 0; k < io->length; ++k)
          io->data[k] = static_cast<char>(rng());
        std::memcpy(shadow.data() + io->offset, io->data, io->length);
      }
      io->iov = cut(io->data, io->length, unaligned, rng);
      batch.push_back(std::move(io));
    }
    for (auto &io : batch) {
      const vb::Request req{io->op, io->offset, io->length, io->iov.data(), static_cast<int>(io->iov.size())};
      REQUIRE(d.q->submit(req, &Result::on_done, &io->result) == 0);
    }
    run_until(d.loop,
              [&] { return std::all_of(batch.begin(), batch.end(), [](auto &io) { return io->result.calls; }); });
    for (auto &io : batch) {
      CHECK(io->result.calls == 1);
      REQUIRE_MESSAGE(io->result.error == 0, "offset " << io->offset << " length " << io->length);
      if (io->op == vb::Op::read) {
        CHECK(std::memcmp(io->data, shadow.data() + io->offset, io->length) == 0);
        ++reads_checked;
      }
    }
  }
  CHECK(reads_checked > 0);
}

// The backend's queue to the end: every read/write path, then the file itself against shadow.
void random_io_and_verify(Disk &d, const std::string &path, std::vector<char> &shadow, bool unaligned) {
  std::mt19937_64 rng(unaligned ? 20261 : 20262);
  random_io(d, shadow, rng, 40, unaligned);
  CHECK(run_range(d, vb::Op::flush, 0, 0) == 0);
  CHECK(read_back(path, 0, shadow.size()) == shadow);
}

} // namespace

TEST_CASE("file: O_DIRECT reads and writes at random offsets on a disk-backed file match a shadow copy") {
  ScratchDir dir("/var/tmp");
  if (!direct_works_in(dir))
    VB_SKIP("/var/tmp does not support O_DIRECT");
  const std::string path = dir.file("disk.img");
  make_file(path, 16 * kMiB);
  Disk d(options_for(path, vb::FileBackendOptions::Direct::on));
  const auto &caps = d.backend.capabilities();
  CHECK(d.backend.direct());
  CHECK(caps.size == 16 * kMiB);
  CHECK(caps.logical_block_size >= 512);
  CHECK_FALSE(caps.read_only);
  CHECK(caps.can_flush);
  CHECK(caps.can_discard);
  CHECK(caps.can_write_zeroes);
  CHECK(caps.identity.rfind("file:" + path + " (dev ", 0) == 0);
  CHECK(std::string(d.backend.kind()) == "file");
  std::vector<char> shadow(16 * kMiB, 0);
  random_io_and_verify(d, path, shadow, false);
  CHECK(d.file_queue().bounce_bytes() == 0);
}

TEST_CASE("file: unaligned buffers under O_DIRECT go through bounce memory bounded per queue") {
  ScratchDir dir("/var/tmp");
  if (!direct_works_in(dir))
    VB_SKIP("/var/tmp does not support O_DIRECT");
  const std::string path = dir.file("disk.img");
  make_file(path, 16 * kMiB);
  auto o = options_for(path, vb::FileBackendOptions::Direct::on);
  o.bounce_limit = 64 * 1024;
  Disk d(o);
  REQUIRE(d.backend.direct());
  std::vector<char> shadow(16 * kMiB, 0);
  random_io_and_verify(d, path, shadow, true); // 2 MiB requests: 32 pieces of 64 KiB each

  // Eight bounced writes of 64 KiB at once: one has the bounce memory, seven wait for it. On a
  // fresh queue, so that no completion signal of the I/O above is left to be seen meanwhile.
  d.q.reset();
  d.q = d.backend.open_queue(d.loop, 0);
  std::vector<std::unique_ptr<Buffer>> mem;
  std::vector<iovec> iov(8);
  std::vector<Result> results(8);
  for (std::size_t i = 0; i < 8; ++i) {
    mem.push_back(std::make_unique<Buffer>(65536 + 1));
    char *p = mem.back()->data() + 1;
    std::memset(p, static_cast<int>('a' + i), 65536);
    iov[i] = {p, 65536};
    const vb::Request req{vb::Op::write, i * 65536, 65536, &iov[i], 1};
    REQUIRE(d.q->submit(req, &Result::on_done, &results[i]) == 0);
  }
  d.loop.run_once(true); // one iteration: issued now, reaped in a later one
  CHECK(d.file_queue().bounce_bytes() == 65536);
  CHECK(d.file_queue().in_flight() == 1);
  CHECK(d.file_queue().held() == 7);
  run_until(d.loop, [&] { return std::all_of(results.begin(), results.end(), [](auto &r) { return r.calls; }); });
  for (std::size_t i = 0; i < 8; ++i) {
    CHECK(results[i].calls == 1);
    CHECK(results[i].error == 0);
    CHECK(read_back(path, i * 65536, 65536) == std::vector<char>(65536, static_cast<char>('a' + i)));
  }
  CHECK(d.file_queue().bounce_bytes() == 0);
}

TEST_CASE("file: automatic O_DIRECT on /dev/shm is used exactly when tmpfs allows it, and I/O works either way") {
  ScratchDir dir("/dev/shm");
  const bool tmpfs_direct = direct_works_in(dir); // Linux 6.6 and later accept O_DIRECT on tmpfs
  MESSAGE("tmpfs on this kernel ", tmpfs_direct ? "accepts" : "refuses", " O_DIRECT");
  const std::string path = dir.file("disk.img");
  make_file(path, 8 * kMiB);
  Disk d(options_for(path, vb::FileBackendOptions::Direct::automatic));
  CHECK(d.backend.direct() == tmpfs_direct);
  std::vector<char> shadow(8 * kMiB, 0);
  random_io_and_verify(d, path, shadow, true);
}

TEST_CASE("file: automatic O_DIRECT falls back to the page cache on ramfs, and direct on refuses naming the path") {
  ScratchDir dir("/tmp");
  if (!dir.mount_ramfs())
    VB_SKIP(std::string("cannot mount a ramfs (needs root): ") + std::strerror(errno));
  REQUIRE_FALSE(direct_works_in(dir));
  const std::string path = dir.file("disk.img");
  make_file(path, 4 * kMiB);
  {
    vb::FileBackend strict(options_for(path, vb::FileBackendOptions::Direct::on));
    try {
      strict.open(vb::test::new_events(strict));
      FAIL("direct: on opened a file on ramfs");
    } catch (const std::runtime_error &e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
      CHECK(std::string(e.what()).find("O_DIRECT") != std::string::npos);
    }
  }
  Disk d(options_for(path, vb::FileBackendOptions::Direct::automatic));
  CHECK_FALSE(d.backend.direct());
  // Unaligned buffers go straight to the kernel: nothing bounced.
  Buffer mem(4096 + 3);
  char *p = mem.data() + 3;
  std::memset(p, 'r', 4096);
  iovec v{p, 4096};
  Result r;
  REQUIRE(d.q->submit({vb::Op::write, 8192, 4096, &v, 1}, &Result::on_done, &r) == 0);
  d.loop.run_once(true); // one iteration: issued now, reaped in a later one
  CHECK(d.file_queue().bounce_bytes() == 0);
  run_until(d.loop, [&] { return r.calls > 0; });
  CHECK(r.error == 0);
  CHECK(read_back(path, 8192, 4096) == std::vector<char>(4096, 'r'));
  std::vector<char> shadow(4 * kMiB, 0);
  std::memset(shadow.data() + 8192, 'r', 4096);
  random_io_and_verify(d, path, shadow, true);
}

TEST_CASE("file: a size that is not whole blocks serves the whole blocks, and reads past a shortened end read zeros") {
  ScratchDir dir("/var/tmp");
  for (const auto direct : {vb::FileBackendOptions::Direct::automatic, vb::FileBackendOptions::Direct::off}) {
    CAPTURE(static_cast<int>(direct));
    const std::string path = dir.file("odd.img");
    make_file(path, kMiB + 100);
    write_at(path, kMiB - 4096, std::vector<char>(4096 + 100, 'e'));
    Disk d(options_for(path, direct));
    const std::uint64_t lbs = d.backend.capabilities().logical_block_size;
    CHECK(d.backend.capabilities().size == kMiB); // the 100 bytes past the last whole block are not served
    Buffer buf(8192);
    CHECK(run_io(d, vb::Op::read, kMiB - 4096, buf.data(), 4096) == 0);
    CHECK(std::all_of(buf.data(), buf.data() + 4096, [](char c) { return c == 'e'; }));
    CHECK(run_io(d, vb::Op::read, kMiB - lbs, buf.data(), static_cast<std::size_t>(2 * lbs)) == EIO); // past the end

    // The file shrinks mid-block under the backend: data up to the new end, zeros after it.
    // Three iovecs (unaligned lengths: bounced under O_DIRECT): the rest of a short read is
    // asked for again from the middle of one.
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(kMiB - 412)) == 0);
    std::memset(buf.data(), 'x', 8192);
    iovec parts[3] = {{buf.data(), 1000}, {buf.data() + 1000, 7000}, {buf.data() + 8000, 192}};
    CHECK(run(d, {vb::Op::read, kMiB - 8192, 8192, parts, 3}) == 0);
    CHECK(all_zero(buf.data(), 4096));
    CHECK(std::all_of(buf.data() + 4096, buf.data() + 8192 - 412, [](char c) { return c == 'e'; }));
    CHECK(all_zero(buf.data() + 8192 - 412, 412));
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(kMiB - 8192)) == 0); // wholly past the end
    std::memset(buf.data(), 'x', 8192);
    CHECK(run_io(d, vb::Op::read, kMiB - 8192, buf.data(), 8192) == 0);
    CHECK(all_zero(buf.data(), 8192));
  }
}

TEST_CASE("file: flush, discard and write-zeroes on a regular file") {
  for (const std::string base : {"/var/tmp", "/dev/shm"}) {
    CAPTURE(base); // ext4: ZERO_RANGE; tmpfs: no ZERO_RANGE, so punch and allocate again
    ScratchDir dir(base);
    const std::string path = dir.file("disk.img");
    make_file(path, 8 * kMiB);
    Disk d(options_for(path, vb::FileBackendOptions::Direct::automatic));
    const auto &caps = d.backend.capabilities();
    REQUIRE(caps.can_discard);
    REQUIRE(caps.can_write_zeroes);
    CHECK(caps.can_zero_unmap);
    Buffer buf(kMiB);
    std::memset(buf.data(), 'f', kMiB);
    for (std::uint64_t at = 0; at < 4 * kMiB; at += kMiB)
      CHECK(run_io(d, vb::Op::write, at, buf.data(), kMiB) == 0);
    CHECK(run_range(d, vb::Op::flush, 0, 0) == 0);
    CHECK(read_back(path, 0, kMiB) == std::vector<char>(kMiB, 'f'));
    const std::int64_t full = blocks_of(path);
    CHECK(full >= static_cast<std::int64_t>(4 * kMiB / 512));

    // Discard deallocates: st_blocks shrinks by the range.
    CHECK(run_range(d, vb::Op::discard, 0, kMiB) == 0);
    const std::int64_t after_discard = blocks_of(path);
    CHECK(after_discard <= full - static_cast<std::int64_t>(kMiB / 512));

    // Write-zeroes without unmap: zeros, and the blocks stay allocated.
    CHECK(run_range(d, vb::Op::write_zeroes, kMiB, kMiB) == 0);
    CHECK(all_zero(read_back(path, kMiB, kMiB).data(), kMiB));
    CHECK(blocks_of(path) >= after_discard);
    // With may_unmap: zeros, deallocated.
    CHECK(run_range(d, vb::Op::write_zeroes, 2 * kMiB, kMiB, true) == 0);
    CHECK(all_zero(read_back(path, 2 * kMiB, kMiB).data(), kMiB));
    CHECK(blocks_of(path) <= after_discard - static_cast<std::int64_t>(kMiB / 512));
    // Through the queue too, and the untouched megabyte is intact.
    CHECK(run_io(d, vb::Op::read, kMiB, buf.data(), kMiB) == 0);
    CHECK(all_zero(buf.data(), kMiB));
    CHECK(read_back(path, 3 * kMiB, kMiB) == std::vector<char>(kMiB, 'f'));
  }
}

TEST_CASE("file: a read-only file reads and refuses writes, discards and write-zeroes with EROFS") {
  ScratchDir dir("/var/tmp");
  const std::string path = dir.file("ro.img");
  make_file(path, kMiB);
  write_at(path, 0, std::vector<char>(4096, 'o'));
  auto o = options_for(path, vb::FileBackendOptions::Direct::automatic);
  o.read_only = true;
  Disk d(o);
  const auto &caps = d.backend.capabilities();
  CHECK(caps.read_only);
  CHECK_FALSE(caps.can_flush);
  CHECK_FALSE(caps.can_discard);
  CHECK_FALSE(caps.can_write_zeroes);
  Buffer buf(4096);
  CHECK(run_io(d, vb::Op::read, 0, buf.data(), 4096) == 0);
  CHECK(buf.data()[4095] == 'o');
  std::memset(buf.data(), 'w', 4096);
  CHECK(run_io(d, vb::Op::write, 0, buf.data(), 4096) == EROFS);
  CHECK(run_range(d, vb::Op::discard, 0, 4096) == EROFS);
  CHECK(run_range(d, vb::Op::write_zeroes, 0, 4096) == EROFS);
  CHECK(read_back(path, 0, 4096) == std::vector<char>(4096, 'o'));
}

TEST_CASE("file: open refuses what is not a regular file or a block device, naming the path") {
  ScratchDir dir("/var/tmp");
  for (const std::string &path : {std::string("/dev/null"), dir.file(""), dir.file("missing.img")}) {
    CAPTURE(path);
    vb::FileBackend backend(options_for(path, vb::FileBackendOptions::Direct::automatic));
    try {
      backend.open(vb::test::new_events(backend));
      FAIL("opened");
    } catch (const std::runtime_error &e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  }
  vb::FileBackend dev_null(options_for("/dev/null", vb::FileBackendOptions::Direct::automatic));
  CHECK_THROWS_WITH(dev_null.open(vb::test::new_events(dev_null)), doctest::Contains("is a character device"));
}

TEST_CASE("file: a file that grows or shrinks is reported as a resize by queue 0's poll") {
  ScratchDir dir("/var/tmp");
  const std::string path = dir.file("grow.img");
  make_file(path, kMiB);
  auto o = options_for(path, vb::FileBackendOptions::Direct::automatic);
  o.resize_poll_interval = 20ms;
  Disk d(o);
  std::vector<std::uint64_t> reported;
  vb::test::events_of(d.backend).set_resize_handler([&](std::uint64_t size) { reported.push_back(size); });
  REQUIRE(::truncate(path.c_str(), static_cast<off_t>(3 * kMiB + 100)) == 0);
  run_until(d.loop, [&] { return !reported.empty(); });
  CHECK(reported == std::vector<std::uint64_t>{3 * kMiB}); // whole blocks
  CHECK(d.backend.current_size() == 3 * kMiB);
  Buffer buf(4096);
  std::memset(buf.data(), 'g', 4096);
  CHECK(run_io(d, vb::Op::write, 3 * kMiB - 4096, buf.data(), 4096) == 0); // the new end is served
  CHECK(read_back(path, 3 * kMiB - 4096, 4096) == std::vector<char>(4096, 'g'));
  REQUIRE(::truncate(path.c_str(), static_cast<off_t>(2 * kMiB)) == 0);
  run_until(d.loop, [&] { return reported.size() == 2; });
  CHECK(reported.back() == 2 * kMiB);
  CHECK(run_io(d, vb::Op::read, 3 * kMiB - 4096, buf.data(), 4096) == EIO); // past the new end
  vb::test::events_of(d.backend).set_resize_handler(nullptr);
}

TEST_CASE("file: more requests than the ring holds wait in order and all complete once") {
  ScratchDir dir("/var/tmp");
  const std::string path = dir.file("deep.img");
  make_file(path, 4 * kMiB);
  auto o = options_for(path, vb::FileBackendOptions::Direct::automatic);
  o.queue_depth = 4;
  Disk d(o);
  constexpr std::size_t kCount = 64;
  std::vector<std::unique_ptr<Buffer>> mem;
  std::vector<iovec> iov(kCount);
  std::vector<Result> results(kCount);
  for (std::size_t i = 0; i < kCount; ++i) {
    mem.push_back(std::make_unique<Buffer>(8192));
    std::memset(mem.back()->data(), static_cast<int>(i + 1), 8192);
    iov[i] = {mem.back()->data(), 8192};
    const vb::Request req{i % 3 == 2 ? vb::Op::flush : vb::Op::write, i * 8192, i % 3 == 2 ? 0u : 8192u, &iov[i],
                          i % 3 == 2 ? 0 : 1};
    REQUIRE(d.q->submit(req, &Result::on_done, &results[i]) == 0);
  }
  CHECK(d.file_queue().held() == kCount); // nothing submitted before the loop runs: one batch
  d.loop.run_once(true);                  // one iteration: issued now, reaped in a later one
  CHECK(d.file_queue().in_flight() == 4);
  CHECK(d.file_queue().held() == kCount - 4);
  unsigned most = 0;
  run_until(d.loop, [&] {
    most = std::max(most, d.file_queue().in_flight());
    return std::all_of(results.begin(), results.end(), [](auto &r) { return r.calls; });
  });
  CHECK(most <= 4);
  for (std::size_t i = 0; i < kCount; ++i) {
    CHECK(results[i].calls == 1);
    CHECK(results[i].error == 0);
    if (i % 3 != 2)
      CHECK(read_back(path, i * 8192, 8192) == std::vector<char>(8192, static_cast<char>(i + 1)));
  }
}

// depth 4, 20 writes of distinct blocks, the first four in the kernel and sixteen held.
struct FullRing {
  explicit FullRing(const std::string &path) : d(make_options(path)) {
    for (std::size_t i = 0; i < kCount; ++i) {
      mem.push_back(std::make_unique<Buffer>(65536));
      std::memset(mem.back()->data(), static_cast<int>('A' + i), 65536);
      iov[i] = {mem.back()->data(), 65536};
      REQUIRE(d.q->submit({vb::Op::write, i * 65536, 65536, &iov[i], 1}, &Result::on_done, &results[i]) == 0);
    }
    d.loop.run_once(true); // one iteration: issued now, reaped in a later one
    REQUIRE(d.file_queue().in_flight() == 4);
    REQUIRE(d.file_queue().held() == kCount - 4);
  }
  static vb::FileBackendOptions make_options(const std::string &path) {
    auto o = options_for(path, vb::FileBackendOptions::Direct::automatic);
    o.queue_depth = 4;
    return o;
  }
  int calls() const {
    int n = 0;
    for (const auto &r : results)
      n += r.calls;
    return n;
  }

  static constexpr std::size_t kCount = 20;
  Disk d;
  std::vector<std::unique_ptr<Buffer>> mem;
  std::vector<iovec> iov = std::vector<iovec>(kCount);
  std::vector<Result> results = std::vector<Result>(kCount);
};

TEST_CASE("file: fence completes the requests held behind a full ring with ECANCELED and they never reach the file") {
  ScratchDir dir("/var/tmp");
  const std::string path = dir.file("fence.img");
  make_file(path, 4 * kMiB);
  FullRing f(path);
  f.d.q->fence();
  CHECK(f.calls() == static_cast<int>(FullRing::kCount - 4)); // at once
  for (std::size_t i = 4; i < FullRing::kCount; ++i)
    CHECK(f.results[i].error == ECANCELED);
  CHECK(f.d.file_queue().held() == 0);
  run_until(f.d.loop, [&] { return f.calls() == static_cast<int>(FullRing::kCount); });
  for (std::size_t i = 0; i < FullRing::kCount; ++i) {
    CHECK(f.results[i].calls == 1);
    const auto on_disk = read_back(path, i * 65536, 65536);
    if (i < 4) {
      CHECK(f.results[i].error == 0);
      CHECK(on_disk == std::vector<char>(65536, static_cast<char>('A' + i)));
    } else {
      CHECK(all_zero(on_disk.data(), on_disk.size()));
    }
  }
  // The queue goes on after a fence.
  Buffer buf(4096);
  CHECK(run_io(f.d, vb::Op::read, 0, buf.data(), 4096) == 0);
  CHECK(buf.data()[0] == 'A');
}

TEST_CASE("file: cancel_all completes everything in the kernel and held with ECANCELED, once, before it returns") {
  ScratchDir dir("/var/tmp");
  const std::string path = dir.file("cancel.img");
  make_file(path, 4 * kMiB);
  FullRing f(path);
  f.d.q->cancel_all();
  CHECK(f.calls() == static_cast<int>(FullRing::kCount));
  for (const auto &r : f.results) {
    CHECK(r.calls == 1);
    CHECK(r.error == ECANCELED);
  }
  CHECK(f.d.file_queue().in_flight() == 0);
  CHECK(f.d.file_queue().held() == 0);
  f.mem.clear(); // the kernel is done with every buffer
  f.d.q.reset();
  f.d.loop.run_once(false); // nothing is left to run after the queue
  CHECK(f.calls() == static_cast<int>(FullRing::kCount));
  for (std::size_t i = 4; i < FullRing::kCount; ++i) // the held ones never reached the file
    CHECK(all_zero(read_back(path, i * 65536, 65536).data(), 65536));
}

namespace {

// A loop device over a file. It is held open with LO_FLAGS_AUTOCLEAR set, so the kernel
// detaches it when the last descriptor closes: on destruction, and also if the test dies.
class LoopDevice {
public:
  LoopDevice(const std::string &backing, const std::string &log) {
    if (vb::test::run_command({"losetup", "-f", "--show", backing}, log) != 0)
      return;
    std::string device = vb::test::read_file(log);
    while (!device.empty() && (device.back() == '\n' || device.back() == ' '))
      device.pop_back();
    fd_ = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
    loop_info64 info{};
    if (fd_ < 0 || ::ioctl(fd_, LOOP_GET_STATUS64, &info) != 0) {
      vb::test::run_command({"losetup", "-d", device});
      return;
    }
    info.lo_flags |= LO_FLAGS_AUTOCLEAR;
    if (::ioctl(fd_, LOOP_SET_STATUS64, &info) != 0) {
      vb::test::run_command({"losetup", "-d", device});
      return;
    }
    device_ = device;
  }
  ~LoopDevice() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  LoopDevice(const LoopDevice &) = delete;
  LoopDevice &operator=(const LoopDevice &) = delete;
  const std::string &path() const { return device_; } // empty if it could not be set up

private:
  std::string device_;
  int fd_ = -1;
};

} // namespace

TEST_CASE("file: a loop device serves random I/O, unaligned buffers, flush, discard, write-zeroes and resize") {
  if (::geteuid() != 0)
    VB_SKIP("loop devices need root");
  if (!vb::test::find_program("losetup"))
    VB_SKIP("losetup not installed");
  ScratchDir dir("/var/tmp");
  const std::string backing = dir.file("backing.img");
  make_file(backing, 16 * kMiB);
  LoopDevice loop_dev(backing, dir.file("losetup.log"));
  if (loop_dev.path().empty())
    VB_SKIP("no loop device: " + vb::test::read_file(dir.file("losetup.log")));
  auto o = options_for(loop_dev.path(), vb::FileBackendOptions::Direct::automatic);
  o.resize_poll_interval = 20ms;
  o.bounce_limit = 256 * 1024;
  std::vector<std::uint64_t> reported;
  {
    Disk d(o);
    vb::test::events_of(d.backend).set_resize_handler([&](std::uint64_t size) { reported.push_back(size); });
    const auto &caps = d.backend.capabilities();
    CHECK(d.backend.direct());
    CHECK(caps.size == 16 * kMiB);
    CHECK(caps.logical_block_size == 512);
    CHECK(caps.identity.rfind("file:" + loop_dev.path() + " (block 7:", 0) == 0);
    CHECK(caps.can_write_zeroes);
    std::vector<char> shadow(16 * kMiB, 0);
    random_io_and_verify(d, loop_dev.path(), shadow, false);
    random_io_and_verify(d, loop_dev.path(), shadow, true);

    Buffer buf(kMiB);
    std::memset(buf.data(), 'L', kMiB);
    for (std::uint64_t at = 0; at < 3 * kMiB; at += kMiB)
      CHECK(run_io(d, vb::Op::write, at, buf.data(), kMiB) == 0);
    CHECK(run_range(d, vb::Op::flush, 0, 0) == 0);
    CHECK(read_back(backing, 0, kMiB) == std::vector<char>(kMiB, 'L')); // flush reached the backing file
    if (caps.can_discard) {
      // The loop driver punches discarded ranges out of its backing file.
      const std::int64_t before = blocks_of(backing);
      CHECK(run_range(d, vb::Op::discard, 0, kMiB) == 0);
      CHECK(blocks_of(backing) <= before - static_cast<std::int64_t>(kMiB / 512));
      // Discards run on the worker thread: a fence or cancel_all right behind them completes
      // each exactly once, those the worker had not started with ECANCELED.
      for (const bool cancel : {false, true}) {
        std::vector<Result> rs(16);
        for (std::size_t i = 0; i < rs.size(); ++i)
          REQUIRE(d.q->submit({vb::Op::discard, 4 * kMiB + i * 65536, 65536, nullptr, 0}, &Result::on_done, &rs[i]) ==
                  0);
        if (cancel)
          d.q->cancel_all();
        else
          d.q->fence();
        const auto all_done = [&] { return std::all_of(rs.begin(), rs.end(), [](auto &r) { return r.calls; }); };
        if (cancel)
          CHECK(all_done()); // before cancel_all returned
        run_until(d.loop, all_done);
        for (const auto &r : rs) {
          CHECK(r.calls == 1);
          CHECK((r.error == 0 || r.error == ECANCELED));
        }
      }
    } else {
      MESSAGE("this loop device does not discard");
    }
    CHECK(run_range(d, vb::Op::write_zeroes, kMiB, kMiB) == 0);
    CHECK(run_range(d, vb::Op::write_zeroes, 2 * kMiB, kMiB, true) == 0);
    CHECK(run_io(d, vb::Op::read, kMiB, buf.data(), kMiB) == 0);
    CHECK(all_zero(buf.data(), kMiB));
    CHECK(run_io(d, vb::Op::read, 2 * kMiB, buf.data(), kMiB) == 0);
    CHECK(all_zero(buf.data(), kMiB));

    // Resize: the backing file grows, losetup -c tells the loop device.
    REQUIRE(::truncate(backing.c_str(), static_cast<off_t>(24 * kMiB)) == 0);
    REQUIRE(vb::test::run_command({"losetup", "-c", loop_dev.path()}) == 0);
    run_until(d.loop, [&] { return !reported.empty(); });
    CHECK(reported.back() == 24 * kMiB);
    std::memset(buf.data(), 'N', kMiB);
    CHECK(run_io(d, vb::Op::write, 23 * kMiB, buf.data(), kMiB) == 0);
    CHECK(run_range(d, vb::Op::flush, 0, 0) == 0);
    CHECK(read_back(backing, 23 * kMiB, kMiB) == std::vector<char>(kMiB, 'N'));
    vb::test::events_of(d.backend).set_resize_handler(nullptr);
  }
}
