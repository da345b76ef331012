// The engine without a kernel: a userspace driver lays out a split ring in ordinary memory,
// a QueueWorker serves it on its own thread with a real backend, and the test checks what lands
// on the used ring, in the status bytes and in the backend.
#include "backend_events.h"
#include "event/event_loop.h"
#include "export/block_export.h"
#include "export/queue_worker.h"
#include "memory/memory_backend.h"
#include "recovery/recovery_state.h"
#include "ring_driver.h"
#include "test_support.h"
#include "virtio_blk/blk_device.h"

#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <linux/virtio_blk.h>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

using vb::test::ArenaMemory;
using vb::test::Buf;
using vb::test::RingDriver;

namespace {

class FakeHost final : public vb::virtio::QueueHost {
public:
  void set_kickfd(unsigned, int fd) override { kickfd = fd; }
  int inject_vq_irq(unsigned) const noexcept override {
    ++irqs;
    return 0;
  }
  std::atomic<int> kickfd{-1};
  mutable std::atomic<int> irqs{0};
};

// Holds every request until the test releases it: lets tests complete out of order, after a
// reset, or never.
class HoldingBackend final : public vb::Backend {
public:
  struct Held {
    vb::Request req;
    vb::CompletionFn done;
    void *ctx;
    bool sent;        // reached the "server"; false while server_down (held for a reconnect)
    std::string data; // a write's bytes as they were when it was accepted
  };
  class Queue final : public vb::BackendQueue {
  public:
    explicit Queue(HoldingBackend &b) : b_(b) {}
    int submit(const vb::Request &req, vb::CompletionFn done, void *ctx) noexcept override {
      std::lock_guard lock(b_.mu);
      b_.held.push_back({req, done, ctx, !b_.server_down, {}});
      b_.submitted.push_back(req.offset);
      return 0;
    }
    // As every backend does when its queue goes away (the worker's destructor).
    void cancel_all() noexcept override {
      std::vector<Held> all;
      {
        std::lock_guard lock(b_.mu);
        all.swap(b_.held);
      }
      for (const Held &h : all)
        h.done(h.ctx, ECANCELED);
    }
    // As a network backend does: what was never sent is dropped, the rest is left to finish.
    void fence() noexcept override {
      std::lock_guard lock(b_.mu);
      ++b_.fences;
      for (std::size_t i = 0; i < b_.held.size();) {
        if (b_.held[i].sent) {
          ++i;
          continue;
        }
        const Held h = b_.held[i];
        b_.held.erase(b_.held.begin() + static_cast<long>(i));
        b_.loop->post([h] { h.done(h.ctx, ECANCELED); });
      }
    }
    // As a network backend does when it drops the connection: what was on it completes with
    // ECANCELED and its buffers are never touched again.
    void abandon_fenced() noexcept override {
      std::vector<Held> sent;
      {
        std::lock_guard lock(b_.mu);
        ++b_.abandons;
        for (std::size_t i = 0; i < b_.held.size();) {
          if (!b_.held[i].sent) {
            ++i;
            continue;
          }
          sent.push_back(b_.held[i]);
          b_.held.erase(b_.held.begin() + static_cast<long>(i));
        }
      }
      for (const Held &h : sent)
        h.done(h.ctx, ECANCELED);
    }

  private:
    HoldingBackend &b_;
  };
  HoldingBackend() {
    caps.size = 1 << 20;
    caps.can_flush = true;
  }
  void connect() override {}
  const vb::BackendCapabilities &capabilities() const override { return caps; }
  std::unique_ptr<vb::BackendQueue> open_queue(vb::EventLoop &l, unsigned) override {
    loop = &l;
    return std::make_unique<Queue>(*this);
  }
  const char *kind() const noexcept override { return "holding"; }
  std::size_t count() {
    std::lock_guard lock(mu);
    return held.size();
  }
  // Completes the held request at position i (on the loop thread).
  void release(std::size_t i, int error) {
    Held h;
    {
      std::lock_guard lock(mu);
      h = held[i];
      held.erase(held.begin() + static_cast<long>(i));
    }
    loop->post([h, error] { h.done(h.ctx, error); });
  }

