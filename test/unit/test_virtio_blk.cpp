#include "virtio_blk/blk_device.h"
#include "virtio_blk/blk_request.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <linux/virtio_config.h>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using vb::BackendCapabilities;
using vb::Op;
using vb::Request;
using vb::blk::Action;
using vb::blk::DeviceParams;
using vb::blk::DeviceSettings;
using vb::blk::ParsedRequest;
using vb::virtio::Chain;

namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::uint64_t bit(unsigned n) { return std::uint64_t{1} << n; }

// <linux/virtio_ring.h> does not compile as C++.
constexpr unsigned kRingIndirectDesc = 28;
constexpr unsigned kRingEventIdx = 29;

void put_le(Bytes &b, std::uint64_t v, unsigned size) {
  for (unsigned i = 0; i < size; ++i)
    b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get_le(const Bytes &b, std::size_t offset, unsigned size) {
  REQUIRE(offset + size <= b.size());
  std::uint64_t v = 0;
  for (unsigned i = 0; i < size; ++i)
    v |= std::uint64_t{b[offset + i]} << (8 * i);
  return v;
}

Bytes header(std::uint32_t type, std::uint64_t sector, std::uint32_t ioprio = 0) {
  Bytes b;
  put_le(b, type, 4);
  put_le(b, ioprio, 4);
  put_le(b, sector, 8);
  return b;
}

Bytes segment(std::uint64_t sector, std::uint32_t num_sectors, std::uint32_t flags = 0) {
  Bytes b;
  put_le(b, sector, 8);
  put_le(b, num_sectors, 4);
  put_le(b, flags, 4);
  return b;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const auto &p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes pattern(std::size_t n, std::uint8_t seed = 1) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i)
    b[i] = static_cast<std::uint8_t>(seed + i * 7);
  return b;
}

// A descriptor chain over local buffers. Every piece is its own heap allocation of exactly its
// size, so that reading past an iovec is an ASan error rather than a lucky read of the next one.
class TestChain {
public:
  // Device-readable bytes, cut into pieces of the given sizes (the rest in one last piece).
  TestChain &read(const Bytes &bytes, std::initializer_list<std::size_t> cuts = {}) {
    REQUIRE(chain_->num_writable == 0); // readable buffers come first
    add(bytes, cuts, false);
    return *this;
  }
  // Device-writable bytes (filled with 0xee so untouched bytes are recognisable).
  TestChain &write(std::size_t len, std::initializer_list<std::size_t> cuts = {}) {
    add(Bytes(len, 0xee), cuts, true);
    return *this;
  }
  // An empty piece (a zero-length descriptor).
  TestChain &empty(bool writable) {
    pieces_.emplace_back();
    push(pieces_.back(), writable);
    return *this;
  }

  const Chain &chain() const { return *chain_; }
  // All writable bytes in order, status byte included.
  Bytes written() const {
    Bytes out;
    for (unsigned i = 0; i < chain_->num_writable; ++i) {
      const iovec &v = chain_->writable()[i];
      const auto *p = static_cast<const std::uint8_t *>(v.iov_base);
      out.insert(out.end(), p, p + v.iov_len);
    }
    return out;
  }
  // The last byte of the last non-empty writable piece.
  std::uint8_t *last_writable_byte() {
    for (unsigned i = chain_->num_writable; i > 0; --i) {
      const iovec &v = chain_->writable()[i - 1];
      if (v.iov_len > 0)
        return static_cast<std::uint8_t *>(v.iov_base) + v.iov_len - 1;
    }
    return nullptr;
  }

private:
  void add(const Bytes &bytes, std::initializer_list<std::size_t> cuts, bool writable) {
    std::size_t pos = 0;
    for (std::size_t cut : cuts) {
      REQUIRE(pos + cut <= bytes.size());
      pieces_.emplace_back(bytes.begin() + static_cast<std::ptrdiff_t>(pos),
                           bytes.begin() + static_cast<std::ptrdiff_t>(pos + cut));
      push(pieces_.back(), writable);
      pos += cut;
    }
    if (pos < bytes.size() || cuts.size() == 0) {
      pieces_.emplace_back(bytes.begin() + static_cast<std::ptrdiff_t>(pos), bytes.end());
      push(pieces_.back(), writable);
    }
  }
  void push(Bytes &piece, bool writable) {
    Chain &c = *chain_;
    REQUIRE(c.num_readable + c.num_writable < vb::virtio::kMaxChainIovecs);
    c.iov[c.num_readable + c.num_writable] = iovec{piece.data(), piece.size()};
    (writable ? c.num_writable : c.num_readable)++;
    (writable ? c.writable_bytes : c.readable_bytes) += piece.size();
  }

  std::deque<Bytes> pieces_; // stable element addresses
  std::unique_ptr<Chain> chain_ = std::make_unique<Chain>();
};

constexpr std::uint64_t kMiB = 1 << 20;

BackendCapabilities caps(std::uint64_t size = kMiB, std::uint32_t lbs = 512) {
  BackendCapabilities c;
  c.size = size;
  c.logical_block_size = lbs;
  c.physical_block_size = lbs;
  c.can_flush = true;
  c.can_discard = true;
  c.can_write_zeroes = true;
  c.can_zero_unmap = true;
  return c;
}

DeviceSettings settings(std::string serial = "serial-0123") {
  DeviceSettings s;
  s.serial = std::move(serial);
  return s;
}

// A 1 MiB writable device with every optional operation, 512-byte blocks unless told.
DeviceParams params(std::uint32_t lbs = 512, std::uint64_t size = kMiB) {
  return vb::blk::make_device_params(caps(size, lbs), settings());
}

// The data iovecs of a submitted request, concatenated.
Bytes data_of(const ParsedRequest &r) {
  Bytes out;
  for (int i = 0; i < r.backend.iovcnt; ++i) {
    const auto *p = static_cast<const std::uint8_t *>(r.backend.iov[i].iov_base);
    out.insert(out.end(), p, p + r.backend.iov[i].iov_len);
  }
  return out;
}

std::uint64_t iov_total(const ParsedRequest &r) {
  std::uint64_t n = 0;
  for (int i = 0; i < r.backend.iovcnt; ++i)
    n += r.backend.iov[i].iov_len;
  return n;
}

std::unique_ptr<ParsedRequest> parse(const TestChain &tc, const DeviceParams &p) {
  auto r = std::make_unique<ParsedRequest>();
  vb::blk::parse_request(tc.chain(), p, *r);
  return r;
}

