// What an iSCSI portal offers: SendTargets discovery, then REPORT LUNS on each target, for
// `vduse-bridge --discover iscsi://host[:port]`. Setup code: blocking, may throw.
#pragma once

#include "iscsi/iscsi_target.h"

#include <cstdint>
#include <string>
#include <vector>

namespace vb {

struct IscsiDiscoveredLun {
  int lun = 0;
  std::string uri;        // iscsi://portal/target/lun, ready for the configuration
  std::string type;       // SCSI peripheral device type ("DIRECT_ACCESS", "ARRAY_CONTROLLER"...)
  bool disk = false;      // a direct-access device: one the iscsi backend can serve
  std::uint64_t size = 0; // bytes, disks only
  std::uint32_t block_size = 0;
  std::string error; // why the LUN could not be described; empty when it could
};

struct IscsiDiscoveredTarget {
  std::string name;
  std::vector<std::string> portals; // as the target lists them (host:port,tpgt)
  std::vector<IscsiDiscoveredLun> luns;
  std::string error; // why the target could not be listed (login refused...); empty when it could
};

// Discovers the targets behind portal_uri (iscsi://host[:port]) and lists each one's LUNs,
// logging in as options says (initiator name, CHAP, digests; options.uri is ignored). Throws
// std::runtime_error if the discovery session fails; a target whose LUNs cannot be listed
// carries the reason in its error.
std::vector<IscsiDiscoveredTarget> discover_iscsi(const std::string &portal_uri, const IscsiOptions &options);

// Multipath (portals: discover): uri's portal first, then every other portal that SendTargets on
// it lists for uri's target, each once, at most most in all; what the target lists is hostile
// input, and an address that does not read as host:port is left out. Throws like discover_iscsi.
std::vector<std::string> discover_target_portals(const IscsiOptions &options, const IscsiUri &uri, std::size_t most);

// One line per LUN (or per target that could not be listed), for a terminal.
std::string format_discovery(const std::vector<IscsiDiscoveredTarget> &targets);

// discover_iscsi then format_discovery, or "URI: no targets": what `vduse-bridge --discover`
// prints. With options.chap_username, the secret file is checked first (owner-only, one line)
// ("the CHAP secret file PATH is empty").
std::string discover_iscsi_text(const std::string &portal_uri, const IscsiOptions &options);

} // namespace vb
