// Small text helpers shared by parsers (the configuration, URIs).
#pragma once

namespace vb {

// The value of a hexadecimal digit, or -1 if c is not one.
constexpr int hex_digit(char c) noexcept {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

} // namespace vb