  // Completes held request i after filling its buffers with fill, as a read's answer does.
  void answer_read(std::size_t i, char fill) {
    Held h;
    {
      std::lock_guard lock(mu);
      h = held[i];
      held.erase(held.begin() + static_cast<long>(i));
    }
    loop->post([h, fill] {
      for (int k = 0; k < h.req.iovcnt; ++k)
        std::memset(h.req.iov[k].iov_base, fill, h.req.iov[k].iov_len);
      h.done(h.ctx, 0);
    });
  }

  // The bytes of held request i's buffers, read now.
  std::string held_data(std::size_t i) {
    std::lock_guard lock(mu);
    std::string out;
    for (int k = 0; k < held[i].req.iovcnt; ++k)
      out.append(static_cast<const char *>(held[i].req.iov[k].iov_base), held[i].req.iov[k].iov_len);
    return out;
  }

  vb::BackendCapabilities caps;
  vb::EventLoop *loop = nullptr;
  std::mutex mu;
  std::vector<Held> held;
  std::vector<std::uint64_t> submitted; // offsets, in submission order
  bool server_down = false;
  int fences = 0;
  int abandons = 0;
};

struct Engine {
  Engine(vb::Backend &backend, std::uint16_t num = 16, bool event_idx = false, std::chrono::microseconds busy_poll = {})
      : mem(4 << 20), drv(mem, num) {
    backend.open(vb::test::new_events(backend));
    vb::blk::DeviceSettings settings;
    settings.serial = "engine-test-serial";
    params = vb::blk::make_device_params(backend.capabilities(), settings);
    worker = std::make_unique<vb::QueueWorker>("test", 0, host, mem, backend, params, nullptr, busy_poll);
    REQUIRE(worker->start_sync(drv.layout(), 0, event_idx));
  }
  ~Engine() { worker.reset(); }

  void kick() {
    const std::uint64_t one = 1;
    REQUIRE(::write(host.kickfd, &one, sizeof one) == sizeof one);
  }
  // Waits until the used index reaches n (bounded, no fixed sleep).
  void wait_used(std::uint16_t n) {
    REQUIRE(vb::test::wait_until([&] { return drv.used_idx() == n; }, std::chrono::seconds(10)));
  }
  std::uint64_t header(std::uint32_t type, std::uint64_t sector) {
    const auto h = drv.alloc(16);
    std::memcpy(mem.ptr(h), &type, 4);
    std::memset(mem.ptr(h + 4), 0, 4);
    std::memcpy(mem.ptr(h + 8), &sector, 8);
    return h;
  }
  std::uint8_t status(std::uint64_t iova) { return __atomic_load_n(mem.ptr(iova), __ATOMIC_ACQUIRE); }

  ArenaMemory mem;
  RingDriver drv;
  FakeHost host;
  vb::blk::DeviceParams params;
  std::unique_ptr<vb::QueueWorker> worker;
};

} // namespace

TEST_CASE("engine: a write then a read through chains split at odd byte positions") {
  vb::MemoryBackend backend(1 << 20);
  Engine e(backend);
  // Header split 5 + 11 bytes; 4096 bytes of data in pieces of 1000, 3000, 96; status alone.
  const auto h = e.header(VIRTIO_BLK_T_OUT, 8);
  const auto data = e.drv.alloc(4096);
  for (int i = 0; i < 4096; ++i)
    e.mem.ptr(data)[i] = static_cast<std::uint8_t>(i * 31 + 7);
  const auto st = e.drv.alloc(1);
  e.drv.add_chain({{h, 5, false},
                   {h + 5, 11, false},
                   {data, 1000, false},
                   {data + 1000, 3000, false},
                   {data + 4000, 96, false},
                   {st, 1, true}});
  e.kick();
  e.wait_used(1);
  CHECK(e.status(st) == VIRTIO_BLK_S_OK);
  CHECK(e.drv.used_elem(0).len == 1);

  // Read it back through an indirect table: the data and the status byte share the writable
  // buffers, the status being the very last byte.
  const auto rh = e.header(VIRTIO_BLK_T_IN, 8);
  const auto in = e.drv.alloc(4097);
  e.drv.add_indirect({{rh, 16, false}, {in, 7, true}, {in + 7, 4090, true}});
  e.kick();
  e.wait_used(2);
  CHECK(e.status(in + 4096) == VIRTIO_BLK_S_OK);
  CHECK(std::memcmp(e.mem.ptr(in), e.mem.ptr(data), 4096) == 0);
  CHECK(e.drv.used_elem(1).len == 4097);
  CHECK(e.host.irqs.load() >= 1);
}

