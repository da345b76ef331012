// ALUA: REPORT TARGET PORT GROUPS data read as hostile input, the ranks paths are chosen by, and
// the sense that names a path's state.
#include "iscsi/iscsi_alua.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace {

struct Group {
  unsigned state;
  unsigned id;
  std::vector<unsigned> ports; // relative target port identifiers
};

std::vector<unsigned char> rtpg_data(const std::vector<Group> &groups, long length_delta = 0) {
  std::vector<unsigned char> d(4, 0);
  for (const Group &g : groups) {
    d.push_back(static_cast<unsigned char>(0x80 | g.state)); // PREF set: ignored
    d.push_back(0xFF);                                       // supported states
    d.push_back(static_cast<unsigned char>(g.id >> 8));
    d.push_back(static_cast<unsigned char>(g.id));
    d.push_back(0);
    d.push_back(0x02); // status: implicit transition
    d.push_back(0);
    d.push_back(static_cast<unsigned char>(g.ports.size()));
    for (unsigned p : g.ports) {
      d.push_back(0);
      d.push_back(0);
      d.push_back(static_cast<unsigned char>(p >> 8));
      d.push_back(static_cast<unsigned char>(p));
    }
  }
  const auto length = static_cast<std::uint32_t>(static_cast<long>(d.size()) - 4 + length_delta);
  d[0] = static_cast<unsigned char>(length >> 24);
  d[1] = static_cast<unsigned char>(length >> 16);
  d[2] = static_cast<unsigned char>(length >> 8);
  d[3] = static_cast<unsigned char>(length);
  return d;
}

vb::AluaPort group_port(int group) { return vb::AluaPort{group, -1}; }

} // namespace

TEST_CASE("alua: the state of this path's group, found by group or by relative port") {
  const auto d = rtpg_data({{0x0, 1, {1}}, {0x2, 2, {2, 3}}, {0x1, 7, {9}}});
  CHECK(vb::parse_rtpg(d.data(), d.size(), group_port(1)) == vb::AluaState::active_optimized);
  CHECK(vb::parse_rtpg(d.data(), d.size(), group_port(2)) == vb::AluaState::standby);
  CHECK(vb::parse_rtpg(d.data(), d.size(), group_port(7)) == vb::AluaState::active_non_optimized);
  CHECK_FALSE(vb::parse_rtpg(d.data(), d.size(), group_port(3)).has_value()); // no such group
  // Without a group designator, the port's relative identifier finds the group.
  CHECK(vb::parse_rtpg(d.data(), d.size(), vb::AluaPort{-1, 3}) == vb::AluaState::standby);
  CHECK(vb::parse_rtpg(d.data(), d.size(), vb::AluaPort{-1, 9}) == vb::AluaState::active_non_optimized);
  CHECK_FALSE(vb::parse_rtpg(d.data(), d.size(), vb::AluaPort{-1, 4}).has_value());
  // The group wins over the port when both are known.
  CHECK(vb::parse_rtpg(d.data(), d.size(), vb::AluaPort{1, 3}) == vb::AluaState::active_optimized);
  // Nothing known about the port: no state.
  CHECK_FALSE(vb::parse_rtpg(d.data(), d.size(), vb::AluaPort{}).has_value());
  for (unsigned s : {0x3u, 0x4u, 0xEu, 0xFu}) {
    const auto one = rtpg_data({{s, 5, {1}}});
    CHECK(vb::parse_rtpg(one.data(), one.size(), group_port(5)) == static_cast<vb::AluaState>(s));
  }
}

