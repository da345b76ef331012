#include "common/units.h"

#include <doctest/doctest.h>

using namespace std::chrono_literals;
using vb::parse_duration;
using vb::parse_size;

TEST_CASE("parse_size accepts plain numbers and binary suffixes") {
  struct Case {
    const char *text;
    std::uint64_t bytes;
  } cases[] = {
      {"0", 0},
      {"512", 512},
      {"4K", 4096},
      {"4k", 4096},
      {"64KiB", 65536},
      {"1M", 1 << 20},
      {"1MB", 1 << 20},
      {"1G", 1ULL << 30},
      {"2GiB", 2ULL << 30},
      {" 1T ", 1ULL << 40},
      {"3TiB", 3ULL << 40},
      {"10B", 10},
  };
  for (const auto &c : cases) {
    CAPTURE(c.text);
    auto r = parse_size(c.text);
    REQUIRE(r);
    CHECK(*r.value == c.bytes);
  }
}

TEST_CASE("parse_size rejects malformed input with a reason") {
  for (const char *bad : {"", "  ", "-1", "+5", "1.5G", "G", "12X", "1 GG", "99999999999999999999", "16777216T"}) {
    CAPTURE(bad);
    auto r = parse_size(bad);
    CHECK_FALSE(r);
    CHECK_FALSE(r.error.empty());
  }
  CHECK(parse_size("12X").error.find("'X'") != std::string::npos);
}

TEST_CASE("parse_duration") {
  CHECK(*parse_duration("0").value == 0ms);
  CHECK(*parse_duration("250ms").value == 250ms);
  CHECK(*parse_duration("30s").value == 30s);
  CHECK(*parse_duration("2m").value == 120s);
  CHECK(*parse_duration("1h").value == 3600s);
  for (const char *bad : {"", "30", "-1s", "1.5s", "5 days", "s", "18446744073709551615h"}) {
    CAPTURE(bad);
    auto r = parse_duration(bad);
    CHECK_FALSE(r);
    CHECK_FALSE(r.error.empty());
  }
  CHECK(parse_duration("30").error.find("unit") != std::string::npos);
}

TEST_CASE("parse_duration refuses what the clock's nanoseconds cannot hold, and says the bound") {
  CHECK(*parse_duration("1000000h").value == vb::max_duration);
  CHECK(*parse_duration("60000000m").value == vb::max_duration);
  // Each of these overflows int64 nanoseconds (292 years) once converted; before, 99999999h was accepted.
  for (const char *bad : {"1000001h", "99999999h", "3600000001s", "9223372036854775807ms", "forever"}) {
    CAPTURE(bad);
    const auto r = parse_duration(bad);
    CHECK_FALSE(r);
  }
  CHECK(parse_duration("99999999h").error == "a duration of at most 1000000h (about 114 years), got '99999999h'");
  // Whatever is accepted converts to the steady clock's nanoseconds and adds to now() without overflow.
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(vb::max_duration);
  CHECK(ns.count() > 0);
  CHECK(std::chrono::steady_clock::now().time_since_epoch().count() <
        std::chrono::nanoseconds::max().count() - ns.count());
  CHECK(vb::format_duration(vb::forever_duration) == "forever");
}

TEST_CASE("format_size") {
  CHECK(vb::format_size(0) == "0 B");
  CHECK(vb::format_size(512) == "512 B");
  CHECK(vb::format_size(1ULL << 30) == "1 GiB");
  CHECK(vb::format_size(3ULL << 19) == "1.5 MiB");
}

TEST_CASE("format_duration writes the largest exact unit, and parses back to the same value") {
  using std::chrono::milliseconds;
  CHECK(vb::format_duration(milliseconds(0)) == "0ms");
  CHECK(vb::format_duration(milliseconds(250)) == "250ms");
  CHECK(vb::format_duration(milliseconds(1500)) == "1500ms");
  CHECK(vb::format_duration(milliseconds(30000)) == "30s");
  CHECK(vb::format_duration(milliseconds(120000)) == "2m");
  CHECK(vb::format_duration(milliseconds(7200000)) == "2h");
  for (long long ms : {1LL, 999LL, 1000LL, 61000LL, 3600000LL, 86400000LL})
    CHECK(vb::parse_duration(vb::format_duration(milliseconds(ms))).value == milliseconds(ms));
}