// Parses, requires an immediate answer, finishes it, and returns the status byte written.
std::uint8_t answered(TestChain &tc, const DeviceParams &p) {
  auto r = parse(tc, p);
  REQUIRE(r->action == Action::complete);
  REQUIRE(r->status_byte == tc.last_writable_byte());
  const std::uint32_t len = vb::blk::finish_request(*r, 0);
  CHECK(len == r->used_len);
  CHECK(*tc.last_writable_byte() == r->status);
  return r->status;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Device parameters, features, config space

TEST_CASE("make_device_params combines capabilities and settings") {
  BackendCapabilities c = caps(10 * kMiB + 512, 512);
  c.physical_block_size = 4096;
  c.optimal_io_size = 65536 + 100;
  DeviceSettings s = settings("disk-7");
  s.queues = 4;
  s.queue_size = 128;
  s.size_max = 65536;

  const DeviceParams p = vb::blk::make_device_params(c, s);
  CHECK(p.capacity == 10 * kMiB + 512);
  CHECK(p.logical_block_size == 512); // 0 in the settings: the backend's
  CHECK(p.physical_block_size == 4096);
  CHECK(p.opt_io_size == 65536); // rounded down to whole blocks
  CHECK(p.num_queues == 4);
  CHECK(p.queue_size == 128);
  CHECK(p.seg_max == 126);
  CHECK(p.size_max == 65536);
  CHECK_FALSE(p.read_only);
  CHECK(p.flush);
  CHECK(p.discard);
  CHECK(p.write_zeroes);
  CHECK(p.zero_unmap);
  CHECK(std::string(p.serial.data(), 6) == "disk-7");
  for (std::size_t i = 6; i < p.serial.size(); ++i)
    CHECK(p.serial[i] == '\0');
}

TEST_CASE("seg_max leaves room for header and status, up to 126 segments of size_max") {
  struct Case {
    unsigned queue_size;
    std::uint32_t seg_max;
  } cases[] = {{2, 1}, {4, 2}, {128, 126}, {256, 126}, {1024, 126}, {32768, 126}};
  for (const auto &k : cases) {
    CAPTURE(k.queue_size);
    DeviceSettings s = settings();
    s.queue_size = k.queue_size;
    const DeviceParams p = vb::blk::make_device_params(caps(), s);
    CHECK(p.seg_max == k.seg_max);
    CHECK(p.size_max == vb::blk::kDefaultSizeMax);
    CHECK(p.max_data_bytes == k.seg_max * vb::blk::kDefaultSizeMax);
  }
}

// Issue 12, item 4: the guest decides request sizes. A few descriptors naming one buffer (or a
// buffer of gigabytes) must not become a request larger than what the device advertised
// (seg_max segments of size_max bytes): it fails with IOERR before anything is sized from it.
TEST_CASE("IN and OUT larger than seg_max * size_max fail with IOERR and never reach the backend") {
  const DeviceParams p = vb::blk::make_device_params(caps(64 * kMiB, 512), settings());
  REQUIRE(p.max_data_bytes == 126 * 65536);
  const std::uint32_t types[] = {VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
  for (std::uint32_t type : types) {
    CAPTURE(type);
    TestChain at_limit, over;
    if (type == VIRTIO_BLK_T_IN) {
      at_limit.read(header(type, 0)).write(p.max_data_bytes).write(1);
      over.read(header(type, 0)).write(p.max_data_bytes + 512).write(1);
    } else {
      at_limit.read(header(type, 0)).read(Bytes(p.max_data_bytes, 1)).write(1);
      over.read(header(type, 0)).read(Bytes(p.max_data_bytes + 512, 1)).write(1);
    }
    CHECK(parse(at_limit, p)->action == Action::submit);
    auto r = parse(over, p);
    CHECK(r->action == Action::complete);
    CHECK(r->status == VIRTIO_BLK_S_IOERR);
  }
  // Advertised so that a well-behaved driver never builds such a request.
  const std::uint64_t f = vb::blk::device_features(p);
  CHECK((f & (1ULL << VIRTIO_BLK_F_SIZE_MAX)) != 0);
  CHECK((f & (1ULL << VIRTIO_BLK_F_SEG_MAX)) != 0);
  const Bytes cfg = vb::blk::config_space(p);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, size_max), 4) == 65536);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, seg_max), 4) == 126);
}

TEST_CASE("a larger configured block size rounds the capacity down and shapes the topology") {
  DeviceSettings s = settings();
  s.logical_block_size = 4096;
  const DeviceParams p = vb::blk::make_device_params(caps(kMiB + 3 * 512, 512), s);
  CHECK(p.logical_block_size == 4096);
  CHECK(p.physical_block_size == 4096); // never below the logical block
  CHECK(p.capacity == kMiB);
  // Discard/write-zeroes limit: what fits 32 bits, in whole 4 KiB blocks, as sectors.
  CHECK(p.max_discard_sectors == 8388600);
  CHECK(p.max_write_zeroes_sectors == 8388600);
}

TEST_CASE("read-only from either side, and a read-only device offers no discard or write-zeroes") {
  for (bool backend_ro : {false, true}) {
    for (bool config_ro : {false, true}) {
      CAPTURE(backend_ro);
      CAPTURE(config_ro);
      BackendCapabilities c = caps();
      c.read_only = backend_ro;
      DeviceSettings s = settings();
      s.read_only = config_ro;
      const DeviceParams p = vb::blk::make_device_params(c, s);
      const bool ro = backend_ro || config_ro;
      CHECK(p.read_only == ro);
      CHECK(p.discard == !ro);
      CHECK(p.write_zeroes == !ro);
      CHECK(p.zero_unmap == !ro);
      CHECK(p.flush); // still offered
    }
  }
}

TEST_CASE("discard and write-zeroes limits follow the backend's max_discard") {
  struct Case {
    std::uint32_t lbs;
    std::uint32_t max_discard;
    bool offered;
    std::uint32_t sectors;
  } cases[] = {
      {512, 0, true, 8388607},             // no limit: 32-bit byte count
      {512, 1 << 20, true, 2048},          // 1 MiB
      {4096, (1 << 20) + 512, true, 2048}, // rounded down to whole blocks
      {4096, 2048, false, 0},              // less than one block: not offered at all
  };
  for (const auto &k : cases) {
    CAPTURE(k.lbs);
    CAPTURE(k.max_discard);
    BackendCapabilities c = caps(kMiB, k.lbs);
    c.max_discard = k.max_discard;
    const DeviceParams p = vb::blk::make_device_params(c, settings());
    CHECK(p.discard == k.offered);
    CHECK(p.write_zeroes == k.offered);
    CHECK(p.max_discard_sectors == k.sectors);
    CHECK(p.max_write_zeroes_sectors == k.sectors);
  }
}

