// libnbd's asynchronous API driven by vb::EventLoop against a real nbdkit: the pattern
// the NBD backend is built on (aio_get_fd / aio_get_direction / aio_notify_*).
#include "event/event_loop.h"
#include "test_support.h"

#include <doctest/doctest.h>
#include <event2/event.h>
#include <libnbd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace {

struct NbdHandleDeleter {
  void operator()(nbd_handle *h) const { nbd_close(h); }
};

// Glues one libnbd handle to a loop: watch its fd in the direction libnbd asks for.
class NbdOnLoop {
public:
  NbdOnLoop(vb::EventLoop &loop, const std::string &uri) : loop_(loop), h_(nbd_create()) {
    REQUIRE(h_);
    REQUIRE_MESSAGE(nbd_aio_connect_uri(h_.get(), uri.c_str()) == 0, nbd_get_error());
    watch_ = std::make_unique<vb::IoWatch>(loop_, nbd_aio_get_fd(h_.get()), [this](short ev) {
      if (ev & EV_READ)
        nbd_aio_notify_read(h_.get());
      if (ev & EV_WRITE)
        nbd_aio_notify_write(h_.get());
      update();
    });
    update();
    run_until([&] { return nbd_aio_is_ready(h_.get()) || nbd_aio_is_dead(h_.get()); });
    REQUIRE_MESSAGE(nbd_aio_is_ready(h_.get()), nbd_get_error());
  }

  void update() {
    const unsigned dir = nbd_aio_get_direction(h_.get());
    short ev = 0;
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      ev |= EV_READ;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      ev |= EV_WRITE;
    watch_->set_events(ev);
  }

  template <typename Pred> void run_until(Pred done) {
    vb::Timer deadline(loop_, [] { FAIL("nbd operation timed out"); });
    deadline.arm(std::chrono::seconds(20));
    while (!done())
      loop_.run_once(true);
  }

  nbd_handle *get() { return h_.get(); }

private:
  vb::EventLoop &loop_;
  std::unique_ptr<nbd_handle, NbdHandleDeleter> h_;
  std::unique_ptr<vb::IoWatch> watch_;
};

struct Completion {
  int *pending;
  int error = -1;
  static int on_complete(void *user, int *error) {
    auto *self = static_cast<Completion *>(user);
    self->error = *error;
    --*self->pending;
    return 1; // retire the command
  }
};

} // namespace

TEST_CASE("libnbd on the event loop: concurrent writes then reads against nbdkit memory") {
  if (!vb::test::find_program("nbdkit"))
    VB_SKIP("nbdkit not installed (scripts/install-deps installs it)");
  vb::test::TempDir dir;
  vb::test::NbdkitServer server(dir, {"memory", "8M"});
  vb::EventLoop loop;
  NbdOnLoop nbd(loop, server.uri());
  CHECK(nbd_get_size(nbd.get()) == 8 << 20);

  constexpr int n = 16;
  constexpr std::size_t len = 64 * 1024;
  std::vector<std::vector<char>> out(n, std::vector<char>(len));
  std::vector<std::vector<char>> in(n, std::vector<char>(len));
  for (int i = 0; i < n; ++i)
    std::memset(out[static_cast<std::size_t>(i)].data(), 'a' + i, len);

  int pending = 0;
  std::vector<Completion> done(n, Completion{&pending});
  for (int i = 0; i < n; ++i) {
    auto &c = done[static_cast<std::size_t>(i)];
    ++pending;
    REQUIRE(nbd_aio_pwrite(nbd.get(), out[static_cast<std::size_t>(i)].data(), len, static_cast<std::uint64_t>(i) * len,
                           {&Completion::on_complete, &c, nullptr}, 0) > 0);
  }
  nbd.update();
  nbd.run_until([&] { return pending == 0; });
  for (auto &c : done)
    CHECK(c.error == 0);

  for (int i = 0; i < n; ++i) {
    auto &c = done[static_cast<std::size_t>(i)];
    ++pending;
    REQUIRE(nbd_aio_pread(nbd.get(), in[static_cast<std::size_t>(i)].data(), len, static_cast<std::uint64_t>(i) * len,
                          {&Completion::on_complete, &c, nullptr}, 0) > 0);
  }
  nbd.update();
  nbd.run_until([&] { return pending == 0; });
  for (int i = 0; i < n; ++i) {
    CAPTURE(i);
    CHECK(done[static_cast<std::size_t>(i)].error == 0);
    CHECK(in[static_cast<std::size_t>(i)] == out[static_cast<std::size_t>(i)]);
  }
}

TEST_CASE("errors injected by nbdkit's error filter reach the completion") {
  if (!vb::test::find_program("nbdkit"))
    VB_SKIP("nbdkit not installed (scripts/install-deps installs it)");
  vb::test::TempDir dir;
  vb::test::NbdkitServer server(dir, {"memory", "1M", "error-pread=EIO", "error-pread-rate=100%"}, {"--filter=error"});
  vb::EventLoop loop;
  NbdOnLoop nbd(loop, server.uri());
  int pending = 1;
  Completion c{&pending};
  std::vector<char> buf(4096);
  REQUIRE(nbd_aio_pread(nbd.get(), buf.data(), buf.size(), 0, {&Completion::on_complete, &c, nullptr}, 0) > 0);
  nbd.update();
  nbd.run_until([&] { return pending == 0; });
  CHECK(c.error == EIO);
}