TEST_CASE("engine: flush, get-id, discard, write-zeroes, unsupported and out-of-range requests") {
  vb::MemoryBackend backend(1 << 20);
  Engine e(backend, 64); // room for all the descriptors below
  auto simple = [&](std::uint32_t type, std::uint64_t sector, std::vector<Buf> middle) {
    const auto h = e.header(type, sector);
    const auto st = e.drv.alloc(1);
    *e.mem.ptr(st) = 0xff;
    std::vector<Buf> bufs{{h, 16, false}};
    bufs.insert(bufs.end(), middle.begin(), middle.end());
    bufs.push_back({st, 1, true});
    e.drv.add_chain(bufs);
    return st;
  };
  const auto flush = simple(VIRTIO_BLK_T_FLUSH, 0, {});
  const auto id = e.drv.alloc(20);
  const auto getid = simple(VIRTIO_BLK_T_GET_ID, 0, {{id, 20, true}});
  const auto seg = e.drv.alloc(16);
  const std::uint64_t seg_sector = 16;
  const std::uint32_t seg_num = 8, seg_flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
  std::memcpy(e.mem.ptr(seg), &seg_sector, 8);
  std::memcpy(e.mem.ptr(seg + 8), &seg_num, 4);
  std::memcpy(e.mem.ptr(seg + 12), &seg_flags, 4);
  const auto zeroes = simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, {{seg, 16, false}});
  const auto unmap_discard = simple(VIRTIO_BLK_T_DISCARD, 0, {{seg, 16, false}}); // UNMAP on discard
  const auto unknown = simple(77, 0, {});
  const auto buf = e.drv.alloc(4096);
  const auto beyond = simple(VIRTIO_BLK_T_IN, (1 << 20) / 512 - 4, {{buf, 4096, true}});
  const auto overflow = simple(VIRTIO_BLK_T_IN, ~0ULL / 512, {{buf, 4096, true}});
  e.kick();
  e.wait_used(7);
  CHECK(e.status(flush) == VIRTIO_BLK_S_OK);
  CHECK(e.status(getid) == VIRTIO_BLK_S_OK);
  CHECK(std::memcmp(e.mem.ptr(id), "engine-test-serial\0\0", 20) == 0);
  CHECK(e.status(zeroes) == VIRTIO_BLK_S_OK);
  CHECK(e.status(unmap_discard) == VIRTIO_BLK_S_UNSUPP);
  CHECK(e.status(unknown) == VIRTIO_BLK_S_UNSUPP);
  CHECK(e.status(beyond) == VIRTIO_BLK_S_IOERR);
  CHECK(e.status(overflow) == VIRTIO_BLK_S_IOERR);
}