TEST_CASE("zero_unmap needs write-zeroes, and capabilities switch operations off one by one") {
  BackendCapabilities c = caps();
  c.can_write_zeroes = false; // can_zero_unmap stays true: meaningless without write-zeroes
  c.can_flush = false;
  DeviceParams p = vb::blk::make_device_params(c, settings());
  CHECK_FALSE(p.write_zeroes);
  CHECK_FALSE(p.zero_unmap);
  CHECK_FALSE(p.flush);
  CHECK(p.discard);

  c = caps();
  c.can_discard = false;
  c.can_zero_unmap = false;
  p = vb::blk::make_device_params(c, settings());
  CHECK_FALSE(p.discard);
  CHECK(p.write_zeroes);
  CHECK_FALSE(p.zero_unmap);
}

TEST_CASE("make_device_params rejects settings that cannot describe a device") {
  struct Case {
    const char *what;
    unsigned queues;
    unsigned queue_size;
    unsigned lbs;
    std::string serial;
  } cases[] = {
      {"no queues", 0, 256, 0, ""},
      {"too many queues", 65536, 256, 0, ""},
      {"queue size not a power of two", 1, 100, 0, ""},
      {"queue size 1", 1, 1, 0, ""},
      {"queue size too big", 1, 65536, 0, ""},
      {"block size not a power of two", 1, 256, 1536, ""},
      {"block size below a sector", 1, 256, 256, ""},
      {"serial too long", 1, 256, 0, std::string(21, 'x')},
      {"serial with a control character", 1, 256, 0, std::string("ab\ncd")},
      {"serial with a NUL", 1, 256, 0, std::string("ab\0cd", 5)},
  };
  for (const auto &k : cases) {
    CAPTURE(k.what);
    DeviceSettings s = settings(k.serial);
    s.queues = k.queues;
    s.queue_size = k.queue_size;
    s.logical_block_size = k.lbs;
    CHECK_THROWS_AS(vb::blk::make_device_params(caps(), s), std::invalid_argument);
  }
  // The device's block may not be smaller than the backend's.
  DeviceSettings s = settings();
  s.logical_block_size = 512;
  CHECK_THROWS_AS(vb::blk::make_device_params(caps(kMiB, 4096), s), std::invalid_argument);
  // Exactly 20 bytes is fine, and has no terminator.
  const DeviceParams p = vb::blk::make_device_params(caps(), settings("ABCDEFGHIJKLMNOPQRST"));
  CHECK(std::string(p.serial.data(), p.serial.size()) == "ABCDEFGHIJKLMNOPQRST");
}

TEST_CASE("device_features for several parameter sets") {
  const std::uint64_t always = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM) | bit(kRingIndirectDesc) |
                               bit(kRingEventIdx) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) |
                               bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_SIZE_MAX);
  const std::uint64_t never = bit(VIRTIO_BLK_F_CONFIG_WCE) | bit(VIRTIO_F_RING_PACKED) |
                              bit(VIRTIO_BLK_F_SECURE_ERASE) | bit(VIRTIO_BLK_F_GEOMETRY) | bit(VIRTIO_BLK_F_BARRIER) |
                              bit(VIRTIO_BLK_F_SCSI) | bit(VIRTIO_F_IN_ORDER);

  struct Case {
    const char *what;
    bool ro;
    unsigned queues;
    bool flush;
    bool discard;
    bool zeroes;
    std::uint32_t size_max;
    std::uint64_t extra;
  } cases[] = {
      {"full", false, 1, true, true, true, 0,
       bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)},
      {"read-only", true, 1, true, true, true, 0, bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_RO)},
      {"multi-queue", false, 4, true, false, false, 0, bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_MQ)},
      {"no flush", false, 1, false, false, false, 0, 0},
      {"size_max", false, 1, false, false, false, 131072, 0},
      {"discard only", false, 1, false, true, false, 0, bit(VIRTIO_BLK_F_DISCARD)},
      {"write-zeroes only", false, 2, false, false, true, 0, bit(VIRTIO_BLK_F_WRITE_ZEROES) | bit(VIRTIO_BLK_F_MQ)},
  };
  for (const auto &k : cases) {
    CAPTURE(k.what);
    BackendCapabilities c = caps();
    c.read_only = k.ro;
    c.can_flush = k.flush;
    c.can_discard = k.discard;
    c.can_write_zeroes = k.zeroes;
    DeviceSettings s = settings();
    s.queues = k.queues;
    s.size_max = k.size_max;
    const std::uint64_t f = vb::blk::device_features(vb::blk::make_device_params(c, s));
    CHECK(f == (always | k.extra));
    CHECK((f & never) == 0);
  }
}

TEST_CASE("config space: the header's layout, little-endian, every field where the driver reads it") {
  // The documented offsets are the header's: a different header would move them.
  static_assert(offsetof(virtio_blk_config, capacity) == 0);
  static_assert(offsetof(virtio_blk_config, size_max) == 8);
  static_assert(offsetof(virtio_blk_config, seg_max) == 12);
  static_assert(offsetof(virtio_blk_config, geometry) == 16);
  static_assert(offsetof(virtio_blk_config, blk_size) == 20);
  static_assert(offsetof(virtio_blk_config, physical_block_exp) == 24);
  static_assert(offsetof(virtio_blk_config, wce) == 32);
  static_assert(offsetof(virtio_blk_config, num_queues) == 34);
  static_assert(offsetof(virtio_blk_config, max_discard_sectors) == 36);
  static_assert(offsetof(virtio_blk_config, write_zeroes_may_unmap) == 56);

  BackendCapabilities c = caps(8 * kMiB, 512);
  c.physical_block_size = 4096;
  c.optimal_io_size = 131072;
  c.max_discard = 1 << 20;
  DeviceSettings s = settings();
  s.logical_block_size = 1024;
  s.queues = 3;
  s.queue_size = 64;
  s.size_max = 65536;
  const Bytes cfg = vb::blk::config_space(vb::blk::make_device_params(c, s));

  REQUIRE(cfg.size() == sizeof(virtio_blk_config));
  CHECK(cfg.size() == 72); // the bookworm (6.1) header
  CHECK(get_le(cfg, offsetof(virtio_blk_config, capacity), 8) == 8 * kMiB / 512);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, size_max), 4) == 65536);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, seg_max), 4) == 62);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, geometry), 4) == 0);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, blk_size), 4) == 1024);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, physical_block_exp), 1) == 2); // 4096 / 1024 = 2^2
  CHECK(get_le(cfg, offsetof(virtio_blk_config, alignment_offset), 1) == 0);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, min_io_size), 2) == 4);   // one physical block
  CHECK(get_le(cfg, offsetof(virtio_blk_config, opt_io_size), 4) == 128); // 128 KiB / 1 KiB
  CHECK(get_le(cfg, offsetof(virtio_blk_config, wce), 1) == 0);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, unused), 1) == 0);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, num_queues), 2) == 3);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, max_discard_sectors), 4) == 2048);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, max_discard_seg), 4) == 1);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, discard_sector_alignment), 4) == 2); // 1 KiB in sectors
  CHECK(get_le(cfg, offsetof(virtio_blk_config, max_write_zeroes_sectors), 4) == 2048);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, max_write_zeroes_seg), 4) == 1);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, write_zeroes_may_unmap), 1) == 1);
  // Padding and the secure-erase fields (not offered) are zero.
  for (std::size_t i = offsetof(virtio_blk_config, unused1); i < cfg.size(); ++i) {
    CAPTURE(i);
    CHECK(cfg[i] == 0);
  }
}

