// ALUA (asymmetric logical unit access, SPC-4 5.16): a target that reaches one LUN through
// several target port groups says, per group, how well it carries I/O. The path set sends I/O
// to active/optimized paths first, then active/non-optimized ones, and never to a path in
// standby, unavailable, offline or transitioning (the target refuses I/O there with NOT READY).
//
// A session learns its path's state at login (standard INQUIRY TPGS, VPD 0x83's target port
// group and relative target port, then REPORT TARGET PORT GROUPS) and reads it again on the unit
// attentions that announce a change, on a NOT READY that names one, and on a timer (a path that
// carries no I/O hears no unit attention).
//
// Pure functions over hostile target data; no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace vb {

enum class AluaState : std::uint8_t {
  active_optimized = 0x0,
  active_non_optimized = 0x1,
  standby = 0x2,
  unavailable = 0x3,
  lba_dependent = 0x4,
  offline = 0xE,
  transitioning = 0xF,
  none = 0xFF, // the target does not do ALUA, or did not say: every path is alike
};

// "active/optimized", "active/non-optimized", "standby", ...; "" for none.
const char *alua_state_name(AluaState state) noexcept;
// Which paths carry I/O: the lowest rank among the usable paths; -1: never for I/O.
// none and lba_dependent rank with active/optimized (the target makes no difference we can use).
int alua_rank(AluaState state) noexcept;

// Where a path's target port sits (VPD 0x83 designators of the target port association).
struct AluaPort {
  int group = -1;         // TARGET PORT GROUP designator, -1 if not shown
  int relative_port = -1; // RELATIVE TARGET PORT designator, -1 if not shown
};

// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0x0A), length-only header format.
inline constexpr std::uint32_t kRtpgBytes = 4096;
void rtpg_cdb(unsigned char (&cdb)[12], std::uint32_t allocation) noexcept;
// Its parameter data (hostile, maybe cut at the allocation length): the state of port's group.
// nullopt when the data is malformed, port is in no group listed, or the state is a reserved value.
std::optional<AluaState> parse_rtpg(const unsigned char *data, std::size_t size, AluaPort port) noexcept;

// Sense (key, ASC << 8 | ASCQ) that says this path's state: NOT READY 04/0A transitioning,
// 04/0B standby, 04/0C unavailable.
std::optional<AluaState> alua_state_from_sense(int key, int ascq) noexcept;
// UNIT ATTENTION 2A/06 (asymmetric access state changed), 2A/07 (implicit transition failed),
// 2A/08 (priority changed): the states are to be read again.
bool alua_attention(int key, int ascq) noexcept;

} // namespace vb