TEST_CASE("engine: hostile chains are failed one by one and the queue keeps serving") {
  vb::MemoryBackend backend(1 << 20);
  Engine e(backend);
  const auto st = e.drv.alloc(1);
  // 1: buffer outside guest memory, status byte intact -> IOERR written.
  e.drv.add_chain({{0xdead0000, 16, false}, {st, 1, true}});
  // 2: a self-loop -> no safe status byte, used.len 0.
  const auto slot = e.drv.slot();
  RingDriver::set_desc(e.drv.desc(slot), st, 1, vb::virtio::kDescWrite | vb::virtio::kDescNext, slot);
  e.drv.publish(slot);
  // 3: header only 7 bytes long -> IOERR.
  const auto h = e.header(VIRTIO_BLK_T_IN, 0);
  const auto st3 = e.drv.alloc(1);
  e.drv.add_chain({{h, 7, false}, {st3, 1, true}});
  // 4: a good flush afterwards.
  const auto h4 = e.header(VIRTIO_BLK_T_FLUSH, 0);
  const auto st4 = e.drv.alloc(1);
  e.drv.add_chain({{h4, 16, false}, {st4, 1, true}});
  e.kick();
  e.wait_used(4);
  CHECK(e.status(st) == VIRTIO_BLK_S_IOERR);
  CHECK(e.drv.used_elem(0).len == 1);
  CHECK(e.drv.used_elem(1).len == 0);
  CHECK(e.status(st3) == VIRTIO_BLK_S_IOERR);
  CHECK(e.status(st4) == VIRTIO_BLK_S_OK);
  const auto stats = e.worker->stats_sync();
  CHECK(stats.bad_chains == 2);
}

TEST_CASE("engine: out-of-order completions each land once, and results after a reset are dropped") {
  HoldingBackend backend;
  Engine e(backend);
  std::vector<std::uint64_t> st;
  for (int i = 0; i < 3; ++i) {
    const auto h = e.header(VIRTIO_BLK_T_FLUSH, 0);
    st.push_back(e.drv.alloc(1));
    e.drv.add_chain({{h, 16, false}, {st.back(), 1, true}});
  }
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 3; }));
  backend.release(2, 0); // the last one first
  e.wait_used(1);
  CHECK(e.drv.used_elem(0).id == 4); // heads are 0, 2, 4 (two descriptors each)
  backend.release(0, EIO);
  e.wait_used(2);
  CHECK(e.drv.used_elem(1).id == 0);
  CHECK(e.status(st[0]) == VIRTIO_BLK_S_IOERR);
  CHECK(e.status(st[2]) == VIRTIO_BLK_S_OK);

  // The driver resets the queue with one request still in the backend: when it completes later,
  // nothing may be written to the ring any more.
  e.worker->stop_sync();
  backend.release(0, 0);
  CHECK(e.worker->drain_sync(5000));
  CHECK(e.drv.used_idx() == 2);
  CHECK(e.status(st[1]) == 0); // untouched (alloc zeroed it)
}

TEST_CASE("engine: a head offered twice stops the queue instead of completing it twice") {
  HoldingBackend backend;
  Engine e(backend);
  const auto h = e.header(VIRTIO_BLK_T_FLUSH, 0);
  const auto st = e.drv.alloc(1);
  const auto head = e.drv.add_chain({{h, 16, false}, {st, 1, true}});
  e.drv.publish(head); // same head again while in flight
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; }));
  backend.release(0, 0);
  e.wait_used(1);
  CHECK(e.worker->drain_sync(5000));
  CHECK(e.drv.used_idx() == 1);
}

TEST_CASE("engine: with EVENT_IDX the driver is interrupted only when it asked") {
  vb::MemoryBackend backend(1 << 20);
  Engine e(backend, 16, true);
  auto flush = [&] {
    const auto h = e.header(VIRTIO_BLK_T_FLUSH, 0);
    const auto st = e.drv.alloc(1);
    e.drv.add_chain({{h, 16, false}, {st, 1, true}});
  };
  flush();
  e.kick();
  e.wait_used(1);
  INFO("interrupts: ", e.host.irqs.load());
  REQUIRE(vb::test::wait_until([&] { return e.host.irqs.load() == 1; }));
  // Ask for an interrupt only after 3 more completions (used_event = 3 -> fires when idx passes 3).
  e.drv.used_event() = 3;
  flush();
  flush();
  e.kick();
  e.wait_used(3);
  CHECK(e.worker->drain_sync(1000));
  CHECK(e.host.irqs.load() == 1);
  flush();
  e.kick();
  e.wait_used(4);
  REQUIRE(vb::test::wait_until([&] { return e.host.irqs.load() == 2; }));
}

