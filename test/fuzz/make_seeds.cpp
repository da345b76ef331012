// Writes the binary seeds of fuzz_recovery and fuzz_virtqueue (test/fuzz/corpus/NAME/) with the
// real code: state files that RecoveryState and QueueLog wrote while a run was cut at interesting
// points, and rings that RingDriver laid out. Built in the fuzz tree; run it again after a change
// to either input format:  build-fuzz/test/fuzz/make_seeds test/fuzz/corpus
#include "recovery/recovery_state.h"
#include "recovery/state_layout.h"
#include "ring_driver.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <linux/virtio_blk.h>
#include <string>
#include <unistd.h>
#include <vector>

using vb::recovery::DeviceIdentity;
using vb::recovery::QueueLog;
using vb::recovery::QueueLogCrashHook;
using vb::recovery::RecoveryState;
using vb::test::ArenaMemory;
using vb::test::RingDriver;
namespace layout = vb::recovery::layout;
namespace virtio = vb::virtio;

namespace {

using Bytes = std::vector<std::uint8_t>;

void write_seed(const std::string &dir, const std::string &name, const Bytes &bytes) {
  const std::string path = dir + "/" + name;
  FILE *f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::printf("%s: %zu bytes\n", path.c_str(), bytes.size());
}

void put16(Bytes &b, std::size_t at, std::uint16_t v) {
  if (b.size() < at + 2)
    b.resize(at + 2);
  b[at] = static_cast<std::uint8_t>(v);
  b[at + 1] = static_cast<std::uint8_t>(v >> 8);
}

// ---- fuzz_recovery ----

std::string read_all(const std::string &path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  char buf[65536];
  for (ssize_t n; fd >= 0 && (n = ::read(fd, buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

DeviceIdentity identity(std::uint32_t queues, std::uint16_t size) {
  DeviceIdentity id; // fuzz_recovery's default_identity(), with this geometry
  id.name = "fuzz0";
  id.num_queues = queues;
  id.queue_size = size;
  id.capacity = 1ULL << 30;
  id.logical_block_size = 512;
  id.features = 0x130007646ULL;
  id.backend_kind = "nbd";
  id.backend_identity = "nbd+unix:///export?socket=/run/nbd.sock";
  return id;
}

// A run of the log cut at one point; returns the state file's bytes.
template <class Drive> std::string state_after(std::uint32_t queues, std::uint16_t size, Drive drive) {
  char tmpl[] = "/tmp/vb-make-seeds-XXXXXX";
  if (!::mkdtemp(tmpl))
    std::abort();
  const std::string dir = tmpl;
  std::string bytes;
  {
    auto state = RecoveryState::open_or_create(dir, identity(queues, size));
    drive(*state);
    bytes = read_all(state->path());
    state->remove();
  }
  ::rmdir(dir.c_str());
  return bytes;
}

// flags, the 16-byte script, then the body (the whole file, or the geometry and queue areas).
Bytes recovery_input(std::uint8_t flags, const Bytes &script, const std::string &file, std::uint32_t queues,
                     std::uint16_t size) {
  Bytes in{flags};
  in.insert(in.end(), script.begin(), script.end());
  in.resize(17);
  if (flags & 1) {
    unsigned log2 = 0;
    while ((2u << log2) < size)
      ++log2;
    in.push_back(static_cast<std::uint8_t>((queues - 1) | log2 << 2));
    in.insert(in.end(), file.begin() + layout::kHeaderSize, file.end());
  } else {
    in.insert(in.end(), file.begin(), file.end());
  }
  return in;
}

void recovery_seeds(const std::string &dir) {
  // Script: complete, pop 2, pop 6, complete, pop 7 (outside a ring of 4), die in a publish.
  const Bytes script{0x00, 0x82, 0x86, 0x40, 0x87, 0xc1};
  // A live ring near the 16-bit wrap with requests in flight, completed in another order.
  const std::string live = state_after(2, 8, [](RecoveryState &s) {
    QueueLog &q = s.queue(0);
    q.start(8, 65534, 65530);
    q.popped(3);
    q.popped(5);
    q.popped(1);
    q.before_publish(5, 65530);
    q.after_publish(5, 65531);
    s.queue(1).start(4, 7, 7);
    s.queue(1).popped(2);
  });
  write_seed(dir, "live-wrap-full-file", recovery_input(0, script, live, 2, 8));
  write_seed(dir, "live-wrap-queues", recovery_input(1, script, live, 2, 8));
  // Died between the used->idx store and after_publish: the ring shows used + 1.
  const std::string publishing = state_after(1, 8, [](RecoveryState &s) {
    QueueLog &q = s.queue(0);
    q.start(8, 100, 98);
    q.popped(0);
    q.popped(4);
    q.before_publish(4, 98);
  });
  write_seed(dir, "died-publishing", recovery_input(1 | 2, script, publishing, 1, 8));
  // Died between the in-flight mark and the pop's advance.
  const std::string popping = state_after(1, 16, [](RecoveryState &s) {
    QueueLog &q = s.queue(0);
    q.start(16, 65535, 65535);
    q.popped(9);
    int stores = 0;
    QueueLogCrashHook::popped(q, 11, [&] { return ++stores == 2; });
  });
  write_seed(dir, "died-popping", recovery_input(1, script, popping, 1, 16));
  // Died in start() (not started) and a reset (stopped) queue.
  const std::string starting = state_after(2, 4, [](RecoveryState &s) {
    int stores = 0;
    QueueLogCrashHook::start(s.queue(0), 4, 9, 9, [&] { return ++stores == 3; });
    s.queue(1).start(4, 0, 0);
    s.queue(1).popped(1);
    s.queue(1).stop();
  });
  write_seed(dir, "died-starting-and-reset", recovery_input(0, Bytes{0x81, 0x82, 0x01}, starting, 2, 4));
  // A ring of 256 with many requests in flight.
  const std::string busy = state_after(1, 256, [](RecoveryState &s) {
    QueueLog &q = s.queue(0);
    q.start(256, 40000, 39990);
    for (std::uint16_t h = 0; h < 40; ++h)
      q.popped(static_cast<std::uint16_t>(h * 5 % 256));
    for (std::uint16_t k = 0; k < 10; ++k) {
      q.before_publish(static_cast<std::uint16_t>(k * 15 % 256), static_cast<std::uint16_t>(39990 + k));
      q.after_publish(static_cast<std::uint16_t>(k * 15 % 256), static_cast<std::uint16_t>(39991 + k));
    }
  });
  write_seed(dir, "busy-256", recovery_input(1, script, busy, 1, 256));
}

// ---- fuzz_virtqueue ----

constexpr std::uint64_t kBase = 0x10000;

// The fuzz_virtqueue input header: knobs, flags, ring size, start, used, avail idx, used_event,
// avail flags, the script, the avail entries from slot start on, then the memory image.
Bytes ring_input(std::uint8_t knobs, bool event_idx, std::uint16_t num, std::uint16_t start, std::uint16_t used,
                 std::uint16_t available, const Bytes &script, ArenaMemory &mem, RingDriver &drv,
                 std::uint64_t image_end) {
  Bytes in(14, 0);
  in[0] = knobs;
  in[1] = event_idx ? 1 : 0;
  unsigned log2 = 1;
  while ((1u << log2) < num)
    ++log2;
  in[2] = static_cast<std::uint8_t>(log2 - 1);
  put16(in, 4, start);
  put16(in, 6, used);
  put16(in, 8, static_cast<std::uint16_t>(start + available));
  put16(in, 10, 1);
  put16(in, 12, 0);
  Bytes s = script;
  s.resize(16, 0);
  in.insert(in.end(), s.begin(), s.end());
  for (unsigned k = 0; k < 32; ++k)
    put16(in, in.size(), *drv.avail().entry((start + k) % num));
  in.insert(in.end(), mem.ptr(kBase), mem.ptr(image_end));
  return in;
}

void header(ArenaMemory &mem, std::uint64_t at, std::uint32_t type, std::uint64_t sector) {
  virtio_blk_outhdr h{type, 0, sector};
  std::memcpy(mem.ptr(at), &h, sizeof h);
}

void ring_seeds(const std::string &dir) {
  // Pop 3 and serve, hold 2, complete held out of order, enable (+2 more), disable, re-walk head 1.
  const Bytes script{0x08, 0x24, 0x01, 0x09, 0x0a, 0x03, 0x0f, 0x0c, 0x02, 0x1c};
  {
    // A ring of 16 starting just before the wrap: read, write split over two buffers, flush,
    // GET_ID, and a discard; the indices pass 65535 -> 0.
    ArenaMemory mem(1 << 20, kBase);
    RingDriver drv(mem, 16);
    drv.set_avail_idx(65533);
    const auto h = [&](std::uint32_t type, std::uint64_t sector) {
      const auto at = drv.alloc(16);
      header(mem, at, type, sector);
      return at;
    };
    drv.add_chain({{h(VIRTIO_BLK_T_IN, 8), 16, false}, {drv.alloc(512), 512, true}, {drv.alloc(1), 1, true}});
    drv.add_chain({{h(VIRTIO_BLK_T_OUT, 0), 16, false},
                   {drv.alloc(700), 700, false},
                   {drv.alloc(324), 324, false},
                   {drv.alloc(1), 1, true}});
    drv.add_chain({{h(VIRTIO_BLK_T_FLUSH, 0), 16, false}, {drv.alloc(1), 1, true}});
    drv.add_chain({{h(VIRTIO_BLK_T_GET_ID, 0), 16, false}, {drv.alloc(20), 20, true}, {drv.alloc(1), 1, true}});
    const auto seg = drv.alloc(16);
    const virtio_blk_discard_write_zeroes d{0, 8, 0};
    std::memcpy(mem.ptr(seg), &d, sizeof d);
    drv.add_chain({{h(VIRTIO_BLK_T_DISCARD, 0), 16, false}, {seg, 16, false}, {drv.alloc(1), 1, true}});
    write_seed(dir, "ring16-wrap-direct",
               ring_input(0x07, false, 16, 65533, 65534, 5, script, mem, drv, drv.alloc(0, 16)));
  }
  {
    // A ring of 256 with EVENT_IDX: indirect tables (a read into two buffers, write zeroes), kept
    // with the headers in unused descriptor slots so that the image stays small; the data
    // buffers are past it (zeroed guest memory).
    ArenaMemory mem(1 << 20, kBase);
    RingDriver drv(mem, 256);
    drv.set_avail_idx(65500);
    const std::uint64_t data = kBase + 0x4000; // the second buffer crosses a region boundary
    auto *t1 = reinterpret_cast<virtio::VringDesc *>(mem.ptr(kBase + 0x400));
    header(mem, kBase + 0x500, VIRTIO_BLK_T_IN, 16);
    RingDriver::set_desc(&t1[0], kBase + 0x500, 16, virtio::kDescNext, 1);
    RingDriver::set_desc(&t1[1], data, 1024, virtio::kDescWrite | virtio::kDescNext, 2);
    RingDriver::set_desc(&t1[2], data + 0x1f00, 1024, virtio::kDescWrite | virtio::kDescNext, 3);
    RingDriver::set_desc(&t1[3], data + 0x2000, 1, virtio::kDescWrite, 0);
    RingDriver::set_desc(drv.desc(0), kBase + 0x400, 64, virtio::kDescIndirect, 0);
    drv.publish(0);
    auto *t2 = reinterpret_cast<virtio::VringDesc *>(mem.ptr(kBase + 0x440));
    header(mem, kBase + 0x510, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    const virtio_blk_discard_write_zeroes wz{64, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP};
    std::memcpy(mem.ptr(kBase + 0x520), &wz, sizeof wz);
    RingDriver::set_desc(&t2[0], kBase + 0x510, 16, virtio::kDescNext, 1);
    RingDriver::set_desc(&t2[1], kBase + 0x520, 16, virtio::kDescNext, 2);
    RingDriver::set_desc(&t2[2], data + 0x3000, 1, virtio::kDescWrite, 0);
    RingDriver::set_desc(drv.desc(1), kBase + 0x440, 48, virtio::kDescIndirect, 0);
    drv.publish(1);
    write_seed(dir, "ring256-event-idx-indirect",
               ring_input(0x0f, true, 256, 65500, 100, 2, script, mem, drv, kBase + 0x540));
  }
  {
    // The largest ring, 32768: one read whose buffers sit in the unused part of the descriptor
    // table (the image covers only the start of guest memory).
    ArenaMemory mem(2 << 20, kBase);
    RingDriver drv(mem, 32768);
    drv.set_avail_idx(0xfff0);
    const std::uint64_t hdr = kBase + 0x100, data = kBase + 0x200, status = kBase + 0x400;
    header(mem, hdr, VIRTIO_BLK_T_IN, 0);
    drv.add_chain({{hdr, 16, false}, {data, 512, true}, {status, 1, true}});
    write_seed(dir, "ring32768-wrap", ring_input(0, true, 32768, 0xfff0, 0xfff0, 1, script, mem, drv, kBase + 0x410));
  }
  {
    // The smallest ring, 2, wrapping many times within the script.
    ArenaMemory mem(1 << 20, kBase);
    RingDriver drv(mem, 2);
    drv.set_avail_idx(65535);
    const auto hdr = drv.alloc(16);
    header(mem, hdr, VIRTIO_BLK_T_IN, 0);
    drv.add_chain({{hdr, 16, false}, {drv.alloc(1), 1, true}});
    write_seed(
        dir, "ring2-wrap",
        ring_input(0, false, 2, 65535, 65535, 1, Bytes{0x00, 0x02, 0x00, 0x03, 0x0a}, mem, drv, drv.alloc(0, 16)));
  }
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS-DIR (test/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  const std::string corpus = argv[1];
  recovery_seeds(corpus + "/fuzz_recovery");
  ring_seeds(corpus + "/fuzz_virtqueue");
  return 0;
}
