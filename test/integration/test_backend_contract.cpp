// One contract, every backend: the same test body runs against the memory backend, nbdkit (the nbd
// backend), tgtd (the iscsi backend) and a file (the file backend), each behind the same
// include/vduse-bridge/backend.h, the way libnbd's interop tests run one body against several
// servers. What a backend must do for the engine, whatever it talks to:
//   - sane capabilities (size a whole number of blocks, block sizes powers of two);
//   - data written reads back, with scattered buffers, anywhere on the disk;
//   - every accepted request completes exactly once, many in flight at a time;
//   - a request past the end fails (a positive errno) and changes nothing;
//   - flush, discard and write-zeroes work when offered (zeroes read back as zeros);
//   - fence() on an idle queue harms nothing and I/O goes on after it; cancel_all() before the
//     queue goes away completes nothing that was done.
#include "backend_events.h"
#include "file/file_backend.h"
#include "iscsi/iscsi_backend.h"
#include "memory/memory_backend.h"
#include "nbd/nbd_backend.h"
#include "test_support.h"

#include "event/event_loop.h"

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using vb::test::Result;
using vb::test::TempDir;

namespace {

constexpr std::uint64_t kSize = 16 << 20;

// One backend under test, with whatever serves it.
struct Subject {
  std::string name;
  std::unique_ptr<TempDir> dir;
  std::unique_ptr<vb::test::NbdkitServer> nbdkit;
  std::unique_ptr<vb::test::TgtdServer> tgtd;
  std::unique_ptr<vb::Backend> backend;
};

using MakeSubject = std::function<std::optional<Subject>()>; // nullopt: skipped (tool missing)

std::optional<Subject> memory_subject() {
  Subject s{"memory", nullptr, nullptr, nullptr, std::make_unique<vb::MemoryBackend>(kSize)};
  return s;
}

std::optional<Subject> nbd_subject() {
  if (!vb::test::find_program("nbdkit")) {
    vb::test::announce_skip("nbdkit not installed: the nbd backend's contract is not checked");
    return std::nullopt;
  }
  Subject s;
  s.name = "nbd";
  s.dir = std::make_unique<TempDir>();
  s.nbdkit = std::make_unique<vb::test::NbdkitServer>(*s.dir, std::vector<std::string>{"memory", "16M"});
  vb::NbdOptions o;
  o.uri = s.nbdkit->uri();
  o.connections = 2;
  s.backend = std::make_unique<vb::NbdBackend>(o);
  return s;
}

std::optional<Subject> iscsi_subject() {
  if (!vb::test::find_program("tgtd") || !vb::test::find_program("tgtadm")) {
    vb::test::announce_skip("tgtd not installed: the iscsi backend's contract is not checked");
    return std::nullopt;
  }
  Subject s;
  s.name = "iscsi";
  s.dir = std::make_unique<TempDir>();
  s.tgtd = std::make_unique<vb::test::TgtdServer>(*s.dir);
  s.tgtd->add_lun(1, kSize);
  vb::IscsiOptions o;
  o.uri = s.tgtd->uri(1);
  s.backend = std::make_unique<vb::IscsiBackend>(o);
  return s;
}

std::optional<Subject> file_subject() {
  Subject s;
  s.name = "file";
  s.dir = std::make_unique<TempDir>();
  const std::string path = s.dir->file("disk.img");
  { std::ofstream(path).close(); }
  std::filesystem::resize_file(path, kSize);
  vb::FileBackendOptions o;
  o.path = path;
  s.backend = std::make_unique<vb::FileBackend>(o);
  return s;
}

// Runs the loop until done() or 20 s; false on timeout.
bool run_until(vb::EventLoop &loop, const std::function<bool()> &done) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    loop.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// One request to completion: its errno (0 = done), the submit's refusal included.
int run(vb::EventLoop &loop, vb::BackendQueue &q, const vb::Request &req) {
  Result r;
  const int rc = q.submit(req, &Result::on_done, &r);
  if (rc != 0) {
    CHECK(rc > 0); // errnos are positive across the interface
    return rc;
  }
  REQUIRE(run_until(loop, [&] { return r.calls > 0; }));
  run_until(loop, [] { return true; });
  CHECK(r.calls == 1);
  return r.error;
}

std::vector<char> pattern(std::size_t n, unsigned seed) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<char>((i * 131 + seed * 7 + (i >> 9)) & 0xff);
  return v;
}

