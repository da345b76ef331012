// The NBD transmission phase's wire format, as far as the daemon's own transmission path uses
// it: requests, simple replies (no structured replies, no extended headers) and error values.
// Pure functions on bytes; the reply bytes come from the server and are not trusted.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vb::nbd_wire {

constexpr std::uint32_t kRequestMagic = 0x25609513;
constexpr std::uint32_t kSimpleReplyMagic = 0x67446698;
constexpr std::size_t kRequestSize = 28;
constexpr std::size_t kReplySize = 16;

enum class Command : std::uint16_t { read = 0, write = 1, disconnect = 2, flush = 3, trim = 4, write_zeroes = 6 };
constexpr std::uint16_t kFlagNoHole = 1U << 1;

// Writes a request header: magic, flags, type, cookie, offset, length (all big-endian).
void encode_request(std::uint8_t out[kRequestSize], Command type, std::uint16_t flags, std::uint64_t cookie,
                    std::uint64_t offset, std::uint32_t length) noexcept;

struct Reply {
  std::uint32_t error = 0; // the server's NBD error value (0: success)
  std::uint64_t cookie = 0;
};
// False when the bytes are not a simple reply (wrong magic): the stream cannot be followed.
bool decode_reply(const std::uint8_t in[kReplySize], Reply &out) noexcept;

// The errno for an NBD error value. The protocol defines a few (EPERM, EIO, ENOMEM, EINVAL,
// ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN); anything else a server sends means EIO.
int errno_of(std::uint32_t nbd_error) noexcept;

} // namespace vb::nbd_wire