TEST_CASE("config space without discard and write-zeroes leaves their fields zero") {
  BackendCapabilities c = caps(kMiB, 512);
  c.can_discard = false;
  c.can_write_zeroes = false;
  const Bytes cfg = vb::blk::config_space(vb::blk::make_device_params(c, settings()));
  CHECK(get_le(cfg, offsetof(virtio_blk_config, size_max), 4) == 65536); // always offered now
  CHECK(get_le(cfg, offsetof(virtio_blk_config, num_queues), 2) == 1);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, physical_block_exp), 1) == 0);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, min_io_size), 2) == 1);
  CHECK(get_le(cfg, offsetof(virtio_blk_config, opt_io_size), 4) == 0);
  for (std::size_t i = offsetof(virtio_blk_config, max_discard_sectors); i < cfg.size(); ++i) {
    CAPTURE(i);
    CHECK(cfg[i] == 0);
  }
}

TEST_CASE("capacity_le gives the config's capacity field for a resize") {
  const auto b = vb::blk::capacity_le(0x0123456789abULL * 512);
  CHECK(vb::blk::kCapacityOffset == offsetof(virtio_blk_config, capacity));
  CHECK(get_le(Bytes(b.begin(), b.end()), 0, 8) == 0x0123456789abULL);
  DeviceParams p = params();
  p.capacity = 2 * kMiB;
  const Bytes cfg = vb::blk::config_space(p);
  const auto cap = vb::blk::capacity_le(2 * kMiB);
  CHECK(Bytes(cfg.begin(), cfg.begin() + 8) == Bytes(cap.begin(), cap.end()));
}

// ---------------------------------------------------------------------------------------------
// Requests: each type

TEST_CASE("IN: the writable bytes before the status byte go to the backend as a read") {
  TestChain tc;
  tc.read(header(VIRTIO_BLK_T_IN, 8)).write(4096).write(1);
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::submit);
  CHECK(r->needs_backend());
  CHECK(r->type == VIRTIO_BLK_T_IN);
  CHECK(r->sector == 8);
  CHECK(r->backend.op == Op::read);
  CHECK(r->backend.offset == 8 * 512);
  CHECK(r->backend.length == 4096);
  REQUIRE(r->backend.iovcnt == 1);
  CHECK(r->backend.iov == r->iov);
  CHECK(r->iov[0].iov_base == tc.chain().writable()[0].iov_base);
  CHECK(r->iov[0].iov_len == 4096);
  CHECK(r->status_byte == tc.last_writable_byte());

  CHECK(vb::blk::used_len_for(*r, 0) == 4097);
  CHECK(vb::blk::finish_request(*r, 0) == 4097);
  CHECK(*tc.last_writable_byte() == VIRTIO_BLK_S_OK);
}

TEST_CASE("OUT: the readable bytes after the header go to the backend as a write") {
  const Bytes data = pattern(1024);
  TestChain tc;
  tc.read(header(VIRTIO_BLK_T_OUT, 2)).read(data).write(1);
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::submit);
  CHECK(r->backend.op == Op::write);
  CHECK(r->backend.offset == 1024);
  CHECK(r->backend.length == 1024);
  CHECK(data_of(*r) == data);
  CHECK(vb::blk::finish_request(*r, 0) == 1);
  CHECK(*tc.last_writable_byte() == VIRTIO_BLK_S_OK);
}

TEST_CASE("OUT: writable bytes before the status byte are ignored and not counted") {
  TestChain tc;
  tc.read(header(VIRTIO_BLK_T_OUT, 0)).read(pattern(512)).write(100);
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::submit);
  CHECK(r->backend.length == 512);
  CHECK(r->status_byte == tc.last_writable_byte());
  CHECK(vb::blk::finish_request(*r, 0) == 1);
  const Bytes w = tc.written();
  CHECK(w[98] == 0xee); // untouched
  CHECK(w[99] == VIRTIO_BLK_S_OK);
}

TEST_CASE("IN: readable bytes after the header are ignored") {
  TestChain tc;
  tc.read(concat({header(VIRTIO_BLK_T_IN, 0), pattern(100)})).write(513);
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::submit);
  CHECK(r->backend.op == Op::read);
  CHECK(r->backend.length == 512);
}

TEST_CASE("FLUSH goes to the backend when offered, ignoring sector and data, else UNSUPP") {
  TestChain tc;
  tc.read(header(VIRTIO_BLK_T_FLUSH, 12345)).read(pattern(16)).write(1);
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::submit);
  CHECK(r->backend.op == Op::flush);
  CHECK(r->backend.offset == 0);
  CHECK(r->backend.length == 0);
  CHECK(r->backend.iovcnt == 0);
  CHECK(vb::blk::finish_request(*r, 0) == 1);
  CHECK(*tc.last_writable_byte() == VIRTIO_BLK_S_OK);

  DeviceParams p = params();
  p.flush = false;
  TestChain tc2;
  tc2.read(header(VIRTIO_BLK_T_FLUSH, 0)).write(1);
  CHECK(answered(tc2, p) == VIRTIO_BLK_S_UNSUPP);
}

TEST_CASE("GET_ID copies the serial into the data area, NUL padded, whatever its size") {
  struct Case {
    const char *what;
    std::size_t area;
    std::string expect;
  } cases[] = {
      {"exact", 20, std::string("serial-0123") + std::string(9, '\0')},
      {"short", 8, "serial-0"},
      {"one byte", 1, "s"},
      {"none", 0, ""},
      {"long: only 20 bytes", 32, std::string("serial-0123") + std::string(9, '\0')},
  };
  for (const auto &k : cases) {
    CAPTURE(k.what);
    TestChain tc;
    tc.read(header(VIRTIO_BLK_T_GET_ID, 0)).write(k.area + 1);
    auto r = parse(tc, params());
    REQUIRE(r->action == Action::complete);
    CHECK_FALSE(r->needs_backend());
    CHECK(r->status == VIRTIO_BLK_S_OK);
    CHECK(r->used_len == k.expect.size() + 1);
    CHECK(vb::blk::finish_request(*r, EIO) == k.expect.size() + 1); // error ignored: answered here
    const Bytes w = tc.written();
    CHECK(std::string(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(k.expect.size())) == k.expect);
    for (std::size_t i = k.expect.size(); i + 1 < w.size(); ++i)
      CHECK(w[i] == 0xee); // beyond 20 bytes: untouched
    CHECK(w.back() == VIRTIO_BLK_S_OK);
  }
}

