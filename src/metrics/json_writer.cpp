#include "metrics/json_writer.h"

#include <cassert>
#include <charconv>
#include <cmath>

namespace vb::metrics {
namespace {

// The length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlongs, no surrogates, at
// most U+10FFFF), or 0 if it is not one.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf; // the allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf)
    n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0)
      lo = 0xa0; // overlong
    else if (c == 0xed)
      hi = 0x9f; // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0)
      lo = 0x90; // overlong
    else if (c == 0xf4)
      hi = 0x8f; // above U+10FFFF
  } else
    return 0;
  if (i + n > s.size())
    return 0;
  if (b(i + 1) < lo || b(i + 1) > hi)
    return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xbf)
      return 0;
  return n;
}

void append_quoted(std::string &out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t n = utf8_sequence(s, i);
      if (n == 0) {
        out += "\xef\xbf\xbd"; // U+FFFD for one bad byte
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    ++i;
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\b':
      out += "\\b";
      break;
    case '\f':
      out += "\\f";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (c < 0x20) {
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 0xf];
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  out += '"';
}

} // namespace

std::string json_quote(std::string_view value) {
  std::string out;
  out.reserve(value.size() + 2);
  append_quoted(out, value);
  return out;
}

void JsonWriter::before_value() {
  if (stack_.empty()) {
    assert(out_.empty() && "one top-level value");
    return;
  }
  Level &l = stack_.back();
  if (l.object) {
    assert(l.key_pending && "a value in an object needs a key");
    l.key_pending = false;
    return;
  }
  if (!l.empty)
    out_ += ',';
  l.empty = false;
}

JsonWriter &JsonWriter::begin_object() {
  before_value();
  out_ += '{';
  stack_.push_back({true});
  return *this;
}

JsonWriter &JsonWriter::end_object() {
  assert(!stack_.empty() && stack_.back().object && !stack_.back().key_pending);
  stack_.pop_back();
  out_ += '}';
  return *this;
}

JsonWriter &JsonWriter::begin_array() {
  before_value();
  out_ += '[';
  stack_.push_back({false});
  return *this;
}

JsonWriter &JsonWriter::end_array() {
  assert(!stack_.empty() && !stack_.back().object);
  stack_.pop_back();
  out_ += ']';
  return *this;
}

JsonWriter &JsonWriter::key(std::string_view name) {
  assert(!stack_.empty() && stack_.back().object && !stack_.back().key_pending);
  Level &l = stack_.back();
  if (!l.empty)
    out_ += ',';
  l.empty = false;
  l.key_pending = true;
  append_quoted(out_, name);
  out_ += ':';
  return *this;
}

JsonWriter &JsonWriter::value(std::string_view s) {
  before_value();
  append_quoted(out_, s);
  return *this;
}

JsonWriter &JsonWriter::value(bool b) {
  before_value();
  out_ += b ? "true" : "false";
  return *this;
}

JsonWriter &JsonWriter::value(std::uint64_t n) {
  before_value();
  out_ += std::to_string(n);
  return *this;
}

JsonWriter &JsonWriter::value(std::int64_t n) {
  before_value();
  out_ += std::to_string(n);
  return *this;
}

JsonWriter &JsonWriter::value(double d) {
  if (!std::isfinite(d))
    return null();
  before_value();
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, d);
  out_.append(buf, r.ptr);
  return *this;
}

JsonWriter &JsonWriter::null() {
  before_value();
  out_ += "null";
  return *this;
}

std::string JsonWriter::take() {
  assert(stack_.empty() && "every container closed");
  return std::move(out_);
}

} // namespace vb::metrics