// Issue 12, item 1: the kernel retires every mapping (a VMM's memory map changed after
// DRIVER_OK, as SeaBIOS's shadow RAM does); the rings must be translated again, or completions
// go to memory the driver no longer looks at and the guest hangs.
TEST_CASE("engine: after the driver's memory moves, the rings are translated again and requests complete") {
  vb::MemoryBackend backend(1 << 20);
  Engine e(backend);
  auto flush = [&] {
    const auto h = e.header(VIRTIO_BLK_T_FLUSH, 0);
    const auto st = e.drv.alloc(1);
    e.drv.add_chain({{h, 16, false}, {st, 1, true}});
    return st;
  };
  flush();
  e.kick();
  e.wait_used(1);
  e.worker->stats_sync(); // the worker is idle: nothing of it races the copy below
  e.mem.relocate();       // UPDATE_IOTLB over everything
  e.worker->remap_sync();
  CHECK(e.mem.retired_alive() == 0); // the rings no longer pin the old mapping
  const auto st = flush();
  e.kick();
  e.wait_used(2);
  CHECK(e.status(st) == VIRTIO_BLK_S_OK);
}

// Item 1, second half: a request in flight keeps the mapping it was given until it completes; a
// write held in the backend across the move still carries the driver's bytes, not other memory.
TEST_CASE("engine: a write held across a remap keeps the driver's bytes, and the old mapping goes after it") {
  HoldingBackend backend;
  Engine e(backend);
  const auto h = e.header(VIRTIO_BLK_T_OUT, 8);
  const auto data = e.drv.alloc(4096);
  std::memset(e.mem.ptr(data), 0x5A, 4096);
  const auto st = e.drv.alloc(1);
  e.drv.add_chain({{h, 16, false}, {data, 4096, false}, {st, 1, true}});
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; }));
  e.worker->stats_sync(); // idle, as above
  e.mem.relocate();
  e.worker->remap_sync();
  CHECK(backend.held_data(0) == std::string(4096, '\x5A'));
  CHECK(e.mem.retired_alive() == 1); // pinned by the write in flight
  backend.release(0, 0);
  e.wait_used(1);
  CHECK(e.status(st) == VIRTIO_BLK_S_OK);
  REQUIRE(vb::test::wait_until([&] { return e.mem.retired_alive() == 0; }));
}

// Item 2: a reset fences the old driver's I/O. What the backend held unsent (the server was
// away) never reaches it; what it had sent finishes before the new driver's first request goes.
TEST_CASE("engine: after a reset nothing held from before reaches the backend, and new I/O waits for what was sent") {
  HoldingBackend backend;
  Engine e(backend);
  auto write = [&](std::uint64_t sector) {
    const auto h = e.header(VIRTIO_BLK_T_OUT, sector);
    const auto data = e.drv.alloc(512);
    const auto st = e.drv.alloc(1);
    e.drv.add_chain({{h, 16, false}, {data, 512, false}, {st, 1, true}});
  };
  write(1); // reaches the server
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; }));
  {
    std::lock_guard lock(backend.mu);
    backend.server_down = true;
  }
  write(2); // held by the backend for a reconnect
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 2; }));

  e.worker->stop_sync(); // SET_STATUS 0
  CHECK(backend.fences == 1);
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; })); // the unsent one is gone
  {
    std::lock_guard lock(backend.mu);
    backend.server_down = false;
  }
  // The new driver starts over and writes sector 1 again.
  REQUIRE(e.worker->start_sync(e.drv.layout(), e.worker->next_avail_sync(), false));
  write(1);
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return e.worker->stats_sync().requests == 3; })); // taken from the ring
  CHECK(backend.count() == 1); // but waits for the old write still at the server
  backend.release(0, 0);       // the old write finishes (its result is dropped)
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; }));
  backend.release(0, 0);
  e.wait_used(1);
  std::lock_guard lock(backend.mu);
  CHECK(backend.submitted == std::vector<std::uint64_t>{512, 1024, 512});
}

