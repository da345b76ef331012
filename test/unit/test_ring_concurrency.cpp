// Double fetches: a second thread plays a hostile driver that rewrites descriptors, available
// ring entries and request headers without pause while the device side pops chains
// (SplitQueue::pop) and parses them (blk::parse_request). Every field the writer touches flips
// between values that are each fine on their own, so whatever the device reads is a state the
// memory really had; what must never happen is a decision taken on one read and acted on with
// another: iovecs from one descriptor's address and another's length, byte counts that do not
// add up, a range checked for one sector and submitted for another, a read into device-readable
// buffers. The writer's stores are relaxed atomics; the device copies descriptors and headers with
// memcpy, so the writer is not instrumented by ThreadSanitizer (no_sanitize): the race with the
// guest is the point of the test, the device code's own threading is not (it has none here).
#include "ring_driver.h"
#include "virtio/split_queue.h"
#include "virtio_blk/blk_device.h"
#include "virtio_blk/blk_request.h"

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <linux/virtio_blk.h>
#include <memory>
#include <set>
#include <thread>
#include <vector>

using vb::test::ArenaMemory;
using vb::test::RingDriver;
using vb::virtio::Chain;
using vb::virtio::PopResult;
using vb::virtio::SplitQueue;
using vb::virtio::VringDesc;
namespace virtio = vb::virtio;

