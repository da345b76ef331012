// Small helpers shared by the libFuzzer targets: an invariant check that names itself when it
// fails (libFuzzer then saves the input as a crash), and a reader of fixed-position input fields,
// so that a mutation of one byte changes one decision and not the meaning of everything after it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// Aborts with the condition and its place: a silent misbehaviour becomes a crash with a reproducer.
#define FUZZ_CHECK(cond)                                                                                               \
  do {                                                                                                                 \
    if (!(cond)) {                                                                                                     \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond);                               \
      std::abort();                                                                                                    \
    }                                                                                                                  \
  } while (0)

namespace vb::fuzz {

// Reads little-endian fields at fixed offsets; bytes past the end read as 0.
class Fields {
public:
  Fields(const std::uint8_t *data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t u8(std::size_t at) const { return at < size_ ? data_[at] : 0; }
  std::uint16_t u16(std::size_t at) const { return static_cast<std::uint16_t>(u8(at) | u8(at + 1) << 8); }
  std::uint32_t u32(std::size_t at) const { return u16(at) | static_cast<std::uint32_t>(u16(at + 2)) << 16; }

  // The bytes from offset at on (empty if at is past the end).
  const std::uint8_t *tail(std::size_t at) const { return data_ + (at < size_ ? at : size_); }
  std::size_t tail_size(std::size_t at) const { return at < size_ ? size_ - at : 0; }

private:
  const std::uint8_t *data_;
  std::size_t size_;
};

} // namespace vb::fuzz
