// The pure parts of persistent-reservation fencing: keys and the hostile READ KEYS data.
#include "iscsi/iscsi_fencing.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

namespace {

std::vector<unsigned char> read_keys_data(std::uint32_t length, const std::vector<std::uint64_t> &keys) {
  std::vector<unsigned char> d(8, 0);
  d[4] = static_cast<unsigned char>(length >> 24);
  d[5] = static_cast<unsigned char>(length >> 16);
  d[6] = static_cast<unsigned char>(length >> 8);
  d[7] = static_cast<unsigned char>(length);
  for (std::uint64_t k : keys)
    for (int i = 7; i >= 0; --i)
      d.push_back(static_cast<unsigned char>(k >> (8 * i)));
  return d;
}

} // namespace

TEST_CASE("fencing keys: owner, slot and tag, and a new key is none of the listed ones and never 0") {
  const vb::PrSlot s{0xdeadbeef, 0x0102};
  CHECK(vb::pr_key(s, 0x0304) == 0xdeadbeef01020304ull);
  CHECK(vb::pr_in_slot(0xdeadbeef0102ffffull, s));
  CHECK_FALSE(vb::pr_in_slot(0xdeadbeef0103ffffull, s)); // another slot (queue or path)
  CHECK_FALSE(vb::pr_in_slot(0xdeadbeee0102ffffull, s)); // another owner (host, target or LUN)
  std::vector<std::uint64_t> listed;
  for (std::uint32_t t = 0; t <= 0xffff; ++t) // every tag but one taken
    if (t != 777)
      listed.push_back(vb::pr_key(s, static_cast<std::uint16_t>(t)));
  CHECK(vb::pr_new_key(s, listed, 12345) == vb::pr_key(s, 777));
  const vb::PrSlot zero{0, 0};
  for (std::uint32_t seed : {0u, 1u, 0xffffffffu})
    CHECK(vb::pr_new_key(zero, {}, seed) != 0);
}

TEST_CASE("fencing: READ KEYS data is read as hostile input") {
  std::vector<std::uint64_t> keys;
  const auto two = read_keys_data(16, {1, 0x1122334455667788ull});
  REQUIRE(vb::parse_pr_keys(two.data(), two.size(), keys));
  CHECK(keys == std::vector<std::uint64_t>{1, 0x1122334455667788ull});
  // A length that claims more than arrived is not the whole list: a key past the cut would be
  // neither preempted nor found, so it is refused, not cut.
  const auto claims = read_keys_data(0xfffffff8u, {5});
  CHECK_FALSE(vb::parse_pr_keys(claims.data(), claims.size(), keys));
  const auto one_more = read_keys_data(24, {5, 6});
  CHECK_FALSE(vb::parse_pr_keys(one_more.data(), one_more.size(), keys));
  // Not whole keys, too short, no data.
  const auto odd = read_keys_data(12, {5, 6});
  CHECK_FALSE(vb::parse_pr_keys(odd.data(), odd.size(), keys));
  CHECK_FALSE(vb::parse_pr_keys(two.data(), 7, keys));
  CHECK_FALSE(vb::parse_pr_keys(nullptr, 0, keys));
  // Bounded by max: more keys than that are refused, as many are read.
  std::vector<std::uint64_t> many(100, 9);
  const auto lots = read_keys_data(800, many);
  CHECK_FALSE(vb::parse_pr_keys(lots.data(), lots.size(), keys, 10));
  REQUIRE(vb::parse_pr_keys(lots.data(), lots.size(), keys, 100));
  CHECK(keys.size() == 100);
  // The allocation's 8190 keys are read whole by default.
  const auto full = read_keys_data(8190 * 8, std::vector<std::uint64_t>(8190, 3));
  REQUIRE(vb::parse_pr_keys(full.data(), full.size(), keys));
  CHECK(keys.size() == 8190);
}

TEST_CASE("fencing: the keys to preempt are the slot's (or the owner's) others, once each, never our own or 0") {
  const vb::PrSlot s{0xabcd0001, 7};
  const std::uint64_t own = vb::pr_key(s, 10);
  const std::uint64_t old1 = vb::pr_key(s, 11), old2 = vb::pr_key(s, 12);
  const std::uint64_t sibling = vb::pr_key({s.owner, 8}, 1); // another queue or path of this host
  const std::uint64_t stranger = vb::pr_key({0x12345678, 7}, 11);
  const std::vector<std::uint64_t> listed{own, old1, 0, old2, old1, sibling, stranger, 0};
  CHECK(vb::pr_victims(listed, own, false) == std::vector<std::uint64_t>{old1, old2});
  CHECK(vb::pr_victims(listed, own, true) == std::vector<std::uint64_t>{old1, old2, sibling});
  // Where a new login is the old nexus (LIO, arrays), REGISTER replaced the old key: nothing left.
  CHECK(vb::pr_victims({own, stranger}, own, false).empty());
  // Key 0 is never a victim even for an owner of 0 (PREEMPT of 0 means every registration).
  CHECK(vb::pr_victims({0, 1}, vb::pr_key({0, 0}, 2), true) == std::vector<std::uint64_t>{1});
}

TEST_CASE("fencing: READ RESERVATION data is read as hostile input") {
  vb::PrReservation r;
  std::vector<unsigned char> none(8, 0);
  REQUIRE(vb::parse_pr_reservation(none.data(), none.size(), r));
  CHECK_FALSE(r.held);
  std::vector<unsigned char> held(24, 0);
  held[7] = 16;
  for (int i = 0; i < 8; ++i)
    held[8 + i] = static_cast<unsigned char>(0x10 + i);
  held[21] = 0x05; // scope LU, type Write Exclusive - Registrants Only
  REQUIRE(vb::parse_pr_reservation(held.data(), held.size(), r));
  CHECK(r.held);
  CHECK(r.type == 5);
  CHECK(r.key == 0x1011121314151617ull);
  // Claims a reservation that did not arrive, a length too short for one, no data.
  CHECK_FALSE(vb::parse_pr_reservation(held.data(), 20, r));
  held[7] = 8;
  CHECK_FALSE(vb::parse_pr_reservation(held.data(), held.size(), r));
  CHECK_FALSE(vb::parse_pr_reservation(nullptr, 0, r));
  CHECK_FALSE(vb::parse_pr_reservation(none.data(), 7, r));
}
