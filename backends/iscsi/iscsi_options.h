// The iscsi backend's options (backend.type: iscsi in the configuration file,
// vduse-bridge.yaml(5)). Like nbd, the file holds no secrets: a URI with user information is
// refused, and CHAP passwords come from the files named here, read at every login.
#pragma once

#include "vduse-bridge/backend_module.h"

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace vb {

struct IscsiOptions : BackendOptionsOf<IscsiOptions> {
  enum class HeaderDigest { none, crc32c, prefer_crc32c };

  // iscsi://host[:port]/target-name/lun as written: no user information, query or fragment; the
  // host may be an IPv6 address in brackets; the LUN is 0..16383.
  std::string uri;
  // Multipath: more portals of the same target and LUN, one path each, as host:port (the port
  // 3260 when the file gives none); the URI's portal is the first path. At most kMaxPaths in all.
  static constexpr std::size_t kMaxPaths = 8;
  std::vector<std::string> portals;
  // portals: discover: every portal that SendTargets on the URI's portal lists for the target.
  bool discover_portals = false;
  // Which ready path carries I/O: failover, the first in order (the URI's, then portals');
  // round-robin, each in turn.
  enum class PathPolicy { failover, round_robin };
  PathPolicy path_policy = PathPolicy::failover;
  // persistent-reservation: each session registers a key and preempts its slot's stale ones, and
  // a dead path's key is preempted before its writes go out on another path (iscsi_fencing.h).
  enum class Fencing { none, persistent_reservation };
  Fencing fencing = Fencing::none;
  // The initiator's iSCSI name (iqn., eui. or naa.); empty: default_initiator_name(), one derived
  // from the host name.
  std::string initiator_name;
  std::string chap_username;      // empty: no CHAP
  std::string chap_password_file; // absolute path; given whenever chap_username is
  // Mutual CHAP (the target proves itself too): both or neither, only with the two above.
  std::string target_username;
  std::string target_password_file;
  HeaderDigest header_digest = HeaderDigest::none; // prefer-crc32c: crc32c if the target agrees
  // How long I/O is held while the target is unreachable before it fails; 0 = fail at once;
  // forever (the key's "forever": vb::forever_duration, milliseconds::max()) = hold it until the peer is back.
  std::chrono::milliseconds reconnect_timeout{60000};
  // A command without a response by then counts the session as dead; 0 (also
  // written "forever") = no timeout (the
  // default: only a target that reinstates sessions ends the first copy's session).
  std::chrono::milliseconds request_timeout{0};
  // The path checker: a NOP-Out every nop_interval on a logged-in session, which counts as dead
  // (connection lost: its commands go out again, on another path if there is one) when the
  // answer has not come nop_timeout later. 0 = off; nop_interval -1 (not set): 5 s with two or
  // more paths, off with one (there a new login would wait for the same target).
  std::chrono::milliseconds nop_interval{-1};
  std::chrono::milliseconds nop_timeout{5000};
  std::chrono::milliseconds effective_nop_interval(std::size_t paths) const noexcept {
    if (nop_interval.count() >= 0)
      return nop_interval;
    return paths > 1 ? std::chrono::milliseconds(5000) : std::chrono::milliseconds(0);
  }
  // Reads and writes larger than this are sent as several commands; 0 = the LUN's limit (VPD
  // Block Limits) or 32 MiB. Not a configuration key: tests lower it to exercise splitting.
  std::uint32_t max_command_bytes = 0;
  bool operator==(const IscsiOptions &) const = default;
};

extern const BackendModule iscsi_backend_module;

// The checks of the configuration file's uri key, for URIs that come from elsewhere (the
// command line): throws std::invalid_argument with the same words.
void check_iscsi_uri(const std::string &uri);

} // namespace vb
