// A small JSON (RFC 8259) writer for the operator surface's machine-readable output: objects,
// arrays, strings, numbers, booleans and null, written in order into one string.
//
// Strings: ", \ and the control characters U+0000..U+001F are escaped (\b \f \n \r \t, else
// \u00XX); other characters pass through as UTF-8. Bytes that are not valid UTF-8 become U+FFFD,
// so the output is always valid JSON whatever a backend's error text holds. Numbers: integers
// exactly; doubles in the shortest form that reads back the same, non-finite ones as null.
//
// Misuse (a value where a key is due, end_object() closing an array, take() with containers
// still open) is a programming error, caught by assert in debug builds.
// Threading: one writer per thread; nothing shared.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vb::metrics {

// value as a JSON string literal, quotes included.
std::string json_quote(std::string_view value);

class JsonWriter {
public:
  JsonWriter &begin_object();
  JsonWriter &end_object();
  JsonWriter &begin_array();
  JsonWriter &end_array();
  // In an object: the next member's name; a value (or container) must follow.
  JsonWriter &key(std::string_view name);

  JsonWriter &value(std::string_view s);
  JsonWriter &value(const char *s) { return value(std::string_view(s)); }
  JsonWriter &value(const std::string &s) { return value(std::string_view(s)); }
  JsonWriter &value(bool b);
  JsonWriter &value(std::uint64_t n);
  JsonWriter &value(std::int64_t n);
  JsonWriter &value(unsigned n) { return value(static_cast<std::uint64_t>(n)); }
  JsonWriter &value(int n) { return value(static_cast<std::int64_t>(n)); }
  JsonWriter &value(double d);
  JsonWriter &null();

  // key(name) then value(v).
  template <typename T> JsonWriter &member(std::string_view name, const T &v) { return key(name).value(v); }

  // The text so far; every container must be closed.
  std::string take();

private:
  void before_value();

  struct Level {
    bool object;
    bool empty = true;
    bool key_pending = false;
  };
  std::string out_;
  std::vector<Level> stack_;
};

} // namespace vb::metrics
