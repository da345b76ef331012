// libFuzzer target: the bytes are guest memory holding a split ring (descriptor table, available
// ring, indirect tables, buffers), fully controlled by the fuzzer. The ring code pops whatever is
// there and the virtio-blk layer parses and finishes each request, as the queue worker does.
// Sanitizers turn any out-of-bounds access, overflow or UB into a crash; the invariants below
// catch silent misbehaviour.
#include "ring_driver.h"
#include "virtio/split_queue.h"
#include "virtio_blk/blk_device.h"
#include "virtio_blk/blk_request.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace {

constexpr std::uint16_t kNum = 16;
constexpr std::size_t kArena = 64 * 1024;
constexpr std::uint64_t kBase = 0x10000;

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

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  if (size < 4)
    return 0;
  static auto chain = std::make_unique<vb::virtio::Chain>();
  static auto req = std::make_unique<vb::blk::ParsedRequest>();
  const std::uint8_t knobs = data[0];
  const bool event_idx = data[1] & 1;
  data += 2;
  size -= 2;

  vb::test::ArenaMemory mem(kArena, kBase);
  // Region boundaries and a read-only range make the mapping paths interesting too.
  mem.split_at(kBase + 4096);
  mem.split_at(kBase + 4096 * 5 + 17);
  mem.read_only(kBase + 4096 * 8, kBase + 4096 * 9);
  std::memcpy(mem.ptr(kBase), data, std::min(size, kArena));

  vb::virtio::RingLayout layout;
  layout.num = kNum;
  layout.desc = kBase;              // 256 bytes of descriptors
  layout.avail = kBase + 16 * kNum; // then the available ring
  layout.used = kBase + 1024;       // used ring, device-written
  vb::virtio::SplitQueue q;
  if (!q.start(mem, layout, 0, event_idx))
    std::abort(); // the layout above is always valid
  const vb::blk::DeviceParams params = make_params(knobs);

  for (int n = 0; n < 64; ++n) {
    const vb::virtio::PopResult r = q.pop(*chain);
    if (r == vb::virtio::PopResult::empty || r == vb::virtio::PopResult::broken)
      break;
    if (r == vb::virtio::PopResult::bad_chain) {
      q.fail_bad_chain(*chain, VIRTIO_BLK_S_IOERR);
      continue;
    }
    if (chain->head >= kNum || chain->num_readable + chain->num_writable > vb::virtio::kMaxChainIovecs)
      std::abort();
    vb::blk::parse_request(*chain, params, *req);
    if (req->needs_backend()) {
      const vb::Request &b = req->backend;
      // What the engine would hand a backend must be in range and, for data, exactly covered.
      if (b.offset > params.capacity || b.length > params.capacity - b.offset)
        std::abort();
      if (b.op == vb::Op::read || b.op == vb::Op::write) {
        std::uint64_t total = 0;
        for (int i = 0; i < b.iovcnt; ++i)
          total += b.iov[i].iov_len;
        if (total != b.length)
          std::abort();
        if (params.read_only && b.op == vb::Op::write)
          std::abort();
      }
    }
    const std::uint32_t len = vb::blk::finish_request(*req, (knobs & 64) ? EIO : 0);
    if (len > chain->writable_bytes)
      std::abort();
    q.push(chain->head, len);
    (void)q.should_notify();
  }
  return 0;
}
