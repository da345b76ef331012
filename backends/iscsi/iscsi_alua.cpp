#include "iscsi/iscsi_alua.h"

namespace vb {

namespace {
constexpr int kSenseNotReady = 0x2;
constexpr int kSenseUnitAttention = 0x6;
constexpr std::size_t kMaxGroups = 1024; // more descriptors than any target has: malformed

std::uint32_t be32(const unsigned char *p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}
unsigned be16(const unsigned char *p) noexcept { return (unsigned{p[0]} << 8) | p[1]; }

std::optional<AluaState> known_state(unsigned value) noexcept {
  switch (value) {
  case 0x0:
  case 0x1:
  case 0x2:
  case 0x3:
  case 0x4:
  case 0xE:
  case 0xF:
    return static_cast<AluaState>(value);
  default:
    return std::nullopt;
  }
}
} // namespace

const char *alua_state_name(AluaState state) noexcept {
  switch (state) {
  case AluaState::active_optimized:
    return "active/optimized";
  case AluaState::active_non_optimized:
    return "active/non-optimized";
  case AluaState::standby:
    return "standby";
  case AluaState::unavailable:
    return "unavailable";
  case AluaState::lba_dependent:
    return "lba-dependent";
  case AluaState::offline:
    return "offline";
  case AluaState::transitioning:
    return "transitioning";
  case AluaState::none:
    break;
  }
  return "";
}

int alua_rank(AluaState state) noexcept {
  switch (state) {
  case AluaState::active_optimized:
  case AluaState::lba_dependent:
  case AluaState::none:
    return 0;
  case AluaState::active_non_optimized:
    return 1;
  default:
    return -1;
  }
}

void rtpg_cdb(unsigned char (&cdb)[12], std::uint32_t allocation) noexcept {
  for (unsigned char &b : cdb)
    b = 0;
  cdb[0] = 0xA3; // MAINTENANCE IN
  cdb[1] = 0x0A; // REPORT TARGET PORT GROUPS, parameter data format 000b (length only)
  cdb[6] = static_cast<unsigned char>(allocation >> 24);
  cdb[7] = static_cast<unsigned char>(allocation >> 16);
  cdb[8] = static_cast<unsigned char>(allocation >> 8);
  cdb[9] = static_cast<unsigned char>(allocation);
}

std::optional<AluaState> parse_rtpg(const unsigned char *data, std::size_t size, AluaPort port) noexcept {
  if (!data || size < 4 || (port.group < 0 && port.relative_port < 0))
    return std::nullopt;
  // RETURN DATA LENGTH counts what follows it; the data may be cut at the allocation length.
  const std::uint64_t stated = std::uint64_t{be32(data)} + 4;
  const std::size_t end = stated < size ? static_cast<std::size_t>(stated) : size;
  std::size_t pos = 4;
  for (std::size_t groups = 0; pos + 8 <= end; ++groups) {
    if (groups == kMaxGroups)
      return std::nullopt;
    const unsigned char *d = data + pos;
    const unsigned state = d[0] & 0x0F;
    const int group = static_cast<int>(be16(d + 2));
    const std::size_t ports = d[7];
    const std::size_t ports_at = pos + 8;
    if (ports_at + 4 * ports > end) // a descriptor cut short: what it lists is not known
      return std::nullopt;
    bool ours = port.group >= 0 && group == port.group;
    if (port.group < 0)
      for (std::size_t i = 0; i < ports && !ours; ++i)
        ours = static_cast<int>(be16(data + ports_at + 4 * i + 2)) == port.relative_port;
    if (ours)
      return known_state(state);
    pos = ports_at + 4 * ports;
  }
  return std::nullopt;
}

std::optional<AluaState> alua_state_from_sense(int key, int ascq) noexcept {
  if (key != kSenseNotReady)
    return std::nullopt;
  switch (ascq) {
  case 0x040A:
    return AluaState::transitioning;
  case 0x040B:
    return AluaState::standby;
  case 0x040C:
    return AluaState::unavailable;
  default:
    return std::nullopt;
  }
}

bool alua_attention(int key, int ascq) noexcept {
  return key == kSenseUnitAttention && (ascq == 0x2A06 || ascq == 0x2A07 || ascq == 0x2A08);
}

} // namespace vb