TEST_CASE("GET_ID scatters the serial across split buffers, status byte in the last one") {
  TestChain tc;
  tc.read(header(VIRTIO_BLK_T_GET_ID, 0)).write(21, {3, 0, 10, 7});
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::complete);
  CHECK(vb::blk::finish_request(*r, 0) == 21);
  const Bytes w = tc.written();
  CHECK(std::string(w.begin(), w.begin() + 11) == "serial-0123");
  CHECK(w[19] == 0);
  CHECK(w[20] == VIRTIO_BLK_S_OK);
}

TEST_CASE("DISCARD and WRITE_ZEROES: one segment becomes a backend request") {
  struct Case {
    std::uint32_t type;
    std::uint32_t flags;
    bool zero_unmap;
    Op op;
    bool may_unmap;
  } cases[] = {
      {VIRTIO_BLK_T_DISCARD, 0, true, Op::discard, false},
      {VIRTIO_BLK_T_WRITE_ZEROES, 0, true, Op::write_zeroes, false},
      {VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, true, Op::write_zeroes, true},
      // UNMAP is only a permission: without write_zeroes_may_unmap the device just writes zeroes.
      {VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, false, Op::write_zeroes, false},
  };
  for (const auto &k : cases) {
    CAPTURE(k.type);
    CAPTURE(k.flags);
    DeviceParams p = params();
    p.zero_unmap = k.zero_unmap;
    TestChain tc;
    tc.read(header(k.type, 0)).read(segment(16, 32, k.flags)).write(1);
    auto r = parse(tc, p);
    REQUIRE(r->action == Action::submit);
    CHECK(r->backend.op == k.op);
    CHECK(r->backend.offset == 16 * 512);
    CHECK(r->backend.length == 32 * 512);
    CHECK(r->backend.iovcnt == 0);
    CHECK(r->backend.may_unmap == k.may_unmap);
    CHECK(vb::blk::finish_request(*r, 0) == 1);
    CHECK(*tc.last_writable_byte() == VIRTIO_BLK_S_OK);
  }
}

TEST_CASE("DISCARD and WRITE_ZEROES: malformed or unsupported payloads") {
  struct Case {
    const char *what;
    std::uint32_t type;
    Bytes payload;
    std::uint8_t status;
  } cases[] = {
      {"no segment", VIRTIO_BLK_T_DISCARD, {}, VIRTIO_BLK_S_IOERR},
      {"15 bytes", VIRTIO_BLK_T_DISCARD, Bytes(15, 0), VIRTIO_BLK_S_IOERR},
      {"17 bytes", VIRTIO_BLK_T_WRITE_ZEROES, Bytes(17, 0), VIRTIO_BLK_S_IOERR},
      {"1.5 segments", VIRTIO_BLK_T_WRITE_ZEROES, Bytes(24, 0), VIRTIO_BLK_S_IOERR},
      {"2 segments", VIRTIO_BLK_T_DISCARD, concat({segment(0, 8), segment(8, 8)}), VIRTIO_BLK_S_UNSUPP},
      {"2 zero segments", VIRTIO_BLK_T_WRITE_ZEROES, concat({segment(0, 8), segment(8, 8)}), VIRTIO_BLK_S_UNSUPP},
      {"UNMAP on discard", VIRTIO_BLK_T_DISCARD, segment(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
       VIRTIO_BLK_S_UNSUPP},
      {"unknown flag on discard", VIRTIO_BLK_T_DISCARD, segment(0, 8, 2), VIRTIO_BLK_S_UNSUPP},
      {"unknown flag on zeroes", VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 8, 0x80000001), VIRTIO_BLK_S_UNSUPP},
      // Unknown flags are UNSUPP even on a range that is also bad.
      {"unknown flag, bad range", VIRTIO_BLK_T_WRITE_ZEROES, segment(~0ULL, 8, 4), VIRTIO_BLK_S_UNSUPP},
      {"past the end", VIRTIO_BLK_T_DISCARD, segment(2047, 2), VIRTIO_BLK_S_IOERR},
      {"sector overflow", VIRTIO_BLK_T_WRITE_ZEROES, segment(1ULL << 55, 1), VIRTIO_BLK_S_IOERR},
      {"sector 2^63", VIRTIO_BLK_T_DISCARD, segment(1ULL << 63, 1), VIRTIO_BLK_S_IOERR},
      {"over max sectors", VIRTIO_BLK_T_DISCARD, segment(0, 1025), VIRTIO_BLK_S_IOERR},
      {"over max zeroes sectors", VIRTIO_BLK_T_WRITE_ZEROES, segment(8, 513), VIRTIO_BLK_S_IOERR},
      {"zero sectors", VIRTIO_BLK_T_DISCARD, segment(100, 0), VIRTIO_BLK_S_OK},
  };
  DeviceParams p = params();
  p.max_discard_sectors = 1024; // below the capacity (2048) so that the limit itself is tested
  p.max_write_zeroes_sectors = 512;
  for (const auto &k : cases) {
    CAPTURE(k.what);
    TestChain tc;
    tc.read(concat({header(k.type, 0), k.payload})).write(1);
    auto r = parse(tc, p);
    REQUIRE(r->action == Action::complete);
    CHECK(r->status == k.status);
    CHECK(vb::blk::finish_request(*r, 0) == 1);
    CHECK(*tc.last_writable_byte() == k.status);
  }
  // The limits themselves are fine: the last sector, and exactly max sectors.
  for (const Bytes &seg : {segment(2047, 1), segment(0, 1024)}) {
    TestChain tc;
    tc.read(concat({header(VIRTIO_BLK_T_DISCARD, 0), seg})).write(1);
    auto r = parse(tc, p);
    REQUIRE(r->action == Action::submit);
    CHECK(r->backend.offset + r->backend.length <= p.capacity);
  }
}