// The reset is answered only once the old driver's requests no longer touch its memory: a read
// on the wire that lands later would overwrite what the new driver (a guest rebooting in a VMM)
// already keeps there. settle_queues() waits for them, and abandons them at the deadline.
TEST_CASE("engine: after a reset, settle waits for a read from before it, then abandons what is left") {
  HoldingBackend backend;
  Engine e(backend);
  auto read = [&] {
    const auto h = e.header(VIRTIO_BLK_T_IN, 8);
    const auto data = e.drv.alloc(512);
    const auto st = e.drv.alloc(1);
    e.drv.add_chain({{h, 16, false}, {data, 512, true}, {st, 1, true}});
    e.kick();
    REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; }));
    return data;
  };
  using Clock = std::chrono::steady_clock;

  SUBCASE("answered within the budget: settle returns once the data has landed") {
    const auto data = read();
    e.worker->stop_sync();
    std::atomic<bool> settled{false};
    std::thread control([&] {
      const auto now = Clock::now();
      CHECK(vb::settle_queues({e.worker.get()}, now + std::chrono::seconds(10), now + std::chrono::seconds(11)));
      settled = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK_FALSE(settled.load()); // the read is still at the server: the reset is not answered
    backend.answer_read(0, 0x5a);
    control.join();
    CHECK(settled.load());
    CHECK(e.mem.ptr(data)[0] == 0x5a); // landed before the answer
    CHECK(backend.abandons == 0);
  }
  SUBCASE("never answered: abandoned at the deadline, completed, and nothing touches the buffer") {
    read();
    e.worker->stop_sync();
    const auto start = Clock::now();
    CHECK(vb::settle_queues({e.worker.get()}, start + std::chrono::milliseconds(300), start + std::chrono::seconds(2)));
    const auto took = Clock::now() - start;
    CHECK(took >= std::chrono::milliseconds(300));
    CHECK(took < std::chrono::milliseconds(1500));
    CHECK(backend.abandons == 1);
    CHECK(backend.count() == 0);
  }
  SUBCASE("a backend that cannot abandon: settle gives up at the second deadline") {
    read();
    e.worker->stop_sync();
    {
      std::lock_guard lock(backend.mu);
      backend.held[0].sent = false; // the double's abandon then leaves it, as a file backend would
    }
    const auto start = Clock::now();
    CHECK_FALSE(vb::settle_queues({e.worker.get()}, start + std::chrono::milliseconds(100),
                                  start + std::chrono::milliseconds(400)));
    CHECK(backend.abandons == 1);
    backend.release(0, 0);
    CHECK(e.worker->drain_sync(5000));
  }
  // The new driver's queue works afterwards.
  REQUIRE(e.worker->start_sync(e.drv.layout(), e.worker->next_avail_sync(), false));
  const auto used = e.drv.used_idx();
  read();
  backend.release(0, 0);
  e.wait_used(static_cast<std::uint16_t>(used + 1));
}

// Review finding: the queues were settled one after the other, and a queue that could not be
// abandoned used up the time of the ones after it, which were then never abandoned.
TEST_CASE("engine: a reset abandons every queue's old requests, whatever the other queues do") {
  HoldingBackend stuck_backend, other_backend;
  Engine stuck(stuck_backend), other(other_backend);
  for (Engine *e : {&stuck, &other}) {
    const auto h = e->header(VIRTIO_BLK_T_IN, 8);
    const auto data = e->drv.alloc(512);
    const auto st = e->drv.alloc(1);
    e->drv.add_chain({{h, 16, false}, {data, 512, true}, {st, 1, true}});
    e->kick();
  }
  REQUIRE(vb::test::wait_until([&] { return stuck_backend.count() == 1 && other_backend.count() == 1; }));
  stuck.worker->stop_sync();
  other.worker->stop_sync();
  {
    std::lock_guard lock(stuck_backend.mu);
    stuck_backend.held[0].sent = false; // the double's abandon leaves it: this queue cannot settle
  }
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(vb::settle_queues({stuck.worker.get(), other.worker.get()}, start + std::chrono::milliseconds(100),
                                start + std::chrono::milliseconds(400)));
  CHECK(stuck_backend.abandons == 1);
  CHECK(other_backend.abandons == 1); // abandoned too, though it comes second
  CHECK(other_backend.count() == 0);
  stuck_backend.release(0, 0);
  CHECK(stuck.worker->drain_sync(5000));
}

TEST_CASE("reset budget: 5 s, or a third of control-timeout when shorter") {
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  CHECK(vb::reset_budget(seconds(0)) == milliseconds(5000));
  CHECK(vb::reset_budget(seconds(30)) == milliseconds(5000));
  CHECK(vb::reset_budget(seconds(3)) == milliseconds(1000));
  CHECK(vb::reset_budget(seconds(1)) == milliseconds(333));
}

// Item 10: a malformed chain whose head is still in flight must not be answered: the head
// would be handed back twice.
TEST_CASE("engine: a malformed chain reusing a head in flight stops the queue instead of completing it twice") {
  HoldingBackend backend;
  Engine e(backend);
  const auto h = e.header(VIRTIO_BLK_T_FLUSH, 0);
  const auto st = e.drv.alloc(1);
  const auto head = e.drv.add_chain({{h, 16, false}, {st, 1, true}});
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 1; }));
  // The driver rewrites the in-flight head's descriptor into garbage and offers it again.
  RingDriver::set_desc(e.drv.desc(head), 0xdead0000, 16, 0, 0);
  e.drv.publish(head);
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return e.worker->stats_sync().broken; }));
  CHECK(e.drv.used_idx() == 0);
  backend.release(0, 0);
  e.wait_used(1);
  CHECK(e.worker->drain_sync(5000));
  CHECK(e.drv.used_idx() == 1);
  CHECK(e.mem.pins() == 1); // only the ring's own pin: every request's was released
}

