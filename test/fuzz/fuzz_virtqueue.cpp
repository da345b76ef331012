// libFuzzer target: a hostile driver's split ring. The input chooses the ring size (2..32768),
// where the device starts consuming (a 16-bit index anywhere, so runs cross the 65535 -> 0 wrap),
// the driver's indices and suppression state (avail flags, used_event, EVENT_IDX or not), the
// available ring entries, and the bytes of guest memory from the descriptor table on (direct and
// indirect descriptors, request headers, buffers). A script then interleaves pops, completions
// in and out of order, re-walks of a head (as recovery does), notification enable/disable and
// driver changes to its suppression state. The ring code pops whatever is there and the
// virtio-blk layer parses and finishes each request, as the queue worker does.
//
// Sanitizers turn any out-of-bounds access, overflow or UB into a crash; the checks below catch
// silent misbehaviour, against a reference walk of the same descriptors (virtio 1.2, 2.7.5):
//   - a chain is accepted exactly when the spec's rules and this device's limits allow it;
//   - every iovec of an accepted chain lies inside the buffer its descriptor named (the buffers,
//     in order, are covered exactly, readable ones first), hence inside the guest memory arena;
//   - the used ring, next_avail/used_idx/pending and the notification decisions (NO_INTERRUPT,
//     EVENT_IDX's used_event, NO_NOTIFY and avail_event) are what the spec says, across wraps.
//
// Input (fixed offsets; bytes past the end read as 0), see Input below; the memory image starts
// at kImageAt. Seeds: test/fuzz/corpus/fuzz_virtqueue/, made by make_seeds.cpp.
#include "fuzz_util.h"
#include "ring_driver.h"
#include "virtio/split_queue.h"
#include "virtio_blk/blk_device.h"
#include "virtio_blk/blk_request.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

using vb::fuzz::Fields;
using vb::test::ArenaMemory;
using vb::virtio::Chain;
using vb::virtio::PopResult;
using vb::virtio::RingLayout;
using vb::virtio::SplitQueue;
using vb::virtio::VringDesc;
namespace virtio = vb::virtio;