namespace {

constexpr std::uint16_t kNum = 32;
constexpr std::uint64_t kCapacity = 1 << 20;
// In range, in range only for 512 bytes (the last sector), far out of range.
constexpr std::array<std::uint64_t, 3> kSectors{0, kCapacity / 512 - 1, 1ULL << 40};
constexpr std::array<std::uint32_t, 2> kTypes{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
constexpr std::array<std::uint32_t, 2> kDataLens{512, 1024};
constexpr std::array<std::uint16_t, 2> kDataFlags{virtio::kDescNext, virtio::kDescNext | virtio::kDescWrite};
constexpr std::array<std::uint16_t, 2> kStatusFlags{virtio::kDescWrite, 0}; // 0: write_then_read after W data

// One request: header -> data (one of two descriptors, each with two addresses) -> status. The
// descriptors sit in the ring's table (direct) or in an indirect table.
struct Request {
  std::uint16_t head = 0;
  VringDesc *table = nullptr; // [0] header, [1] data A, [2] data B, [3] status
  unsigned first = 0;         // index of the header descriptor in table
  std::uint64_t header = 0;
  std::uint64_t status = 0;
  std::array<std::array<std::uint64_t, 2>, 2> data{}; // data[descriptor][address variant]
};

struct Guest {
  Guest() : mem(1 << 20), drv(mem, kNum) {
    for (unsigned r = 0; r < 6; ++r)
      requests.push_back(make(r));
  }

  Request make(unsigned r) {
    Request q;
    q.header = drv.alloc(16, 16);
    q.status = drv.alloc(1, 64);
    for (auto &d : q.data)
      for (auto &addr : d) {
        addr = drv.alloc(1024 + 64, 64);
        mem.split_at(addr + 300 + 8 * r); // a buffer in two regions: two iovecs for one descriptor
      }
    if (r < 4) { // direct: descriptors 4r .. 4r+3
      q.head = static_cast<std::uint16_t>(4 * r);
      q.table = drv.desc(0);
      q.first = 4 * r;
    } else { // indirect: ring descriptor 16 + r points at a table of four
      const std::uint64_t table = drv.alloc(64, 16);
      q.head = static_cast<std::uint16_t>(16 + r);
      q.table = reinterpret_cast<VringDesc *>(mem.ptr(table));
      q.first = 0;
      RingDriver::set_desc(drv.desc(q.head), table, 64, virtio::kDescIndirect, 0);
    }
    RingDriver::set_desc(&q.table[q.first], q.header, 16, virtio::kDescNext, static_cast<std::uint16_t>(q.first + 1));
    for (unsigned d = 0; d < 2; ++d)
      RingDriver::set_desc(&q.table[q.first + 1 + d], q.data[d][0], 512, virtio::kDescNext | virtio::kDescWrite,
                           static_cast<std::uint16_t>(q.first + 3));
    RingDriver::set_desc(&q.table[q.first + 3], q.status, 1, virtio::kDescWrite, 0);
    header(q, kTypes[0], kSectors[0]);
    return q;
  }

  void header(const Request &q, std::uint32_t type, std::uint64_t sector) {
    virtio_blk_outhdr h{type, 0, sector};
    std::memcpy(mem.ptr(q.header), &h, sizeof h);
  }

  ArenaMemory mem;
  RingDriver drv;
  std::vector<Request> requests;
};

// The hostile driver, on its own thread from construction to destruction (which a failed
// REQUIRE reaches too). Not instrumented by TSan: see the file comment.
class Rewriter {
public:
  explicit Rewriter(Guest &guest) : g_(guest), thread_([this] { run(); }) {}
  ~Rewriter() {
    __atomic_store_n(&stop_, true, __ATOMIC_RELAXED);
    thread_.join();
  }
  Rewriter(const Rewriter &) = delete;
  Rewriter &operator=(const Rewriter &) = delete;
  unsigned long rewrites() const { return __atomic_load_n(&rewrites_, __ATOMIC_RELAXED); }

private:
  template <class T> __attribute__((no_sanitize("thread"))) static void put(T *p, T v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
  }

  __attribute__((no_sanitize("thread"))) void run() {
    std::uint64_t x = 0x9e3779b97f4a7c15ULL;
    while (!__atomic_load_n(&stop_, __ATOMIC_RELAXED)) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const Request &q = g_.requests[x % g_.requests.size()];
      const unsigned pick = (x >> 8) & 1;
      VringDesc *d = &q.table[q.first + 1 + ((x >> 9) & 1)];
      switch ((x >> 16) % 8) {
      case 0: // which data descriptor follows the header
        put(&q.table[q.first].next, static_cast<std::uint16_t>(q.first + 1 + pick));
        break;
      case 1:
        put(&d->addr, q.data[(x >> 9) & 1][pick]);
        break;
      case 2:
        put(&d->len, kDataLens[pick]);
        break;
      case 3:
        put(&d->flags, kDataFlags[pick]);
        break;
      case 4:
        put(&q.table[q.first + 3].flags, kStatusFlags[(x >> 10) % 8 == 0 ? 1 : 0]);
        break;
      case 5:
        put(reinterpret_cast<std::uint32_t *>(g_.mem.ptr(q.header)), kTypes[pick]);
        break;
      case 6:
        put(reinterpret_cast<std::uint64_t *>(g_.mem.ptr(q.header + 8)), kSectors[(x >> 20) % 3]);
        break;
      default: // an available ring entry: another request's head
        put(g_.drv.avail().entry((x >> 24) % kNum), g_.requests[(x >> 32) % g_.requests.size()].head);
        break;
      }
      __atomic_store_n(&rewrites_, rewrites_ + 1, __ATOMIC_RELAXED);
    }
  }

  Guest &g_;
  bool stop_ = false;
  unsigned long rewrites_ = 0;
  std::thread thread_; // last: started once everything above is ready
};

const Request &request_of(const Guest &g, std::uint16_t head) {
  for (const auto &q : g.requests)
    if (q.head == head)
      return q;
  FAIL("popped head " << head << " was never made available");
  return g.requests.front();
}

struct Seen {
  std::set<std::uint32_t> lens;
  std::set<std::uint64_t> sectors;
  std::set<bool> data_writable;
  unsigned long submitted = 0, bad_chains = 0, pops = 0;
};

bool at(ArenaMemory &mem, const iovec &v, std::uint64_t iova) { return v.iov_base == mem.ptr(iova); }

// The chain's iovecs are header, one data descriptor's buffer (as that descriptor was at one
// moment: one of its addresses, one length, one side), status; the byte counts add up.
void check_chain(Guest &g, const Request &q, const Chain &c, Seen &seen, std::uint64_t &data_len, bool &data_write) {
  const unsigned n = c.num_readable + c.num_writable;
  REQUIRE(n >= 3);
  REQUIRE(at(g.mem, c.iov[0], q.header));
  REQUIRE(c.iov[0].iov_len == 16);
  REQUIRE(at(g.mem, c.iov[n - 1], q.status));
  REQUIRE(c.iov[n - 1].iov_len == 1);
  // The data: from one address variant of one descriptor, contiguous, all on one side.
  const auto *start = static_cast<const std::uint8_t *>(c.iov[1].iov_base);
  bool known = false;
  for (const auto &d : q.data)
    for (auto addr : d)
      known = known || start == g.mem.ptr(addr);
  REQUIRE(known);
  data_len = 0;
  data_write = 1 >= c.num_readable;
  for (unsigned i = 1; i + 1 < n; ++i) {
    REQUIRE(c.iov[i].iov_base == start + data_len);
    REQUIRE((i >= c.num_readable) == data_write);
    data_len += c.iov[i].iov_len;
  }
  REQUIRE((data_len == kDataLens[0] || data_len == kDataLens[1]));
  const bool status_write = c.num_writable > 0;
  REQUIRE((!data_write || status_write)); // writable data then a readable status is not a valid chain
  std::uint64_t readable = 0, writable = 0;
  for (unsigned i = 0; i < n; ++i)
    (i < c.num_readable ? readable : writable) += c.iov[i].iov_len;
  REQUIRE(c.readable_bytes == readable);
  REQUIRE(c.writable_bytes == writable);
  seen.lens.insert(static_cast<std::uint32_t>(data_len));
  seen.data_writable.insert(data_write);
}

// The parsed request follows from one header value and the chain as popped.
void check_request(Guest &g, const Request &q, const Chain &c, const vb::blk::ParsedRequest &req,
                   const vb::blk::DeviceParams &params, std::uint64_t data_len, bool data_write, Seen &seen) {
  REQUIRE((req.type == kTypes[0] || req.type == kTypes[1]));
  REQUIRE((req.sector == kSectors[0] || req.sector == kSectors[1] || req.sector == kSectors[2]));
  seen.sectors.insert(req.sector);
  if (c.num_writable == 0) {
    REQUIRE(req.dropped()); // no byte to put a status in
    return;
  }
  REQUIRE(req.status_byte == g.mem.ptr(q.status));
  const bool read = req.type == VIRTIO_BLK_T_IN;
  // What the request moves, as this chain says: a read fills the writable data, a write sends
  // the readable data after the header.
  const std::uint64_t len = read ? (data_write ? data_len : 0) : (data_write ? 0 : data_len);
  const bool in_range = req.sector <= kCapacity / 512 && (req.sector << 9) + len <= params.capacity;
  if (req.needs_backend()) {
    ++seen.submitted;
    REQUIRE(in_range);
    REQUIRE(req.backend.op == (read ? vb::Op::read : vb::Op::write));
    REQUIRE(req.backend.offset == req.sector << 9);
    REQUIRE(req.backend.length == len);
    std::uint64_t total = 0;
    for (int i = 0; i < req.backend.iovcnt; ++i) {
      const iovec &v = req.backend.iov[i];
      // Inside the data buffer of this chain, on the side the operation needs.
      REQUIRE(v.iov_base >= c.iov[1].iov_base);
      REQUIRE(static_cast<const std::uint8_t *>(v.iov_base) + v.iov_len <=
              static_cast<const std::uint8_t *>(c.iov[1].iov_base) + data_len);
      total += v.iov_len;
    }
    REQUIRE(total == len);
    REQUIRE(data_write == read);
    return;
  }
  REQUIRE(req.action == vb::blk::Action::complete);
  REQUIRE(req.status == (in_range ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR));
  if (in_range)
    REQUIRE(len == 0); // in range and data to move: that must have been submitted
}

} // namespace