namespace {
vb::recovery::DeviceIdentity test_identity() {
  vb::recovery::DeviceIdentity id;
  id.name = "qw0";
  id.num_queues = 1;
  id.queue_size = 16;
  id.capacity = 1 << 20;
  id.backend_kind = "holding";
  id.backend_identity = "test";
  return id;
}

// A predecessor daemon: takes n flushes from the ring into the backend, then dies with them in
// flight: nothing is published (abandoned, as a planned restart leaves the ring; the backend's
// late answers are dropped).
void predecessor_dies_with(Engine &e, HoldingBackend &backend, int n, vb::recovery::QueueLog *log) {
  e.worker.reset();
  e.worker = std::make_unique<vb::QueueWorker>("test", 0, e.host, e.mem, backend, e.params, log);
  REQUIRE(e.worker->start_sync(e.drv.layout(), 0, false));
  for (int i = 0; i < n; ++i) {
    const auto h = e.header(VIRTIO_BLK_T_FLUSH, 0);
    const auto st = e.drv.alloc(1);
    e.drv.add_chain({{h, 16, false}, {st, 1, true}});
  }
  e.kick();
  REQUIRE(vb::test::wait_until([&] { return backend.count() == static_cast<std::size_t>(n); }));
  backend.submitted.clear();
  e.worker->pause_sync();
  e.worker->abandon_sync();
  e.worker.reset();
}
} // namespace