TEST_CASE("DISCARD and WRITE_ZEROES: UNSUPP unless offered, block-aligned, segment split anywhere") {
  DeviceParams p = params();
  p.discard = false;
  p.write_zeroes = false;
  for (std::uint32_t type : {VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES}) {
    CAPTURE(type);
    TestChain tc;
    tc.read(concat({header(type, 0), segment(0, 8)})).write(1);
    CHECK(answered(tc, p) == VIRTIO_BLK_S_UNSUPP);
  }

  const DeviceParams p4k = params(4096);
  struct Case {
    std::uint64_t sector;
    std::uint32_t count;
    bool ok;
  } cases[] = {{8, 8, true}, {1, 8, false}, {8, 1, false}};
  for (const auto &k : cases) {
    CAPTURE(k.sector);
    CAPTURE(k.count);
    TestChain tc;
    tc.read(concat({header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(k.sector, k.count)})).write(1);
    auto r = parse(tc, p4k);
    CHECK(r->action == (k.ok ? Action::submit : Action::complete));
    if (!k.ok)
      CHECK(r->status == VIRTIO_BLK_S_IOERR);
  }

  // Header and segment in odd pieces: 5 + 14 + 13 bytes.
  TestChain tc;
  tc.read(concat({header(VIRTIO_BLK_T_DISCARD, 0), segment(24, 40)}), {5, 14}).write(1);
  REQUIRE(tc.chain().num_readable == 3);
  auto r = parse(tc, params());
  REQUIRE(r->action == Action::submit);
  CHECK(r->backend.op == Op::discard);
  CHECK(r->backend.offset == 24 * 512);
  CHECK(r->backend.length == 40 * 512);
}

TEST_CASE("unknown and unoffered request types are UNSUPP") {
  for (std::uint32_t type : {2U /* SCSI_CMD */, 3U, 5U /* legacy FLUSH_OUT */, 10U /* GET_LIFETIME */, 12U,
                             14U /* SECURE_ERASE */, 15U /* ZONE_APPEND */, 16U, 18U, 20U, 22U, 24U, 26U, 0xffU,
                             0x80000000U /* BARRIER | IN */, 0x80000001U, 0xffffffffU}) {
    CAPTURE(type);
    TestChain tc;
    tc.read(concat({header(type, 0), segment(0, 8)})).write(21);
    CHECK(answered(tc, params()) == VIRTIO_BLK_S_UNSUPP);
    CHECK(tc.written()[0] == 0xee); // nothing but the status byte written
  }
}

// ---------------------------------------------------------------------------------------------
// Framing: parse by byte position

TEST_CASE("the header may be split across readable buffers at any byte") {
  const Bytes data = pattern(1024, 9);
  const Bytes all = concat({header(VIRTIO_BLK_T_OUT, 6), data});
  struct Case {
    const char *what;
    std::vector<std::size_t> cuts;
  } cases[] = {
      {"1+7+8", {1, 7, 8}},
      {"3+13", {3, 13}},
      {"15+1", {15, 1}},
      {"byte by byte", std::vector<std::size_t>(16, 1)},
      {"header and data in one buffer", {}},
      {"data starts mid-buffer", {10, 100}},
      {"empty buffers in between", {0, 4, 0, 12, 0}},
  };
  for (const auto &k : cases) {
    CAPTURE(k.what);
    TestChain tc;
    std::size_t pos = 0;
    for (std::size_t cut : k.cuts) {
      if (cut == 0)
        tc.empty(false);
      else
        tc.read(Bytes(all.begin() + static_cast<std::ptrdiff_t>(pos),
                      all.begin() + static_cast<std::ptrdiff_t>(pos + cut)));
      pos += cut;
    }
    tc.read(Bytes(all.begin() + static_cast<std::ptrdiff_t>(pos), all.end())).write(1);
    auto r = parse(tc, params());
    REQUIRE(r->action == Action::submit);
    CHECK(r->type == VIRTIO_BLK_T_OUT);
    CHECK(r->sector == 6);
    CHECK(r->backend.offset == 6 * 512);
    CHECK(r->backend.length == 1024);
    CHECK(iov_total(*r) == 1024);
    CHECK(data_of(*r) == data);
    for (int i = 0; i < r->backend.iovcnt; ++i)
      CHECK(r->backend.iov[i].iov_len > 0); // empty pieces are left out
  }
}

TEST_CASE("IN: the status byte may be the last byte of a larger buffer, data may end mid-buffer") {
  SUBCASE("one buffer holds data and status") {
    TestChain tc;
    tc.read(header(VIRTIO_BLK_T_IN, 0)).write(4097);
    auto r = parse(tc, params());
    REQUIRE(r->action == Action::submit);
    REQUIRE(r->backend.iovcnt == 1);
    CHECK(r->iov[0].iov_base == tc.chain().writable()[0].iov_base);
    CHECK(r->iov[0].iov_len == 4096);
    CHECK(r->status_byte == static_cast<std::uint8_t *>(tc.chain().writable()[0].iov_base) + 4096);
  }
  SUBCASE("several buffers, status shares the last, then empty buffers") {
    TestChain tc;
    tc.read(header(VIRTIO_BLK_T_IN, 0)).write(2049, {1000, 1000}).empty(true).empty(true);
    auto r = parse(tc, params());
    REQUIRE(r->action == Action::submit);
    REQUIRE(r->backend.iovcnt == 3);
    CHECK(r->iov[0].iov_len == 1000);
    CHECK(r->iov[1].iov_len == 1000);
    CHECK(r->iov[2].iov_len == 48);
    CHECK(r->iov[2].iov_base == tc.chain().writable()[2].iov_base);
    CHECK(iov_total(*r) == 2048);
    CHECK(r->status_byte == static_cast<std::uint8_t *>(tc.chain().writable()[2].iov_base) + 48);
    CHECK(r->status_byte == tc.last_writable_byte());
  }
  SUBCASE("status alone in the last buffer leaves no empty iovec") {
    TestChain tc;
    tc.read(header(VIRTIO_BLK_T_IN, 0)).write(512).write(1);
    auto r = parse(tc, params());
    REQUIRE(r->action == Action::submit);
    CHECK(r->backend.iovcnt == 1);
  }
}

// ---------------------------------------------------------------------------------------------
// Validation

