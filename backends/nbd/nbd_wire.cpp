#include "nbd/nbd_wire.h"

#include <cerrno>

namespace vb::nbd_wire {

namespace {

void put_be(std::uint8_t *p, std::uint64_t v, unsigned bytes) noexcept {
  for (unsigned i = 0; i < bytes; ++i)
    p[i] = static_cast<std::uint8_t>(v >> (8 * (bytes - 1 - i)));
}

std::uint64_t get_be(const std::uint8_t *p, unsigned bytes) noexcept {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < bytes; ++i)
    v = (v << 8) | p[i];
  return v;
}

} // namespace

void encode_request(std::uint8_t out[kRequestSize], Command type, std::uint16_t flags, std::uint64_t cookie,
                    std::uint64_t offset, std::uint32_t length) noexcept {
  put_be(out, kRequestMagic, 4);
  put_be(out + 4, flags, 2);
  put_be(out + 6, static_cast<std::uint16_t>(type), 2);
  put_be(out + 8, cookie, 8);
  put_be(out + 16, offset, 8);
  put_be(out + 24, length, 4);
}

bool decode_reply(const std::uint8_t in[kReplySize], Reply &out) noexcept {
  if (get_be(in, 4) != kSimpleReplyMagic)
    return false;
  out.error = static_cast<std::uint32_t>(get_be(in + 4, 4));
  out.cookie = get_be(in + 8, 8);
  return true;
}

int errno_of(std::uint32_t nbd_error) noexcept {
  // The protocol's values are Linux's errno numbers for these eight.
  switch (nbd_error) {
  case 0:
    return 0;
  case 1:
    return EPERM;
  case 5:
    return EIO;
  case 12:
    return ENOMEM;
  case 22:
    return EINVAL;
  case 28:
    return ENOSPC;
  case 75:
    return EOVERFLOW;
  case 95:
    return ENOTSUP;
  case 108:
    return ESHUTDOWN;
  default:
    return EIO;
  }
}

} // namespace vb::nbd_wire