// Issue 12, item 6: the state directory was cleared (or changed) while the device lived on. A
// state file made now never saw the ring: it must not be trusted to say what was in flight, so
// a ring with requests outstanding is not served (neither lost nor repeated).
TEST_CASE("engine: a reattached queue with a recovery log made after the device is served only if nothing is "
          "outstanding") {
  HoldingBackend backend;
  Engine e(backend);
  predecessor_dies_with(e, backend, 2, nullptr);
  vb::test::TempDir dir;
  auto state = vb::recovery::RecoveryState::open_or_create(dir.path(), test_identity());
  REQUIRE(state->created());
  auto successor = std::make_unique<vb::QueueWorker>("test", 0, e.host, e.mem, backend, e.params, &state->queue(0));
  CHECK_FALSE(successor->resume_sync(e.drv.layout(), false, 2, false));
  CHECK(backend.submitted.empty()); // nothing was resubmitted or taken from the ring
  CHECK(e.drv.used_idx() == 0);

  // Once nothing is outstanding (the driver got its answers another way: here, by hand) the queue
  // is served, and logged from then on.
  HoldingBackend quiet;
  Engine f(quiet);
  predecessor_dies_with(f, quiet, 0, nullptr);
  auto state2 = vb::recovery::RecoveryState::open_or_create(dir.path() + "/b", test_identity());
  auto served = std::make_unique<vb::QueueWorker>("test", 0, f.host, f.mem, quiet, f.params, &state2->queue(0));
  REQUIRE(served->resume_sync(f.drv.layout(), false, 0, false));
  CHECK(state2->queue(0).started());
  const auto h = f.header(VIRTIO_BLK_T_FLUSH, 0);
  const auto st = f.drv.alloc(1);
  f.drv.add_chain({{h, 16, false}, {st, 1, true}});
  f.kick();
  REQUIRE(vb::test::wait_until([&] { return quiet.count() == 1; }));
  CHECK(state2->queue(0).in_flight(0));
  quiet.release(0, 0);
  f.wait_used(1);
  served.reset();
  successor.reset();
}

// Item 10: a VMM asks GET_VQ_STATE of a reattached device before its queues resumed (a message
// the kernel replays): the answer is where the predecessor stopped, not 0.
TEST_CASE("engine: before a reattached queue resumes, its next avail index comes from the recovery log") {
  HoldingBackend backend;
  Engine e(backend);
  vb::test::TempDir dir;
  auto state = vb::recovery::RecoveryState::open_or_create(dir.path(), test_identity());
  predecessor_dies_with(e, backend, 3, &state->queue(0));
  auto successor = std::make_unique<vb::QueueWorker>("test", 0, e.host, e.mem, backend, e.params, &state->queue(0));
  CHECK(successor->next_avail_sync() == 3);
  REQUIRE(successor->resume_sync(e.drv.layout(), false, 3, true));
  CHECK(successor->next_avail_sync() == 3);
  REQUIRE(vb::test::wait_until([&] { return backend.count() == 3; })); // the 3 in flight, resubmitted
  std::lock_guard lock(backend.mu);
  CHECK(backend.submitted.size() == 3);
}

TEST_CASE("engine: with busy polling a request is served without a kick, and kicks come back on before it sleeps") {
  vb::MemoryBackend backend(1 << 20);
  auto read_chain = [](Engine &e) {
    const auto h = e.header(VIRTIO_BLK_T_IN, 0);
    const auto in = e.drv.alloc(513);
    e.drv.add_chain({{h, 16, false}, {in, 513, true}});
    return in + 512;
  };
  SUBCASE("within the window: no kick needed, and none asked for") {
    Engine e(backend, 16, true, std::chrono::seconds(5));
    const auto st = read_chain(e); // no kick
    e.wait_used(1);
    CHECK(e.status(st) == VIRTIO_BLK_S_OK);
    CHECK(e.drv.avail_event() == 0); // the driver was not asked to kick for the next one
  }
  SUBCASE("after the window: the thread asks for kicks again, then sleeps until one comes") {
    Engine e(backend, 16, true, std::chrono::milliseconds(20));
    const auto st = read_chain(e);
    e.kick();
    e.wait_used(1);
    CHECK(e.status(st) == VIRTIO_BLK_S_OK);
    REQUIRE(vb::test::wait_until([&] { return e.drv.avail_event() == 1; }, std::chrono::seconds(10)));
    const auto st2 = read_chain(e);
    e.kick();
    e.wait_used(2);
    CHECK(e.status(st2) == VIRTIO_BLK_S_OK);
  }
}