void contract(Subject &s) {
  CAPTURE(s.name);
  s.backend->open(vb::test::new_events(*s.backend));
  const vb::BackendCapabilities &caps = s.backend->capabilities();
  const std::uint32_t lbs = caps.logical_block_size;
  CHECK(caps.size == kSize);
  CHECK((lbs >= 512 && lbs <= 4096 && (lbs & (lbs - 1)) == 0));
  CHECK(caps.physical_block_size >= lbs);
  CHECK(caps.size % lbs == 0);
  CHECK_FALSE(caps.identity.empty());
  CHECK(std::string(s.backend->kind()) == s.name);
  CHECK(vb::test::events_of(*s.backend).health().state == vb::BackendEvents::State::connected);

  vb::EventLoop loop;
  auto q = s.backend->open_queue(loop, 0);
  REQUIRE(q);

  // Scattered buffers: three pieces, block multiples in total, at the start, the middle and the end.
  for (const std::uint64_t at : {std::uint64_t{0}, kSize / 2 + 3 * lbs, kSize - 24 * lbs}) {
    CAPTURE(at);
    std::vector<char> out = pattern(24 * lbs, static_cast<unsigned>(at / lbs));
    iovec wv[3] = {{out.data(), 3 * lbs}, {out.data() + 3 * lbs, 13 * lbs}, {out.data() + 16 * lbs, 8 * lbs}};
    CHECK(run(loop, *q, {vb::Op::write, at, out.size(), wv, 3}) == 0);
    std::vector<char> in(out.size());
    iovec rv[2] = {{in.data(), 5 * lbs}, {in.data() + 5 * lbs, 19 * lbs}};
    CHECK(run(loop, *q, {vb::Op::read, at, in.size(), rv, 2}) == 0);
    CHECK(in == out);
  }

  // Many in flight: each completes exactly once, and each reads back its own data.
  constexpr int n = 48;
  std::vector<std::vector<char>> bufs;
  std::vector<iovec> iovs(n);
  std::vector<Result> results(n);
  for (int i = 0; i < n; ++i)
    bufs.push_back(pattern(lbs * 8, 1000 + static_cast<unsigned>(i)));
  for (int i = 0; i < n; ++i) {
    iovs[static_cast<std::size_t>(i)] = {bufs[static_cast<std::size_t>(i)].data(), lbs * 8};
    const vb::Request w{vb::Op::write, std::uint64_t{1} << 20 | std::uint64_t(i) * lbs * 8, lbs * 8,
                        &iovs[static_cast<std::size_t>(i)], 1};
    REQUIRE(q->submit(w, &Result::on_done, &results[static_cast<std::size_t>(i)]) == 0);
  }
  CHECK(run_until(loop, [&] {
    for (const auto &r : results)
      if (r.calls == 0)
        return false;
    return true;
  }));
  run_until(loop, [] { return true; });
  for (int i = 0; i < n; ++i) {
    CAPTURE(i);
    CHECK(results[static_cast<std::size_t>(i)].calls == 1);
    CHECK(results[static_cast<std::size_t>(i)].error == 0);
    std::vector<char> in(lbs * 8);
    iovec rv{in.data(), in.size()};
    CHECK(run(loop, *q, {vb::Op::read, std::uint64_t{1} << 20 | std::uint64_t(i) * lbs * 8, in.size(), &rv, 1}) == 0);
    CHECK(in == bufs[static_cast<std::size_t>(i)]);
  }

  // Past the end: refused or failed, with a positive errno, and the last block is unchanged.
  {
    std::vector<char> last(lbs), junk(2 * lbs, 'j');
    iovec lv{last.data(), last.size()}, jv{junk.data(), junk.size()};
    CHECK(run(loop, *q, {vb::Op::read, kSize - lbs, lbs, &lv, 1}) == 0);
    const int err = run(loop, *q, {vb::Op::write, kSize - lbs, junk.size(), &jv, 1});
    CHECK(err > 0);
    std::vector<char> again(lbs);
    iovec av{again.data(), again.size()};
    CHECK(run(loop, *q, {vb::Op::read, kSize - lbs, lbs, &av, 1}) == 0);
    CHECK(again == last);
  }

  if (caps.can_flush)
    CHECK(run(loop, *q, {vb::Op::flush, 0, 0, nullptr, 0}) == 0);
  if (caps.can_write_zeroes) {
    CHECK(run(loop, *q, {vb::Op::write_zeroes, 0, 16 * lbs, nullptr, 0}) == 0);
    std::vector<char> in(16 * lbs, 'x');
    iovec rv{in.data(), in.size()};
    CHECK(run(loop, *q, {vb::Op::read, 0, in.size(), &rv, 1}) == 0);
    CHECK(in == std::vector<char>(in.size(), 0));
  }
  if (caps.can_discard)
    CHECK(run(loop, *q, {vb::Op::discard, kSize / 2, 64 * lbs, nullptr, 0}) == 0);

  // An idle fence completes nothing, and I/O goes on after it (a reset of an idle device).
  q->fence();
  std::vector<char> out = pattern(lbs, 77), in(lbs);
  iovec wv{out.data(), out.size()}, rv{in.data(), in.size()};
  CHECK(run(loop, *q, {vb::Op::write, 2 * lbs, lbs, &wv, 1}) == 0);
  CHECK(run(loop, *q, {vb::Op::read, 2 * lbs, lbs, &rv, 1}) == 0);
  CHECK(in == out);
  // cancel_all comes last: it prepares the queue's end.
  q->cancel_all();
  q.reset();
  run_until(loop, [] { return true; });
}

void check(const MakeSubject &make) {
  auto s = make();
  if (!s)
    return;
  contract(*s);
}

} // namespace

TEST_CASE("contract: memory") { check(memory_subject); }
TEST_CASE("contract: nbd against nbdkit") { check(nbd_subject); }
TEST_CASE("contract: iscsi against tgtd") { check(iscsi_subject); }
TEST_CASE("contract: file") { check(file_subject); }
