#include "backend_events.h"
#include "event/event_loop.h"
#include "memory/memory_backend.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
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