TEST_CASE("alua: REPORT TARGET PORT GROUPS data is read as hostile input") {
  const std::vector<Group> groups{{0x0, 1, {1}}, {0x1, 2, {2, 3, 4}}};
  const auto d = rtpg_data(groups);
  CHECK_FALSE(vb::parse_rtpg(nullptr, 0, group_port(1)).has_value());
  CHECK_FALSE(vb::parse_rtpg(d.data(), 3, group_port(1)).has_value());
  // Reserved state values are not guessed at.
  for (unsigned s : {0x5u, 0x8u, 0xDu}) {
    const auto one = rtpg_data({{s, 5, {1}}});
    CHECK_FALSE(vb::parse_rtpg(one.data(), one.size(), group_port(5)).has_value());
  }
  // Cut anywhere: the first group is found once its descriptor is whole, the second never
  // from a descriptor cut short, and no read goes past the data given (ASan).
  for (std::size_t cut = 0; cut <= d.size(); ++cut) {
    const std::vector<unsigned char> part(d.begin(), d.begin() + static_cast<long>(cut));
    const auto first = vb::parse_rtpg(part.data(), part.size(), group_port(1));
    CHECK(first.has_value() == (cut >= 4 + 8 + 4));
    const auto second = vb::parse_rtpg(part.data(), part.size(), group_port(2));
    CHECK(second.has_value() == (cut == d.size()));
  }
  // A RETURN DATA LENGTH shorter than the data: what lies past it is not read.
  const auto short_length = rtpg_data(groups, -16);
  CHECK(vb::parse_rtpg(short_length.data(), short_length.size(), group_port(1)) == vb::AluaState::active_optimized);
  CHECK_FALSE(vb::parse_rtpg(short_length.data(), short_length.size(), group_port(2)).has_value());
  // Longer than the data (cut at the allocation length) or absurd: only the data is read.
  const auto long_length = rtpg_data(groups, 1000000);
  CHECK(vb::parse_rtpg(long_length.data(), long_length.size(), group_port(2)) == vb::AluaState::active_non_optimized);
  auto huge = rtpg_data(groups);
  huge[0] = huge[1] = huge[2] = huge[3] = 0xFF;
  CHECK(vb::parse_rtpg(huge.data(), huge.size(), group_port(2)) == vb::AluaState::active_non_optimized);
  // A port count running past the end.
  auto overrun = rtpg_data({{0x0, 1, {1}}});
  overrun[4 + 7] = 200;
  CHECK_FALSE(vb::parse_rtpg(overrun.data(), overrun.size(), group_port(1)).has_value());
  // Thousands of empty descriptors: refused, not walked for ever.
  std::vector<Group> many(2000, Group{0x0, 9, {}});
  many.push_back({0x2, 1, {1}});
  const auto lots = rtpg_data(many);
  CHECK_FALSE(vb::parse_rtpg(lots.data(), lots.size(), group_port(1)).has_value());
  // Random bytes: an answer or none, never a read out of bounds.
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::vector<unsigned char> junk(rng() % 64);
    for (auto &b : junk)
      b = static_cast<unsigned char>(rng());
    const auto s = vb::parse_rtpg(junk.data(), junk.size(), vb::AluaPort{static_cast<int>(rng() % 4), 1});
    if (s)
      CHECK(vb::alua_state_name(*s)[0] != '\0');
  }
}

TEST_CASE("alua: optimized paths first, then non-optimized, never standby, unavailable, offline or transitioning") {
  CHECK(vb::alua_rank(vb::AluaState::active_optimized) == 0);
  CHECK(vb::alua_rank(vb::AluaState::none) == 0); // no ALUA: every path alike
  CHECK(vb::alua_rank(vb::AluaState::lba_dependent) == 0);
  CHECK(vb::alua_rank(vb::AluaState::active_non_optimized) == 1);
  for (auto s :
       {vb::AluaState::standby, vb::AluaState::unavailable, vb::AluaState::offline, vb::AluaState::transitioning})
    CHECK(vb::alua_rank(s) < 0);
  CHECK(std::string(vb::alua_state_name(vb::AluaState::active_non_optimized)) == "active/non-optimized");
  CHECK(std::string(vb::alua_state_name(vb::AluaState::none)).empty());
}

TEST_CASE("alua: the CDB, and the sense that names a state or announces a change") {
  unsigned char cdb[12];
  for (unsigned char &b : cdb)
    b = 0x55;
  vb::rtpg_cdb(cdb, 0x01020304);
  const unsigned char want[12] = {0xA3, 0x0A, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0, 0};
  for (int i = 0; i < 12; ++i)
    CHECK(cdb[i] == want[i]);
  CHECK(vb::alua_state_from_sense(0x2, 0x040B) == vb::AluaState::standby);
  CHECK(vb::alua_state_from_sense(0x2, 0x040C) == vb::AluaState::unavailable);
  CHECK(vb::alua_state_from_sense(0x2, 0x040A) == vb::AluaState::transitioning);
  CHECK_FALSE(vb::alua_state_from_sense(0x2, 0x0401).has_value()); // becoming ready: not ALUA
  CHECK_FALSE(vb::alua_state_from_sense(0x6, 0x040B).has_value());
  CHECK(vb::alua_attention(0x6, 0x2A06));
  CHECK(vb::alua_attention(0x6, 0x2A07));
  CHECK(vb::alua_attention(0x6, 0x2A08));
  CHECK_FALSE(vb::alua_attention(0x6, 0x2A09)); // capacity data has changed
  CHECK_FALSE(vb::alua_attention(0x2, 0x2A06));
}