namespace {

// Input layout.
constexpr std::size_t kKnobsAt = 0;     // device parameters (see make_params); bit 6: the backend fails
constexpr std::size_t kFlagsAt = 1;     // bit 0: EVENT_IDX
constexpr std::size_t kSizeAt = 2;      // ring size 2 << (v % 15)
constexpr std::size_t kStartAt = 4;     // u16: next_avail given to start()
constexpr std::size_t kUsedAt = 6;      // u16: used->idx in the ring at start
constexpr std::size_t kAvailIdxAt = 8;  // u16: avail->idx (start + this many are available)
constexpr std::size_t kEventAt = 10;    // u16: used_event, relative to the used index at start
constexpr std::size_t kAvailFlags = 12; // u16: avail->flags
constexpr std::size_t kScriptAt = 14;   // 16 steps
constexpr std::size_t kScriptLen = 16;
constexpr std::size_t kEntriesAt = kScriptAt + kScriptLen; // 32 x u16: avail entries from slot start on
constexpr std::size_t kEntries = 32;
constexpr std::size_t kImageAt = kEntriesAt + 2 * kEntries; // guest memory from the descriptor table on

constexpr std::uint64_t kBase = 0x10000;
constexpr std::uint64_t kDataBytes = 64 * 1024;

std::uint64_t align(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

// The guest memory of one ring size: the rings at kBase (the layout RingDriver uses), then a data
// area with two region boundaries and a read-only page, as an IOTLB with several maps has.
struct Arena {
  explicit Arena(std::uint16_t num) {
    layout.num = num;
    layout.desc = kBase;
    layout.avail = kBase + 16ULL * num;
    layout.used = align(layout.avail + virtio::AvailRing::bytes(num), 4);
    data = align(layout.used + virtio::UsedRing::bytes(num), 4096);
    mem = std::make_unique<ArenaMemory>(data - kBase + kDataBytes, kBase);
    cuts = {data + 4096, data + 4096 * 5 + 17};
    ro_start = data + 4096 * 8;
    ro_end = data + 4096 * 9;
    for (auto c : cuts)
      mem->split_at(c);
    mem->read_only(ro_start, ro_end);
  }
  std::uint64_t size() const { return mem->end() - kBase; }
  bool inside(std::uint64_t iova, std::uint64_t len) const {
    return iova >= kBase && iova < mem->end() && len <= mem->end() - iova;
  }
  bool inside(const void *p, std::size_t len) const {
    const auto *b = static_cast<const std::uint8_t *>(p);
    return b >= mem->ptr(kBase) && b < mem->ptr(kBase) + size() && len <= size() - (b - mem->ptr(kBase));
  }
  unsigned pieces(std::uint64_t iova, std::uint64_t len) const {
    unsigned n = 1;
    for (auto c : cuts)
      n += c > iova && c < iova + len;
    return n;
  }
  bool crosses_cut(std::uint64_t iova, std::uint64_t len) const { return pieces(iova, len) > 1; }
  bool read_only(std::uint64_t iova, std::uint64_t len) const { return iova < ro_end && ro_start < iova + len; }

  RingLayout layout;
  std::uint64_t data = 0;
  std::unique_ptr<ArenaMemory> mem;
  std::vector<std::uint64_t> cuts;
  std::uint64_t ro_start = 0, ro_end = 0;
};

Arena &arena_for(unsigned log2) {
  static std::array<std::unique_ptr<Arena>, 16> arenas;
  if (!arenas[log2])
    arenas[log2] = std::make_unique<Arena>(static_cast<std::uint16_t>(1u << log2));
  return *arenas[log2];
}

vb::blk::DeviceParams make_params(std::uint8_t knobs) {
  vb::BackendCapabilities caps;
  caps.size = 1 << 20;
  caps.can_flush = knobs & 1;
  caps.can_discard = knobs & 2;
  caps.can_write_zeroes = knobs & 4;
  caps.can_zero_unmap = knobs & 8;
  caps.read_only = knobs & 16;
  vb::blk::DeviceSettings s;
  s.serial = "fuzz";
  s.logical_block_size = (knobs & 32) ? 4096 : 512;
  return vb::blk::make_device_params(caps, s);
}

// One buffer of a chain as the reference walk found it.
struct Buffer {
  std::uint64_t addr;
  std::uint32_t len;
  bool write;
};

// The spec's walk (2.7.5.3, 2.7.5.3.2) plus this device's limits (chain.h, split_queue.h), over
// the same memory: whether the chain at head is acceptable, and its non-empty buffers in order.
bool reference_walk(const Arena &a, std::uint16_t head, std::vector<Buffer> &out) {
  out.clear();
  std::uint64_t table = a.layout.desc;
  unsigned table_len = a.layout.num;
  unsigned i = head;
  bool indirect = false;
  bool seen_write = false;
  unsigned count = 0;
  unsigned pieces = 0;
  std::uint64_t total = 0;
  for (;;) {
    VringDesc d;
    std::memcpy(&d, a.mem->ptr(table + 16ULL * i), sizeof d);
    if (d.flags & virtio::kDescIndirect) {
      if (indirect || (d.flags & virtio::kDescNext) || d.len == 0 || d.len % 16 != 0 ||
          d.len / 16 > virtio::kMaxChainDescriptors)
        return false;
      if (!a.inside(d.addr, d.len) || a.crosses_cut(d.addr, d.len) ||
          reinterpret_cast<std::uintptr_t>(a.mem->ptr(d.addr)) % alignof(VringDesc) != 0)
        return false;
      table = d.addr;
      table_len = d.len / 16;
      indirect = true;
      i = 0;
      continue;
    }
    if (++count > virtio::kMaxChainDescriptors)
      return false;
    const bool write = d.flags & virtio::kDescWrite;
    if (!write && seen_write)
      return false;
    seen_write = seen_write || write;
    if (d.len > 0) {
      if (!a.inside(d.addr, d.len) || (write && a.read_only(d.addr, d.len)))
        return false;
      pieces += a.pieces(d.addr, d.len);
      if (pieces > virtio::kMaxChainIovecs)
        return false;
      total += d.len;
      if (total > UINT32_MAX)
        return false;
      out.push_back({d.addr, d.len, write});
    }
    if (!(d.flags & virtio::kDescNext))
      return true;
    i = d.next;
    if (i >= table_len)
      return false;
  }
}

// The chain's iovecs cover exactly the buffers, in order, readable ones first.
void check_chain(const Arena &a, const Chain &c, const std::vector<Buffer> &bufs) {
  const unsigned n = c.num_readable + c.num_writable;
  FUZZ_CHECK(n <= virtio::kMaxChainIovecs);
  unsigned k = 0;
  std::uint64_t readable = 0, writable = 0;
  for (const Buffer &b : bufs) {
    (b.write ? writable : readable) += b.len;
    std::uint64_t covered = 0;
    while (covered < b.len) {
      FUZZ_CHECK(k < n);
      FUZZ_CHECK((k >= c.num_readable) == b.write);
      const iovec &v = c.iov[k++];
      FUZZ_CHECK(v.iov_len > 0 && v.iov_len <= b.len - covered);
      FUZZ_CHECK(v.iov_base == a.mem->ptr(b.addr + covered)); // inside the buffer the descriptor named
      FUZZ_CHECK(a.inside(v.iov_base, v.iov_len));            // and so inside guest memory
      covered += v.iov_len;
    }
  }
  FUZZ_CHECK(k == n);
  FUZZ_CHECK(c.readable_bytes == readable && c.writable_bytes == writable);
}

// What the queue worker does with a chain it got, checking the virtio-blk layer's answer.
std::uint32_t serve(const Arena &a, const Chain &c, const vb::blk::DeviceParams &params, bool fail,
                    vb::blk::ParsedRequest &req) {
  vb::blk::parse_request(c, params, req);
  if (req.needs_backend()) {
    const vb::Request &b = req.backend;
    // What the engine would hand a backend must be in range and, for data, exactly covered.
    FUZZ_CHECK(b.offset <= params.capacity && b.length <= params.capacity - b.offset);
    if (b.op == vb::Op::read || b.op == vb::Op::write) {
      std::uint64_t total = 0;
      for (int i = 0; i < b.iovcnt; ++i) {
        FUZZ_CHECK(a.inside(b.iov[i].iov_base, b.iov[i].iov_len));
        total += b.iov[i].iov_len;
      }
      FUZZ_CHECK(total == b.length);
      FUZZ_CHECK(!(params.read_only && b.op == vb::Op::write));
    }
  }
  if (req.status_byte)
    FUZZ_CHECK(a.inside(req.status_byte, 1));
  const std::uint32_t len = vb::blk::finish_request(req, fail ? EIO : 0);
  FUZZ_CHECK(len <= c.writable_bytes);
  return len;
}

// The device side of the run, with the model of what the ring must show.
class Run {
public:
  Run(Arena &a, const Fields &in)
      : a_(a), in_(in), num_(a.layout.num), event_idx_(in.u8(kFlagsAt) & 1), params_(make_params(in.u8(kKnobsAt))),
        fail_(in.u8(kKnobsAt) & 64) {}

  void prepare() {
    std::memset(a_.mem->ptr(kBase), 0, a_.size());
    const std::size_t image = std::min<std::size_t>(in_.tail_size(kImageAt), a_.size());
    std::memcpy(a_.mem->ptr(kBase), in_.tail(kImageAt), image);
    start_ = in_.u16(kStartAt);
    used_ = in_.u16(kUsedAt);
    for (unsigned k = 0; k < kEntries; ++k)
      *avail().entry((start_ + k) & (num_ - 1)) = in_.u16(kEntriesAt + 2 * k);
    *avail().flags() = in_.u16(kAvailFlags);
    *avail().idx() = in_.u16(kAvailIdxAt);
    *avail().used_event(num_) = static_cast<std::uint16_t>(used_ + in_.u16(kEventAt));
    *used_ring().idx() = used_;
    *used_ring().flags() = 0;
  }

  void go() {
    FUZZ_CHECK(q_.start(*a_.mem, a_.layout, start_, event_idx_)); // the layout is always valid
    next_ = start_;
    check_indices();
    for (std::size_t step = 0; step < kScriptLen; ++step) {
      const std::uint8_t op = in_.u8(kScriptAt + step);
      switch (op & 3) {
      case 0:
        pop_and_serve(1 + ((op >> 2) & 7), (op >> 5) & 1);
        break;
      case 1:
        if (op & 4)
          rewalk(static_cast<std::uint16_t>(op >> 3));
        else
          complete_held((op >> 3) & 1);
        break;
      case 2:
        enable(static_cast<std::uint16_t>((op >> 2) & 7));
        break;
      default:
        disable_and_change_driver(op >> 2);
        break;
      }
      check_indices();
    }
    while (!held_.empty())
      complete_held(false);
  }

private:
  virtio::AvailRing avail() { return {reinterpret_cast<std::uint16_t *>(a_.mem->ptr(a_.layout.avail))}; }
  virtio::UsedRing used_ring() { return {reinterpret_cast<std::uint16_t *>(a_.mem->ptr(a_.layout.used))}; }
  // Read from guest memory each time: a request's status byte may land anywhere the driver
  // pointed it, its own rings included.
  std::uint16_t avail_idx() { return *avail().idx(); }

  void check_indices() {
    FUZZ_CHECK(q_.next_avail() == next_);
    FUZZ_CHECK(q_.used_idx() == used_);
    FUZZ_CHECK(q_.pending() == static_cast<std::uint16_t>(avail_idx() - next_));
    FUZZ_CHECK(*used_ring().idx() == used_);
  }

  // Pops up to n chains; hold: keep them in flight (completed later, in another order).
  void pop_and_serve(unsigned n, bool hold) {
    for (unsigned k = 0; k < n && !broken_; ++k) {
      auto chain = std::make_unique<Chain>();
      const auto waiting = static_cast<std::uint16_t>(avail_idx() - next_);
      const PopResult r = q_.pop(*chain);
      if (waiting == 0) {
        FUZZ_CHECK(r == PopResult::empty);
        return;
      }
      const std::uint16_t head = *avail().entry(next_ & (num_ - 1));
      if (waiting > num_ || head >= num_) {
        FUZZ_CHECK(r == PopResult::broken); // nothing consumed
        broken_ = true;
        return;
      }
      FUZZ_CHECK(r == PopResult::ok || r == PopResult::bad_chain);
      ++next_;
      FUZZ_CHECK(chain->head == head);
      judge(*chain, r);
      if (hold && r == PopResult::ok) {
        held_.push_back(std::move(chain));
        continue;
      }
      finish(*chain, r);
    }
    notify_check();
  }

  // What recovery does for a request in flight: walk its chain again from the head.
  void rewalk(std::uint16_t head) {
    auto chain = std::make_unique<Chain>();
    const PopResult r = q_.chain_at(head, *chain);
    if (head >= num_) {
      FUZZ_CHECK(r == PopResult::broken);
      return;
    }
    FUZZ_CHECK(r == PopResult::ok || r == PopResult::bad_chain);
    FUZZ_CHECK(chain->head == head);
    judge(*chain, r);
    finish(*chain, r);
    notify_check();
  }

  // The reference walk decides the same, and an accepted chain maps exactly its buffers.
  void judge(const Chain &c, PopResult r) {
    std::vector<Buffer> bufs;
    const bool ok = reference_walk(a_, c.head, bufs);
    FUZZ_CHECK(ok == (r == PopResult::ok));
    if (ok) {
      check_chain(a_, c, bufs);
      return;
    }
    FUZZ_CHECK(q_.last_error() != virtio::ChainError::none);
    if (c.bad_status) {
      FUZZ_CHECK(a_.inside(c.bad_status, 1));
      const auto iova = kBase + static_cast<std::uint64_t>(c.bad_status - a_.mem->ptr(kBase));
      FUZZ_CHECK(!a_.read_only(iova, 1));
    }
  }

  void finish(const Chain &c, PopResult r) {
    std::uint32_t len = 0;
    if (r == PopResult::ok) {
      len = serve(a_, c, params_, fail_, *req_);
    } else {
      len = q_.mark_bad_chain(c, VIRTIO_BLK_S_IOERR);
      FUZZ_CHECK(len == (c.bad_status ? 1u : 0u));
    }
    q_.push(c.head, len);
    const virtio::VringUsedElem e = *used_ring().entry(used_ & (num_ - 1));
    FUZZ_CHECK(e.id == c.head && e.len == len);
    ++used_;
  }

  // Completes the newest (or oldest) held chain: completions out of order.
  void complete_held(bool oldest) {
    if (held_.empty())
      return;
    auto it = oldest ? held_.begin() : held_.end() - 1;
    finish(**it, PopResult::ok);
    held_.erase(it);
    notify_check();
  }

  // 2.7.7.2 / 2.7.10: NO_INTERRUPT without EVENT_IDX, used_event crossed since the last
  // interrupt with it (the first decision after start always notifies).
  void notify_check() {
    const bool notify = q_.should_notify();
    bool expected = true;
    if (!event_idx_) {
      expected = (*avail().flags() & virtio::kAvailNoInterrupt) == 0;
    } else {
      if (signalled_valid_) {
        const std::uint16_t event = *avail().used_event(num_);
        // used_event in [old, new): the driver's chosen index was passed by this batch.
        expected = static_cast<std::uint16_t>(used_ - event - 1) < static_cast<std::uint16_t>(used_ - signalled_);
      }
      signalled_ = used_;
      signalled_valid_ = true;
    }
    FUZZ_CHECK(notify == expected);
  }

  // Asks for kicks; the driver may then publish more (entries already written from the input).
  void enable(std::uint16_t more) {
    const bool again = q_.enable_notifications();
    FUZZ_CHECK(again == (avail_idx() != next_));
    if (event_idx_)
      FUZZ_CHECK(*used_ring().avail_event(num_) == next_);
    else
      FUZZ_CHECK(*used_ring().flags() == 0);
    *avail().idx() = static_cast<std::uint16_t>(avail_idx() + more);
  }

  void disable_and_change_driver(unsigned arg) {
    const std::uint16_t flags_before = *used_ring().flags();
    q_.disable_notifications();
    FUZZ_CHECK(*used_ring().flags() == (event_idx_ ? flags_before : virtio::kUsedNoNotify));
    // The driver changes its mind about interrupts.
    *avail().flags() = static_cast<std::uint16_t>(arg & 1);
    *avail().used_event(num_) = static_cast<std::uint16_t>(used_ + ((arg >> 1) & 7) - 2);
  }

  Arena &a_;
  const Fields &in_;
  const std::uint16_t num_;
  const bool event_idx_;
  const vb::blk::DeviceParams params_;
  const bool fail_;
  SplitQueue q_;
  std::unique_ptr<vb::blk::ParsedRequest> req_ = std::make_unique<vb::blk::ParsedRequest>();
  std::vector<std::unique_ptr<Chain>> held_;
  std::uint16_t start_ = 0, next_ = 0, used_ = 0;
  std::uint16_t signalled_ = 0;
  bool signalled_valid_ = false;
  bool broken_ = false;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const Fields in(data, size);
  Arena &a = arena_for(1 + in.u8(kSizeAt) % 15);
  Run run(a, in);
  run.prepare();
  run.go();
  return 0;
}
