#include "virtio_blk/blk_request.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <endian.h>
#include <limits>

namespace vb::blk {
namespace {

constexpr std::uint64_t kHeaderSize = sizeof(virtio_blk_outhdr);
constexpr std::uint64_t kSegmentSize = sizeof(virtio_blk_discard_write_zeroes);
static_assert(kHeaderSize == 16 && kSegmentSize == 16);

// Only one segment per DISCARD / WRITE_ZEROES (max_discard_seg = max_write_zeroes_seg = 1).
constexpr std::uint64_t kMaxSegments = 1;

std::uint8_t *base_of(const iovec &v) noexcept { return static_cast<std::uint8_t *>(v.iov_base); }

// Total length of n buffers; false if it does not fit 64 bits.
bool total_length(const iovec *iov, unsigned n, std::uint64_t &total) noexcept {
  total = 0;
  for (unsigned i = 0; i < n; ++i)
    if (__builtin_add_overflow(total, iov[i].iov_len, &total))
      return false;
  return true;
}

// Calls piece(base, length) for each non-empty piece of bytes [pos, pos + len) of the buffers
// iov[0, n), in order. Returns how many of the len bytes the buffers did not hold.
template <typename Piece>
std::uint64_t for_each_piece(const iovec *iov, unsigned n, std::uint64_t pos, std::uint64_t len, Piece piece) {
  for (unsigned i = 0; i < n && len > 0; ++i) {
    const std::uint64_t l = iov[i].iov_len;
    if (pos >= l) {
      pos -= l;
      continue;
    }
    const std::uint64_t take = std::min(l - pos, len);
    piece(base_of(iov[i]) + pos, take);
    len -= take;
    pos = 0;
  }
  return len;
}

// Copies len bytes from byte position pos of the buffers iov[0, n) into dst, each byte read
// once, so that dst can be checked without the driver changing it underneath. False if the
// buffers hold fewer bytes.
bool gather(const iovec *iov, unsigned n, std::uint64_t pos, void *dst, std::uint64_t len) noexcept {
  auto *out = static_cast<std::uint8_t *>(dst);
  return for_each_piece(iov, n, pos, len, [&out](std::uint8_t *base, std::uint64_t take) {
           std::memcpy(out, base, take);
           out += take;
         }) == 0;
}

// Copies len bytes from src to byte position 0 of the buffers iov[0, n), as far as they go.
void scatter(const iovec *iov, unsigned n, const void *src, std::uint64_t len) noexcept {
  const auto *in = static_cast<const std::uint8_t *>(src);
  for (unsigned i = 0; i < n && len > 0; ++i) {
    const std::uint64_t take = std::min<std::uint64_t>(iov[i].iov_len, len);
    if (take == 0)
      continue; // an empty buffer's base may be null: memcpy must not see it
    std::memcpy(base_of(iov[i]), in, take);
    in += take;
    len -= take;
  }
}

// Describes bytes [pos, pos + len) of the buffers iov[0, n) in out, leaving out empty pieces.
// Returns the number of iovecs written: at most n.
int slice(const iovec *iov, unsigned n, std::uint64_t pos, std::uint64_t len, iovec *out) noexcept {
  int count = 0;
  for_each_piece(iov, n, pos, len, [&](std::uint8_t *base, std::uint64_t take) { out[count++] = iovec{base, take}; });
  return count;
}

// The last byte of the last non-empty buffer, or nullptr.
std::uint8_t *last_byte(const iovec *iov, unsigned n) noexcept {
  for (unsigned i = n; i > 0; --i)
    if (iov[i - 1].iov_len > 0)
      return base_of(iov[i - 1]) + iov[i - 1].iov_len - 1;
  return nullptr;
}

// Whether [sector * 512, + len) is whole logical blocks inside the device; offset gets the
// byte offset. Written so that nothing can overflow whatever the driver sent.
bool range_ok(const DeviceParams &params, std::uint64_t sector, std::uint64_t len, std::uint64_t &offset) noexcept {
  const std::uint64_t lbs = params.logical_block_size;
  if (lbs == 0 || sector > (std::numeric_limits<std::uint64_t>::max() >> kSectorShift))
    return false;
  offset = sector << kSectorShift;
  if (offset % lbs != 0 || len % lbs != 0)
    return false;
  return offset <= params.capacity && len <= params.capacity - offset;
}

void answer(ParsedRequest &out, std::uint8_t status) noexcept {
  out.action = Action::complete;
  out.status = status;
}

void submit(ParsedRequest &out, Op op, std::uint64_t offset, std::uint64_t length) noexcept {
  out.action = Action::submit;
  out.backend.op = op;
  out.backend.offset = offset;
  out.backend.length = length;
}

void parse_discard_write_zeroes(const iovec *readable, unsigned num_readable, std::uint64_t payload,
                                const DeviceParams &params, ParsedRequest &out) noexcept {
  const bool zeroes = out.type == VIRTIO_BLK_T_WRITE_ZEROES;
  // The RO rule (a write request to a read-only device gets IOERR) comes before "not offered":
  // a read-only device offers neither, and the driver learns more from IOERR.
  if (params.read_only)
    return answer(out, VIRTIO_BLK_S_IOERR);
  if (!(zeroes ? params.write_zeroes : params.discard))
    return answer(out, VIRTIO_BLK_S_UNSUPP);
  // Not whole segments, or none: the request is malformed (driver requirement in 5.2.6.1).
  if (payload == 0 || payload % kSegmentSize != 0)
    return answer(out, VIRTIO_BLK_S_IOERR);
  // More segments than max_*_seg is well-formed but beyond what this device does: UNSUPP, as
  // QEMU's virtio-blk export answers ("a request unsupported by device"); Linux reports it as
  // EOPNOTSUPP rather than a media error, which is what it is.
  if (payload / kSegmentSize > kMaxSegments)
    return answer(out, VIRTIO_BLK_S_UNSUPP);

  virtio_blk_discard_write_zeroes seg;
  if (!gather(readable, num_readable, kHeaderSize, &seg, sizeof seg))
    return answer(out, VIRTIO_BLK_S_IOERR); // cannot happen: payload was counted above
  const std::uint64_t sector = le64toh(seg.sector);
  const std::uint32_t num_sectors = le32toh(seg.num_sectors);
  const std::uint32_t flags = le32toh(seg.flags);

  // Device requirements (5.2.6.2): UNSUPP for unknown flags, and for UNMAP on DISCARD.
  if ((flags & ~std::uint32_t{VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}) != 0)
    return answer(out, VIRTIO_BLK_S_UNSUPP);
  const bool unmap = (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0;
  if (!zeroes && unmap)
    return answer(out, VIRTIO_BLK_S_UNSUPP);

  const std::uint32_t max_sectors = zeroes ? params.max_write_zeroes_sectors : params.max_discard_sectors;
  std::uint64_t offset = 0;
  const std::uint64_t length = std::uint64_t{num_sectors} << kSectorShift; // < 2^41: no overflow
  if (num_sectors > max_sectors || !range_ok(params, sector, length, offset))
    return answer(out, VIRTIO_BLK_S_IOERR);
  if (length == 0)
    return answer(out, VIRTIO_BLK_S_OK); // nothing to do; the backend need not handle it

  submit(out, zeroes ? Op::write_zeroes : Op::discard, offset, length);
  // Only where the device advertised write_zeroes_may_unmap: otherwise UNMAP is a hint the
  // device declines (reads must return zeroes either way).
  out.backend.may_unmap = zeroes && unmap && params.zero_unmap;
}

} // namespace

void parse_request(const virtio::Chain &chain, const DeviceParams &params, ParsedRequest &out) noexcept {
  out.action = Action::drop;
  out.type = 0;
  out.sector = 0;
  out.status = VIRTIO_BLK_S_IOERR;
  out.status_byte = nullptr;
  out.used_len = 0;
  out.backend = Request{};

  const unsigned nr = chain.num_readable;
  const unsigned nw = chain.num_writable;
  // The ring code guarantees this; without it nothing in the chain can be trusted or answered.
  if (nr > virtio::kMaxChainIovecs || nw > virtio::kMaxChainIovecs - nr)
    return;
  const iovec *readable = chain.iov;
  const iovec *writable = chain.iov + nr;

  out.status_byte = last_byte(writable, nw);
  if (out.status_byte == nullptr)
    return; // Action::drop: no byte to report a status in
  out.used_len = 1;
  answer(out, VIRTIO_BLK_S_IOERR);

  std::uint64_t readable_bytes = 0;
  std::uint64_t writable_bytes = 0;
  // used.len is 32 bits; the ring code already rejects longer chains.
  if (!total_length(readable, nr, readable_bytes) || !total_length(writable, nw, writable_bytes) ||
      readable_bytes > std::numeric_limits<std::uint32_t>::max() ||
      writable_bytes > std::numeric_limits<std::uint32_t>::max())
    return;
  // Device-writable bytes before the status byte: read data or the GET_ID answer.
  const std::uint64_t in_len = writable_bytes - 1;

  virtio_blk_outhdr hdr;
  if (!gather(readable, nr, 0, &hdr, sizeof hdr))
    return; // too short for a header: IOERR
  out.type = le32toh(hdr.type);
  out.sector = le64toh(hdr.sector);
  const std::uint64_t out_len = readable_bytes - kHeaderSize;

  std::uint64_t offset = 0;
  switch (out.type) {
  case VIRTIO_BLK_T_IN:
    if (in_len > params.max_data_bytes || !range_ok(params, out.sector, in_len, offset))
      return answer(out, VIRTIO_BLK_S_IOERR);
    if (in_len == 0)
      return answer(out, VIRTIO_BLK_S_OK); // no data: nothing to read, nothing to ask the backend
    submit(out, Op::read, offset, in_len);
    out.backend.iovcnt = slice(writable, nw, 0, in_len, out.iov);
    out.backend.iov = out.iov;
    return;

  case VIRTIO_BLK_T_OUT:
    if (params.read_only)
      return answer(out, VIRTIO_BLK_S_IOERR); // 5.2.6.2: and no data may be written
    if (out_len > params.max_data_bytes || !range_ok(params, out.sector, out_len, offset))
      return answer(out, VIRTIO_BLK_S_IOERR);
    if (out_len == 0)
      return answer(out, VIRTIO_BLK_S_OK);
    // No FUA: virtio-blk has no such flag; durability comes from FLUSH.
    submit(out, Op::write, offset, out_len);
    out.backend.iovcnt = slice(readable, nr, kHeaderSize, out_len, out.iov);
    out.backend.iov = out.iov;
    return;

  case VIRTIO_BLK_T_FLUSH:
    // The sector (which the driver sets to 0) and any data are ignored. A read-only device
    // may still flush: there is nothing to write back, and the backend says so quickly.
    if (!params.flush)
      return answer(out, VIRTIO_BLK_S_UNSUPP);
    return submit(out, Op::flush, 0, 0);

  case VIRTIO_BLK_T_GET_ID: {
    // The driver sends exactly 20 bytes; a shorter area gets what fits, a longer one only 20.
    const std::uint64_t n = std::min<std::uint64_t>(in_len, kIdBytes);
    scatter(writable, nw, params.serial.data(), n);
    out.used_len = static_cast<std::uint32_t>(n + 1);
    return answer(out, VIRTIO_BLK_S_OK);
  }

  case VIRTIO_BLK_T_DISCARD:
  case VIRTIO_BLK_T_WRITE_ZEROES:
    return parse_discard_write_zeroes(readable, nr, out_len, params, out);

  default:
    // GET_LIFETIME, SECURE_ERASE, zone operations, legacy SCSI_CMD and BARRIER, and anything
    // unknown: not offered, so UNSUPP (5.2.6.2 requires it for the zone operations).
    return answer(out, VIRTIO_BLK_S_UNSUPP);
  }
}

std::uint8_t status_from_errno(int err) noexcept {
  if (err == 0)
    return VIRTIO_BLK_S_OK;
  if (err == EOPNOTSUPP)
    return VIRTIO_BLK_S_UNSUPP;
#if ENOTSUP != EOPNOTSUPP
  if (err == ENOTSUP)
    return VIRTIO_BLK_S_UNSUPP;
#endif
  return VIRTIO_BLK_S_IOERR;
}

std::uint32_t used_len_for(const ParsedRequest &req, int error) noexcept {
  switch (req.action) {
  case Action::drop:
    return 0;
  case Action::complete:
    return req.used_len;
  case Action::submit:
    break;
  }
  // A failed read may have filled part of the buffer, but nothing the driver may use.
  if (error == 0 && req.backend.op == Op::read)
    return static_cast<std::uint32_t>(req.backend.length + 1); // the chain checked it fits
  return 1;
}

std::uint32_t finish_request(const ParsedRequest &req, int error) noexcept {
  if (req.status_byte == nullptr || req.action == Action::drop)
    return 0;
  *req.status_byte = req.action == Action::submit ? status_from_errno(error) : req.status;
  return used_len_for(req, error);
}

} // namespace vb::blk