TEST_CASE("IN/OUT range checks at the capacity boundary and against overflow") {
  // A device as large as 64 bits allow, so that only the overflow checks can catch wrap-around.
  DeviceParams huge = params();
  huge.capacity = ~0ULL - 511; // 2^64 - 512
  const std::uint64_t huge_last = huge.capacity / 512 - 1;

  struct Case {
    const char *what;
    const DeviceParams *p;
    std::uint32_t type;
    std::uint64_t sector;
    std::size_t len;
    bool ok;
  } cases[] = {
      {"last sector", nullptr, VIRTIO_BLK_T_IN, 2047, 512, true},
      {"ends at capacity", nullptr, VIRTIO_BLK_T_OUT, 2040, 4096, true},
      {"one past", nullptr, VIRTIO_BLK_T_IN, 2047, 1024, false},
      {"starts at capacity", nullptr, VIRTIO_BLK_T_OUT, 2048, 512, false},
      {"zero length at capacity", nullptr, VIRTIO_BLK_T_IN, 2048, 0, true},
      {"zero length past capacity", nullptr, VIRTIO_BLK_T_OUT, 2049, 0, false},
      {"sector 2^63 (wraps to 0)", nullptr, VIRTIO_BLK_T_IN, 1ULL << 63, 512, false},
      {"sector 2^55 (wraps to 0)", &huge, VIRTIO_BLK_T_OUT, 1ULL << 55, 512, false},
      {"sector max", &huge, VIRTIO_BLK_T_IN, ~0ULL, 512, false},
      {"last sector of a huge disk", &huge, VIRTIO_BLK_T_IN, huge_last, 512, true},
      {"offset + len wraps", &huge, VIRTIO_BLK_T_OUT, huge_last, 1024, false},
      {"not whole sectors", nullptr, VIRTIO_BLK_T_OUT, 0, 100, false},
  };
  const DeviceParams normal = params();
  for (const auto &k : cases) {
    CAPTURE(k.what);
    const DeviceParams &p = k.p ? *k.p : normal;
    TestChain tc;
    tc.read(header(k.type, k.sector));
    if (k.type == VIRTIO_BLK_T_OUT) {
      if (k.len > 0)
        tc.read(pattern(k.len));
      tc.write(1);
    } else {
      tc.write(k.len + 1);
    }
    auto r = parse(tc, p);
    if (k.ok) {
      // Zero-length requests are answered at once: no backend call for nothing.
      CHECK(r->action == (k.len > 0 ? Action::submit : Action::complete));
      if (k.len == 0)
        CHECK(r->status == VIRTIO_BLK_S_OK);
      else
        CHECK(r->backend.offset == k.sector * 512);
    } else {
      REQUIRE(r->action == Action::complete);
      CHECK(r->status == VIRTIO_BLK_S_IOERR);
      CHECK(r->used_len == 1);
    }
  }
}

TEST_CASE("4096-byte blocks: offset and length must be whole blocks") {
  const DeviceParams p = params(4096);
  struct Case {
    std::uint64_t sector;
    std::size_t len;
    bool ok;
  } cases[] = {
      {0, 4096, true}, {8, 8192, true},  {1, 4096, false}, {7, 4096, false},
      {8, 512, false}, {8, 4608, false}, {0, 0, true},     {4, 0, false},
  };
  for (std::uint32_t type : {VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT}) {
    for (const auto &k : cases) {
      CAPTURE(type);
      CAPTURE(k.sector);
      CAPTURE(k.len);
      TestChain tc;
      tc.read(header(type, k.sector));
      if (type == VIRTIO_BLK_T_OUT) {
        if (k.len > 0)
          tc.read(pattern(k.len));
        tc.write(1);
      } else {
        tc.write(k.len + 1);
      }
      auto r = parse(tc, p);
      if (!k.ok) {
        REQUIRE(r->action == Action::complete);
        CHECK(r->status == VIRTIO_BLK_S_IOERR);
      } else {
        CHECK(r->action == (k.len > 0 ? Action::submit : Action::complete));
      }
    }
  }
}

TEST_CASE("a read-only device fails writes with IOERR and still serves reads, flush and GET_ID") {
  DeviceSettings s = settings();
  s.read_only = true;
  const DeviceParams p = vb::blk::make_device_params(caps(), s);

  for (const Bytes &req :
       {concat({header(VIRTIO_BLK_T_OUT, 0), pattern(512)}), concat({header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 8)}),
        concat({header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 8)}),
        header(VIRTIO_BLK_T_OUT, 0) /* even with no data */}) {
    CAPTURE(get_le(req, 0, 4));
    TestChain tc;
    tc.read(req).write(1);
    CHECK(answered(tc, p) == VIRTIO_BLK_S_IOERR);
  }

  TestChain in;
  in.read(header(VIRTIO_BLK_T_IN, 0)).write(513);
  CHECK(parse(in, p)->backend.op == Op::read);
  TestChain flush;
  flush.read(header(VIRTIO_BLK_T_FLUSH, 0)).write(1);
  CHECK(parse(flush, p)->action == Action::submit);
  TestChain id;
  id.read(header(VIRTIO_BLK_T_GET_ID, 0)).write(21);
  CHECK(answered(id, p) == VIRTIO_BLK_S_OK);
}

// ---------------------------------------------------------------------------------------------
// Chains that cannot carry a request

TEST_CASE("no device-writable byte: the request is dropped, nothing is written") {
  struct Case {
    const char *what;
    bool empty_writable;
  } cases[] = {{"readable only", false}, {"empty writable buffers", true}};
  for (const auto &k : cases) {
    CAPTURE(k.what);
    TestChain tc;
    tc.read(concat({header(VIRTIO_BLK_T_OUT, 0), pattern(512)}));
    if (k.empty_writable)
      tc.empty(true).empty(true);
    auto r = parse(tc, params());
    CHECK(r->action == Action::drop);
    CHECK(r->dropped());
    CHECK(r->status_byte == nullptr);
    CHECK(vb::blk::used_len_for(*r, 0) == 0);
    CHECK(vb::blk::finish_request(*r, 0) == 0);
  }

  TestChain nothing; // no buffers at all
  auto r = parse(nothing, params());
  CHECK(r->action == Action::drop);
  CHECK(vb::blk::finish_request(*r, 0) == 0);
}

TEST_CASE("too short for a header: IOERR in the status byte") {
  for (std::size_t len : {0UL, 1UL, 8UL, 15UL}) {
    CAPTURE(len);
    TestChain tc;
    Bytes hdr = header(VIRTIO_BLK_T_IN, 0);
    hdr.resize(len);
    if (len > 0)
      tc.read(hdr);
    tc.write(513);
    CHECK(answered(tc, params()) == VIRTIO_BLK_S_IOERR);
    CHECK(tc.written()[0] == 0xee);
  }
}

TEST_CASE("a previous parse leaves nothing behind") {
  auto r = std::make_unique<ParsedRequest>();
  TestChain a;
  a.read(concat({header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)})).write(1);
  vb::blk::parse_request(a.chain(), params(), *r);
  REQUIRE(r->backend.may_unmap);
  TestChain b;
  b.read(header(VIRTIO_BLK_T_IN, 0)).write(513);
  vb::blk::parse_request(b.chain(), params(), *r);
  CHECK(r->backend.op == Op::read);
  CHECK_FALSE(r->backend.may_unmap);
  CHECK(r->status_byte == b.last_writable_byte());
}

// ---------------------------------------------------------------------------------------------
// Completion