TEST_CASE("a driver rewriting descriptors, ring entries and headers during pop and parse changes no decision "
          "underneath") {
  Guest g;
  vb::BackendCapabilities caps;
  caps.size = kCapacity;
  vb::blk::DeviceSettings settings;
  settings.serial = "race";
  const vb::blk::DeviceParams params = vb::blk::make_device_params(caps, settings);
  SplitQueue q;
  REQUIRE(q.start(g.mem, g.drv.layout(), 0, false));
  for (unsigned s = 0; s < kNum; ++s)
    *g.drv.avail().entry(s) = g.requests[s % g.requests.size()].head;

  auto w = std::make_unique<Rewriter>(g);
  auto chain = std::make_unique<Chain>();
  auto req = std::make_unique<vb::blk::ParsedRequest>();
  Seen seen;
  std::uint16_t avail = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (seen.pops < 2'000'000 && std::chrono::steady_clock::now() < deadline) {
    // The driver makes a batch available; the writer owns the entries themselves.
    avail = static_cast<std::uint16_t>(avail + kNum / 2);
    __atomic_store_n(g.drv.avail().idx(), avail, __ATOMIC_RELEASE);
    for (unsigned k = 0; k < kNum / 2; ++k) {
      const PopResult r = q.pop(*chain);
      ++seen.pops;
      REQUIRE((r == PopResult::ok || r == PopResult::bad_chain));
      const Request &rq = request_of(g, chain->head);
      if (r == PopResult::bad_chain) {
        ++seen.bad_chains;
        REQUIRE(q.last_error() == virtio::ChainError::write_then_read);
        REQUIRE((chain->bad_status == nullptr || chain->bad_status == g.mem.ptr(rq.status)));
        q.fail_bad_chain(*chain, VIRTIO_BLK_S_IOERR);
        continue;
      }
      std::uint64_t data_len = 0;
      bool data_write = false;
      check_chain(g, rq, *chain, seen, data_len, data_write);
      vb::blk::parse_request(*chain, params, *req);
      check_request(g, rq, *chain, *req, params, data_len, data_write, seen);
      q.push(chain->head, vb::blk::finish_request(*req, 0));
    }
    REQUIRE(q.pop(*chain) == PopResult::empty);
  }
  const unsigned long rewrites = w->rewrites();
  w.reset();

  MESSAGE(seen.pops << " chains popped (" << seen.bad_chains << " malformed, " << seen.submitted
                    << " submitted) during " << rewrites << " rewrites");
  // The writer really raced the device: both lengths, sides and every sector were seen.
  CHECK(rewrites > 1000);
  CHECK(seen.lens.size() == 2);
  CHECK(seen.data_writable.size() == 2);
  CHECK(seen.sectors.size() == 3);
  CHECK(seen.bad_chains > 0);
  CHECK(seen.submitted > 0);
}
