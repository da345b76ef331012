// What the iSCSI backend's sessions share: where the LUN is and how to log in to it (URI,
// initiator name, CHAP from files, digests), what the LUN reported when the device was opened
// (which a LUN that comes back after a reconnection must match), and the helpers that read it.
//
// Threading: everything here is setup code (may throw, may block) except IscsiTarget, which is
// read-only once open() has filled it, apart from first_report() and size (any thread).
#pragma once

#include "iscsi/iscsi_alua.h"
#include "iscsi/iscsi_options.h"
#include "session/session_health.h"
#include "vduse-bridge/backend.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

struct iscsi_context;
struct scsi_task;
struct scsi_sense;

namespace vb {

struct IscsiUri {
  std::string portal; // host:port as libiscsi takes it (an IPv6 host in brackets)
  std::string target; // the target's iSCSI name, percent-decoded
  int lun = 0;
};

// iscsi://host[:port]/target-name/lun. Throws std::invalid_argument saying what is wrong; user
// information (libiscsi's user%password@) is refused: CHAP secrets come from files.
IscsiUri parse_iscsi_uri(const std::string &uri);
// iscsi://host[:port][/], for discovery: returns the portal (host:port). Throws like parse_iscsi_uri.
std::string parse_iscsi_portal_uri(const std::string &uri);

inline constexpr const char *kOpenIscsiInitiatorNameFile = "/etc/iscsi/initiatorname.iscsi";

// The host's initiator name, as open-iscsi keeps it: the InitiatorName= line of
// initiatorname_file (comments and blanks ignored). Where that file is missing or names none,
// iqn.2026-11.org.vduse-bridge:HOSTNAME, the host name lower-cased and cut to what an iSCSI name
// allows.
std::string default_initiator_name(const std::string &initiatorname_file = kOpenIscsiInitiatorNameFile);

// The secret held in path: one line; one trailing newline is removed. Throws
// std::runtime_error naming the file and key (e.g. "chap.password-file") when the file cannot
// be read, is empty, holds more than one line or more than 255 bytes.
std::string read_secret_file(const std::string &path, const std::string &key);

// A new context ready to log in to uri (a discovery session when uri.target is empty): initiator
// name, header digest, and CHAP with the passwords read from their files now. Its session does
// not reconnect by itself; the caller reconnects. Throws std::runtime_error.
//
// session: the data session's number (its queue). Its ISID is then the same at every login (from
// the initiator name, the target, the LUN and the number), so that a new login is a session
// reinstatement (RFC 7143, 6.3.5): the target ends the old session and its tasks before it lets
// the new one in. Commands of a session given up on (request-timeout, a daemon restart) can then
// no longer run after what is sent on its successor. Without it (discovery) the ISID is random.
iscsi_context *make_iscsi_context(const IscsiOptions &options, const IscsiUri &uri,
                                  std::optional<unsigned> session = std::nullopt);
// The session number make_iscsi_context() takes for queue's session on path (path 0: the queue's
// number, as before multipath; queues are at most 64).
constexpr unsigned session_number(unsigned queue, unsigned path) noexcept { return queue + path * 256; }
// The ISID qualifier and 22-bit random part make_iscsi_context() uses for a session (for tests).
std::pair<std::uint32_t, std::uint32_t> session_isid(const IscsiOptions &options, const IscsiUri &uri,
                                                     unsigned session);

// libiscsi's last error on ctx, without its trailing newline or full stop (and in words for a
// connection that was refused, closed or reset).
std::string iscsi_error(iscsi_context *ctx);
// "iscsi://127.0.0.1:3260/iqn...:disk0/1" (never holds a secret).
std::string describe_lun(const IscsiUri &uri);
// "MEDIUM ERROR, 0x1100 (...)": sense key and additional sense code for logs.
std::string describe_sense(const scsi_sense &sense);
// libiscsi's text for a SCSI status (GOOD, CHECK CONDITION, BUSY, ...).
const char *describe_status(int status) noexcept;

// What a LUN says about itself.
struct LunInfo {
  std::uint64_t blocks = 0;
  std::uint32_t block_size = 0;
  unsigned physical_exponent = 0;            // log2 of logical blocks per physical block
  std::string identity;                      // the logical unit's VPD 0x83 designators; empty if none
  std::string wwn;                           // the preferred one (NAA, EUI-64, name string) for logs
  bool write_protected = false;              // MODE SENSE: WP
  bool dpofua = false;                       // MODE SENSE: DPOFUA, the FUA bit is honoured
  bool write_cache = true;                   // caching mode page WCE; true when unknown (flush is then offered)
  bool block_limits = false;                 // VPD 0xB0 was read
  std::uint32_t max_transfer_blocks = 0;     // 0 = not stated
  std::uint32_t optimal_transfer_blocks = 0; // 0 = not stated
  std::uint32_t max_unmap_blocks = 0;        // per UNMAP; 0 = UNMAP not supported
  std::uint64_t max_write_same_blocks = 0;   // per WRITE SAME; 0 = not stated
  bool lbpu = false;                         // VPD 0xB2: UNMAP
  bool lbpws = false;                        // VPD 0xB2: WRITE SAME(16) with UNMAP
  int tpgs = 0;                              // standard INQUIRY TPGS: 0 = no ALUA
  AluaPort alua_port;                        // VPD 0x83: where this path's target port is
};

// Each reads one completed task into info; false when the task failed or its data is not
// understood (info is then unchanged).
bool parse_read_capacity16(scsi_task *task, LunInfo &info);
bool parse_device_identification(scsi_task *task, LunInfo &info);
bool parse_standard_inquiry(scsi_task *task, LunInfo &info);
bool parse_mode_sense(scsi_task *task, LunInfo &info);
bool parse_block_limits(scsi_task *task, LunInfo &info);
bool parse_provisioning(scsi_task *task, LunInfo &info);

// Runs ctx's I/O (blocking, setup only) until finished() is true: true then. False when the
// deadline passes, cancelled() turns true (checked every 100 ms) or the context fails, with the
// reason in why (empty: iscsi_error says it).
bool poll_context_until(iscsi_context *ctx, const std::function<bool()> &finished, int seconds,
                        const std::function<bool()> &cancelled, std::string &why);

// How long one setup step may take: request-timeout (whole seconds, at least 1), else 30 s.
int setup_bound_seconds(const IscsiOptions &options) noexcept;

// Logs ctx in to uri's LUN and reads everything LunInfo holds. Blocking (each step bounded by
// request-timeout, 30 s without one; the login also gives up once cancelled() is true): setup
// only. Throws std::runtime_error with libiscsi's reason (and a hint for authentication failures).
LunInfo login_and_probe(iscsi_context *ctx, const IscsiUri &uri, const IscsiOptions &options,
                        const std::function<bool()> &cancelled = {});

// The LUN's size now, shared by the sessions of one device: it changes when a session learns of
// a new capacity (a CAPACITY DATA HAS CHANGED unit attention, or a login that finds another size),
// and the first session to see a change reports it, once. Any thread.
class IscsiLunSize {
public:
  using Handler = std::function<void(std::uint64_t bytes)>;
  // Start-up, before any session exists.
  void init(std::uint64_t bytes) noexcept { bytes_.store(bytes, std::memory_order_relaxed); }
  std::uint64_t get() const noexcept { return bytes_.load(std::memory_order_relaxed); }
  // Records the size in bytes; true (and the handler called, on this thread) if it changed.
  // Changes are recorded and reported in one order, so the last one reported is the size held.
  bool observe(std::uint64_t bytes) noexcept;
  // Whom to tell (nullptr: nobody). The handler must not block.
  void set_handler(Handler handler);

private:
  std::atomic<std::uint64_t> bytes_{0};
  std::mutex mu_;
  Handler handler_;
};

// The paths of a multipath device as status shows them: how many queues' sessions are up on
// each, failovers, the last error. Written by the queues' path sets, read by status. Any thread.
class IscsiPathBook {
public:
  void init(const std::vector<IscsiUri> &paths);
  void add_queue() noexcept; // a path set opened: one more session per path
  void remove_queue(const std::vector<bool> &was_up) noexcept;
  void set_up(std::size_t path, bool up) noexcept;
  void failed_over(std::size_t path, std::uint64_t requests) noexcept;
  void set_error(std::size_t path, const std::string &why) noexcept;
  void set_access(std::size_t path, const char *alua) noexcept; // the last ALUA state a session read
  std::vector<BackendPathStatus> snapshot() const;

private:
  mutable std::mutex mu_;
  std::vector<BackendPathStatus> paths_;
};

// Everything the sessions of one device share; immutable after IscsiBackend::open(), apart from
// size and the reports.
struct IscsiTarget {
  IscsiOptions options;
  IscsiUri uri;
  std::string name; // describe_lun(uri), for logs
  // Where the LUN is reached: uri first, then the configured (or discovered) portals, each with
  // uri's target and LUN. One path: no multipath.
  std::vector<IscsiUri> paths;
  LunInfo lun;
  BackendCapabilities caps;
  std::uint64_t max_rw_bytes = 0;     // per READ/WRITE(16)
  std::uint64_t max_unmap_blocks = 0; // per UNMAP descriptor
  std::uint64_t max_zero_blocks = 0;  // per WRITE SAME(16)
  std::chrono::milliseconds login_timeout{30000};
  // The LUN's size in bytes now: caps.size at open(), then what resizes made of it. Requests are
  // checked against this.
  mutable IscsiLunSize size;

  // True the first time kind is reported for this device: sense data is logged once per kind,
  // not once per request. Any thread.
  bool first_report(const std::string &kind) const;

  // The LUN's state: the worst of its sessions' (one per queue).
  mutable SessionHealth sessions;
  // Multipath: each path's sessions.
  mutable IscsiPathBook path_book;

private:
  mutable std::mutex mu_;
  mutable std::set<std::string> reported_;
};

// Fills caps and the per-command limits of target from target.lun and target.options. Throws
// std::runtime_error if the LUN cannot be a virtio-blk disk (block size, empty).
void derive_capabilities(IscsiTarget &target);

} // namespace vb