TEST_CASE("status_from_errno") {
  struct Case {
    int err;
    std::uint8_t status;
  } cases[] = {
      {0, VIRTIO_BLK_S_OK},
      {EOPNOTSUPP, VIRTIO_BLK_S_UNSUPP},
      {-EOPNOTSUPP, VIRTIO_BLK_S_IOERR}, // errnos are positive across the backend interface
      {ENOTSUP, VIRTIO_BLK_S_UNSUPP},
      {EIO, VIRTIO_BLK_S_IOERR},
      {-EIO, VIRTIO_BLK_S_IOERR},
      {ECANCELED, VIRTIO_BLK_S_IOERR},
      {ENOSPC, VIRTIO_BLK_S_IOERR},
      {-2147483647 - 1, VIRTIO_BLK_S_IOERR},
  };
  for (const auto &k : cases) {
    CAPTURE(k.err);
    CHECK(vb::blk::status_from_errno(k.err) == k.status);
  }
}

TEST_CASE("finish_request after the backend: status from errno, used length counts read data on success") {
  struct Case {
    std::uint32_t type;
    int err;
    std::uint8_t status;
    std::uint32_t used;
  } cases[] = {
      {VIRTIO_BLK_T_IN, 0, VIRTIO_BLK_S_OK, 1025},           {VIRTIO_BLK_T_IN, EIO, VIRTIO_BLK_S_IOERR, 1},
      {VIRTIO_BLK_T_IN, EOPNOTSUPP, VIRTIO_BLK_S_UNSUPP, 1}, {VIRTIO_BLK_T_OUT, 0, VIRTIO_BLK_S_OK, 1},
      {VIRTIO_BLK_T_OUT, ECANCELED, VIRTIO_BLK_S_IOERR, 1},  {VIRTIO_BLK_T_FLUSH, 0, VIRTIO_BLK_S_OK, 1},
      {VIRTIO_BLK_T_FLUSH, EIO, VIRTIO_BLK_S_IOERR, 1},
  };
  for (const auto &k : cases) {
    CAPTURE(k.type);
    CAPTURE(k.err);
    TestChain tc;
    tc.read(header(k.type, 0));
    if (k.type == VIRTIO_BLK_T_OUT)
      tc.read(pattern(1024));
    tc.write(k.type == VIRTIO_BLK_T_IN ? 1025 : 1);
    auto r = parse(tc, params());
    REQUIRE(r->action == Action::submit);
    CHECK(vb::blk::used_len_for(*r, k.err) == k.used);
    CHECK(vb::blk::finish_request(*r, k.err) == k.used);
    CHECK(*tc.last_writable_byte() == k.status);
  }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: random chains keep every invariant (run under ASan/UBSan in build-asan)

TEST_CASE("random chains: the status byte is the last writable byte and data stays inside the chain") {
  std::mt19937_64 rng(12345);
  const std::uint32_t types[] = {
      VIRTIO_BLK_T_IN,      VIRTIO_BLK_T_OUT,          VIRTIO_BLK_T_FLUSH,        VIRTIO_BLK_T_GET_ID,
      VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_SECURE_ERASE, 0x7fffffff};
  const DeviceParams params_list[] = {params(512), params(4096)};
  for (int iter = 0; iter < 3000; ++iter) {
    CAPTURE(iter);
    const DeviceParams &p = params_list[rng() % 2];
    const std::uint32_t type = types[rng() % std::size(types)];
    // Sectors near 0, near the end, and anywhere in 64 bits.
    std::uint64_t sector = rng();
    if (rng() % 3 == 0)
      sector %= 4096;
    else if (rng() % 2 == 0)
      sector = p.capacity / 512 - rng() % 16;
    Bytes payload;
    if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES)
      payload = concat({segment(rng() % 4096, static_cast<std::uint32_t>(rng() % 64), rng() % 4 == 0 ? 1 : 0),
                        Bytes(rng() % 4 == 0 ? rng() % 20 : 0, 0)});
    else if (type == VIRTIO_BLK_T_OUT)
      payload = pattern((rng() % 9) * 512 + (rng() % 8 == 0 ? rng() % 512 : 0));
    Bytes readable = concat({header(type, sector), payload});
    readable.resize(rng() % 16 == 0 ? rng() % readable.size() : readable.size()); // sometimes truncated

    TestChain tc;
    // Random cut points for readable and writable parts, with empty pieces now and then.
    std::size_t pos = 0;
    while (pos < readable.size()) {
      const std::size_t n = std::min<std::size_t>(readable.size() - pos, 1 + rng() % 24);
      tc.read(Bytes(readable.begin() + static_cast<std::ptrdiff_t>(pos),
                    readable.begin() + static_cast<std::ptrdiff_t>(pos + n)));
      pos += n;
      if (rng() % 8 == 0)
        tc.empty(false);
    }
    std::size_t wlen = type == VIRTIO_BLK_T_IN ? (rng() % 9) * 512 + 1 : rng() % 40;
    if (rng() % 8 == 0)
      wlen = rng() % 700;
    pos = 0;
    while (pos < wlen) {
      const std::size_t n = std::min<std::size_t>(wlen - pos, 1 + rng() % 300);
      tc.write(n);
      pos += n;
      if (rng() % 8 == 0)
        tc.empty(true);
    }

    auto r = parse(tc, p);
    CHECK(r->status_byte == tc.last_writable_byte());
    if (r->status_byte == nullptr) {
      CHECK(r->action == Action::drop);
      continue;
    }
    const std::uint64_t writable_bytes = tc.chain().writable_bytes;
    if (r->action == Action::submit) {
      const Request &b = r->backend;
      CHECK(b.offset % p.logical_block_size == 0);
      CHECK(b.length % p.logical_block_size == 0);
      CHECK((b.length > 0) == (b.op != Op::flush));
      CHECK(b.offset <= p.capacity);
      CHECK(b.length <= p.capacity - b.offset);
      if (b.op == Op::read || b.op == Op::write) {
        CHECK(iov_total(*r) == b.length);
      } else {
        CHECK(b.iovcnt == 0);
      }
      for (int i = 0; i < b.iovcnt; ++i) {
        // Every data byte lies inside one of the chain's buffers of the right direction, and
        // never on the status byte.
        const auto *s = static_cast<const std::uint8_t *>(b.iov[i].iov_base);
        const auto *e = s + b.iov[i].iov_len;
        bool inside = false;
        const unsigned first = b.op == Op::read ? tc.chain().num_readable : 0;
        const unsigned count = b.op == Op::read ? tc.chain().num_writable : tc.chain().num_readable;
        for (unsigned j = first; j < first + count; ++j) {
          const auto *vs = static_cast<const std::uint8_t *>(tc.chain().iov[j].iov_base);
          if (s >= vs && e <= vs + tc.chain().iov[j].iov_len)
            inside = true;
        }
        CHECK(inside);
        CHECK_FALSE((r->status_byte >= s && r->status_byte < e));
      }
      CHECK(vb::blk::used_len_for(*r, 0) <= writable_bytes);
    } else {
      CHECK(r->used_len >= 1);
      CHECK(r->used_len <= writable_bytes);
      CHECK(r->status <= VIRTIO_BLK_S_UNSUPP);
    }
  }
}
