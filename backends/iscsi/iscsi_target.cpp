#include "iscsi/iscsi_target.h"
#include "common/text.h"

#include "common/errors.h"
#include "common/log.h"
#include "common/secret_file.h"
#include "common/small_file.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <limits>
#include <memory>
#include <poll.h>
#include <stdexcept>
#include <string_view>
#include <unistd.h>

namespace vb {
namespace {

constexpr std::string_view kScheme = "iscsi://";
constexpr int kDefaultPort = 3260;
constexpr int kMaxLun = 16383;                           // SAM flat space addressing
constexpr std::size_t kMaxSecretBytes = 255;             // libiscsi keeps at most this much
constexpr std::uint64_t kDefaultMaxCommand = 32 << 20;   // when the LUN states no limit
constexpr std::uint64_t kMaxCommand = 1 << 30;           // whatever the LUN states
constexpr std::uint64_t kDefaultZeroBytes = 32ULL << 20; // per WRITE SAME when the LUN states no limit

struct TaskFree {
  void operator()(scsi_task *t) const noexcept { scsi_free_scsi_task(t); }
};
using TaskPtr = std::unique_ptr<scsi_task, TaskFree>;

// host[:port] of a URI without user information; the port defaults to 3260.
std::string portal_of(std::string_view authority, const std::string &uri) {
  auto bad = [&](const std::string &why) { return std::invalid_argument("'" + uri + "': " + why); };
  if (authority.find('@') != std::string_view::npos)
    throw std::invalid_argument("the URI carries user information; secrets never go in URIs (they end up in logs "
                                "and process listings): name the CHAP user with chap.username and its password "
                                "with chap.password-file");
  std::string_view host = authority;
  std::string_view port;
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos)
      throw bad("an IPv6 host needs its closing ']'");
    port = host.substr(close + 1);
    if (!port.empty() && !port.starts_with(':'))
      throw bad("expected ':' and a port after the IPv6 host");
    if (!port.empty())
      port.remove_prefix(1);
    host = host.substr(0, close + 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  if (host.empty() || host == "[]")
    throw bad("the URI has no host");
  int port_number = kDefaultPort;
  if (!port.empty()) {
    port_number = 0;
    for (char c : port) {
      if (c < '0' || c > '9' || port_number > 65535)
        throw bad("the port must be a number from 1 to 65535");
      port_number = port_number * 10 + (c - '0');
    }
    if (port_number == 0 || port_number > 65535)
      throw bad("the port must be a number from 1 to 65535");
  }
  return std::string(host) + ":" + std::to_string(port_number);
}

std::string_view checked_rest(const std::string &uri) {
  if (!uri.starts_with(kScheme))
    throw std::invalid_argument("'" + uri + "' is not an iSCSI URI (iscsi://host[:port]/target-name/lun)");
  if (uri.find_first_of("?#") != std::string::npos)
    throw std::invalid_argument("the URI has a query or fragment; set digests and CHAP with the backend keys "
                                "header-digest and chap");
  return std::string_view(uri).substr(kScheme.size());
}

std::string hex(const char *data, int length) {
  static constexpr std::string_view digits = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < length; ++i) {
    const auto c = static_cast<unsigned char>(data[i]);
    out += digits[c >> 4];
    out += digits[c & 0xf];
  }
  return out;
}

// Printable text of an ASCII designator, runs of spaces folded (T10 ids pad with spaces).
std::string text_of(const char *data, int length) {
  std::string out;
  for (int i = 0; i < length && data[i] != '\0'; ++i) {
    const char c = data[i];
    if (c == ' ' && (out.empty() || out.back() == ' '))
      continue;
    out += (c > 0x20 && c < 0x7f) ? c : ' ';
  }
  while (!out.empty() && out.back() == ' ')
    out.pop_back();
  return out;
}

// A failed command in a message: status, and sense data when there is any.
std::string failure_of(iscsi_context *ctx, const scsi_task *task) {
  if (!task)
    return iscsi_error(ctx);
  if (task->status == SCSI_STATUS_CHECK_CONDITION)
    return describe_sense(task->sense);
  return std::string(describe_status(task->status)) + " (" + iscsi_error(ctx) + ")";
}

void log_libiscsi(int /*level*/, const char *message) { VB_LOG_DEBUG("libiscsi: %s", message); }

} // namespace

std::string iscsi_error(iscsi_context *ctx) {
  const char *text = ctx ? iscsi_get_error(ctx) : nullptr;
  std::string out = text ? text : "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ' || out.back() == '.'))
    out.pop_back();
  // After a socket error libiscsi's last words are about its reconnection, which is disabled.
  if (out.find("iscsi_service_reconnect_if_loggedin") != std::string::npos)
    return "the connection was refused, closed or reset";
  return out.empty() ? "no reason given" : out;
}

IscsiUri parse_iscsi_uri(const std::string &uri) {
  check_iscsi_uri(uri); // what the configuration file's uri key accepts, and nothing else
  const std::string_view rest = checked_rest(uri);
  const auto slash = rest.find('/');
  IscsiUri out;
  out.portal = portal_of(rest.substr(0, slash), uri);
  const std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  const auto last = path.rfind('/');
  if (last == std::string_view::npos || last == 0)
    throw std::invalid_argument("'" + uri + "': expected iscsi://host[:port]/target-name/lun");
  out.target = percent_decoded(path.substr(0, last));
  const std::string_view lun = path.substr(last + 1);
  if (lun.empty() || lun.size() > 5 || lun.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoi(std::string(lun)) > kMaxLun)
    throw std::invalid_argument("'" + uri + "': the LUN must be a number from 0 to " + std::to_string(kMaxLun));
  out.lun = std::stoi(std::string(lun));
  if (out.target.find('/') != std::string::npos)
    throw std::invalid_argument("'" + uri + "': a target name has no '/'");
  return out;
}

std::string parse_iscsi_portal_uri(const std::string &uri) {
  std::string_view rest = checked_rest(uri);
  if (rest.ends_with('/'))
    rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos)
    throw std::invalid_argument("'" + uri + "': expected a portal, iscsi://host[:port], without a target");
  return portal_of(rest, uri);
}

std::string default_initiator_name(const std::string &initiatorname_file) {
  // open-iscsi's file: "InitiatorName=iqn.1993-08.org.debian:01:abc", "#" comments.
  constexpr std::size_t kMaxBytes = std::size_t{64} << 10;
  const SmallFile f = read_small_file(initiatorname_file, kMaxBytes, O_NOCTTY);
  if (f.error == 0 && !f.too_large(kMaxBytes)) {
    constexpr std::string_view blanks = " \t\r";
    const auto trim = [&](std::string_view s) {
      const auto b = s.find_first_not_of(blanks);
      if (b == std::string_view::npos)
        return std::string_view();
      return s.substr(b, s.find_last_not_of(blanks) - b + 1);
    };
    std::string_view rest = f.text;
    while (!rest.empty()) {
      const auto nl = rest.find('\n');
      std::string_view line = trim(rest.substr(0, nl));
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      if (line.empty() || line.front() == '#')
        continue;
      const auto eq = line.find('=');
      if (eq == std::string_view::npos || trim(line.substr(0, eq)) != "InitiatorName")
        continue;
      const std::string_view name = trim(line.substr(eq + 1));
      if (!name.empty())
        return std::string(name);
    }
  }
  std::array<char, 256> buf{};
  std::string host;
  if (::gethostname(buf.data(), buf.size() - 1) == 0)
    host = buf.data();
  std::string name;
  for (char c : host) {
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
    name += ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-') ? c : '-';
  }
  if (name.empty())
    name = "localhost";
  return "iqn.2026-11.org.vduse-bridge:" + name.substr(0, 180);
}

std::string read_secret_file(const std::string &path, const std::string &key) {
  const std::string what = "the " + key + " file " + path;
  check_secret_file(path, key);
  SmallFile f = read_small_file(path, kMaxSecretBytes + 2, O_NOCTTY); // + a line end
  if (f.error != 0)
    throw std::runtime_error(errno_message(std::string("cannot ") + f.failed + " " + what, f.error));
  std::string &text = f.text;
  if (text.ends_with("\r\n"))
    text.resize(text.size() - 2);
  else if (text.ends_with('\n'))
    text.pop_back();
  if (text.empty())
    throw std::runtime_error(what + " is empty; it must hold the password on one line");
  if (text.find_first_of(std::string_view("\n\0", 2)) != std::string::npos)
    throw std::runtime_error(what + " holds more than one line (or a NUL byte); it must hold the password on one line");
  if (text.size() > kMaxSecretBytes)
    throw std::runtime_error(what + " holds more than " + std::to_string(kMaxSecretBytes) + " bytes");
  return text;
}

std::pair<std::uint32_t, std::uint32_t> session_isid(const IscsiOptions &options, const IscsiUri &uri,
                                                     unsigned session) {
  const std::string initiator = options.initiator_name.empty() ? default_initiator_name() : options.initiator_name;
  // FNV-1a: stable across runs and builds (std::hash is not).
  std::uint32_t h = 2166136261u;
  for (const std::string &part : {initiator, uri.target, std::to_string(uri.lun)}) {
    for (const unsigned char c : part)
      h = (h ^ c) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
  }
  return {session & 0xffffu, h & 0x3fffffu};
}

iscsi_context *make_iscsi_context(const IscsiOptions &options, const IscsiUri &uri, std::optional<unsigned> session) {
  const std::string initiator = options.initiator_name.empty() ? default_initiator_name() : options.initiator_name;
  // Secrets first: a context is not made for a login that cannot succeed.
  std::string password;
  std::string target_password;
  if (!options.chap_username.empty())
    password = read_secret_file(options.chap_password_file, "chap.password-file");
  if (!options.target_username.empty())
    target_password = read_secret_file(options.target_password_file, "chap.target-password-file");
  iscsi_context *ctx = iscsi_create_context(initiator.c_str());
  if (!ctx)
    throw std::runtime_error("iscsi_create_context failed (out of memory?)");
  auto fail = [ctx](const std::string &what) {
    std::string msg = what + ": " + iscsi_error(ctx);
    iscsi_destroy_context(ctx);
    throw std::runtime_error(msg);
  };
  const bool discovery = uri.target.empty();
  if (iscsi_set_session_type(ctx, discovery ? ISCSI_SESSION_DISCOVERY : ISCSI_SESSION_NORMAL) != 0)
    fail("iscsi_set_session_type");
  if (!discovery && iscsi_set_targetname(ctx, uri.target.c_str()) != 0)
    fail("iscsi_set_targetname");
  iscsi_header_digest digest = ISCSI_HEADER_DIGEST_NONE;
  switch (options.header_digest) {
  case IscsiOptions::HeaderDigest::none:
    break;
  case IscsiOptions::HeaderDigest::crc32c:
    digest = ISCSI_HEADER_DIGEST_CRC32C;
    break;
  case IscsiOptions::HeaderDigest::prefer_crc32c:
    digest = ISCSI_HEADER_DIGEST_CRC32C_NONE;
    break;
  }
  if (iscsi_set_header_digest(ctx, digest) != 0)
    fail("iscsi_set_header_digest");
  if (!options.chap_username.empty() &&
      iscsi_set_initiator_username_pwd(ctx, options.chap_username.c_str(), password.c_str()) != 0)
    fail("chap.username");
  if (!options.target_username.empty() &&
      iscsi_set_target_username_pwd(ctx, options.target_username.c_str(), target_password.c_str()) != 0)
    fail("chap.target-username");
  if (session) {
    const auto [qualifier, random] = session_isid(options, uri, *session);
    if (iscsi_set_isid_random(ctx, random, qualifier) != 0)
      fail("iscsi_set_isid_random");
  }
  // The backend reconnects itself, without blocking its loop; libiscsi's own reconnection
  // would replay commands behind our back.
  iscsi_set_noautoreconnect(ctx, 1);
  if (log_level() >= LogLevel::debug) {
    iscsi_set_log_level(ctx, 2); // errors and connection events
    iscsi_set_log_fn(ctx, &log_libiscsi);
  }
  return ctx;
}

std::string describe_lun(const IscsiUri &uri) {
  return std::string(kScheme) + uri.portal + "/" + uri.target + "/" + std::to_string(uri.lun);
}

std::string describe_sense(const scsi_sense &sense) {
  std::array<char, 16> code{};
  (void)std::snprintf(code.data(), code.size(), "0x%04x", static_cast<unsigned>(sense.ascq) & 0xffff);
  const char *key = scsi_sense_key_str(sense.key);
  const char *ascq = scsi_sense_ascq_str(sense.ascq);
  return std::string(key ? key : "sense key ?") + ", " + code.data() + (ascq ? std::string(" (") + ascq + ")" : "");
}

const char *describe_status(int status) noexcept {
  switch (status) {
  case SCSI_STATUS_GOOD:
    return "GOOD";
  case SCSI_STATUS_CHECK_CONDITION:
    return "CHECK CONDITION";
  case SCSI_STATUS_CONDITION_MET:
    return "CONDITION MET";
  case SCSI_STATUS_BUSY:
    return "BUSY";
  case SCSI_STATUS_RESERVATION_CONFLICT:
    return "RESERVATION CONFLICT";
  case SCSI_STATUS_TASK_SET_FULL:
    return "TASK SET FULL";
  case SCSI_STATUS_ACA_ACTIVE:
    return "ACA ACTIVE";
  case SCSI_STATUS_TASK_ABORTED:
    return "TASK ABORTED";
  case SCSI_STATUS_REDIRECT:
    return "REDIRECT";
  case SCSI_STATUS_CANCELLED:
    return "cancelled";
  case SCSI_STATUS_ERROR:
    return "session error";
  case SCSI_STATUS_TIMEOUT:
    return "timed out";
  default:
    return "unknown status";
  }
}

bool parse_read_capacity16(scsi_task *task, LunInfo &info) {
  if (!task || task->status != SCSI_STATUS_GOOD)
    return false;
  const auto *rc = static_cast<const scsi_readcapacity16 *>(scsi_datain_unmarshall(task));
  if (!rc || rc->returned_lba == std::numeric_limits<std::uint64_t>::max())
    return false;
  info.blocks = rc->returned_lba + 1;
  info.block_size = rc->block_length;
  info.physical_exponent = rc->lbppbe;
  return true;
}

bool parse_device_identification(scsi_task *task, LunInfo &info) {
  if (!task || task->status != SCSI_STATUS_GOOD)
    return false;
  const auto *page = static_cast<const scsi_inquiry_device_identification *>(scsi_datain_unmarshall(task));
  if (!page)
    return false;
  std::string identity;
  std::string wwn;
  int wwn_rank = 0;
  AluaPort port;
  for (const scsi_inquiry_device_designator *d = page->designators; d; d = d->next) {
    if (d->association == SCSI_ASSOCIATION_TARGET_PORT && d->designator_length >= 4 && d->designator) {
      // ALUA: the port this path reached, and its group (bytes 2-3 of the 4-byte designator).
      const auto *v = reinterpret_cast<const unsigned char *>(d->designator);
      const int value = (v[2] << 8) | v[3];
      if (d->designator_type == SCSI_DESIGNATOR_TYPE_TARGET_PORT_GROUP)
        port.group = value;
      else if (d->designator_type == SCSI_DESIGNATOR_TYPE_RELATIVE_TARGET_PORT)
        port.relative_port = value;
      continue;
    }
    if (d->association != SCSI_ASSOCIATION_LOGICAL_UNIT || d->designator_length <= 0)
      continue;
    const bool binary = d->code_set == SCSI_CODESET_BINARY;
    const std::string value =
        binary ? hex(d->designator, d->designator_length) : text_of(d->designator, d->designator_length);
    identity += (identity.empty() ? "" : " ") + std::to_string(d->designator_type) + ":" + value;
    // Worldwide names first, then vendor ids: what an administrator recognises in logs.
    int rank = 0;
    std::string name;
    switch (d->designator_type) {
    case SCSI_DESIGNATOR_TYPE_NAA:
      rank = 4;
      name = "naa." + value;
      break;
    case SCSI_DESIGNATOR_TYPE_EUI_64:
      rank = 3;
      name = "eui." + value;
      break;
    case SCSI_DESIGNATOR_TYPE_SCSI_NAME_STRING:
      rank = 2;
      name = value;
      break;
    case SCSI_DESIGNATOR_TYPE_T10_VENDORT_ID:
      rank = 1;
      name = "t10." + value;
      break;
    default:
      break;
    }
    if (rank > wwn_rank) {
      wwn_rank = rank;
      wwn = name;
    }
  }
  info.identity = identity;
  info.wwn = wwn;
  info.alua_port = port;
  return true;
}

bool parse_standard_inquiry(scsi_task *task, LunInfo &info) {
  if (!task || task->status != SCSI_STATUS_GOOD)
    return false;
  const auto *inq = static_cast<const scsi_inquiry_standard *>(scsi_datain_unmarshall(task));
  if (!inq)
    return false;
  info.tpgs = inq->tpgs & 3;
  return true;
}

bool parse_mode_sense(scsi_task *task, LunInfo &info) {
  if (!task || task->status != SCSI_STATUS_GOOD)
    return false;
  auto *ms = static_cast<scsi_mode_sense *>(scsi_datain_unmarshall(task));
  if (!ms)
    return false;
  // Device-specific parameter of direct-access devices (SBC): bit 7 WP, bit 4 DPOFUA.
  info.write_protected = (ms->device_specific_parameter & 0x80) != 0;
  info.dpofua = (ms->device_specific_parameter & 0x10) != 0;
  if (const scsi_mode_page *caching = scsi_modesense_get_page(ms, SCSI_MODEPAGE_CACHING, 0))
    info.write_cache = caching->caching.wce != 0;
  return true;
}

bool parse_block_limits(scsi_task *task, LunInfo &info) {
  if (!task || task->status != SCSI_STATUS_GOOD)
    return false;
  const auto *bl = static_cast<const scsi_inquiry_block_limits *>(scsi_datain_unmarshall(task));
  if (!bl)
    return false;
  info.block_limits = true;
  info.max_transfer_blocks = bl->max_xfer_len;
  info.optimal_transfer_blocks = bl->opt_xfer_len;
  info.max_unmap_blocks = bl->max_unmap_bdc > 0 ? bl->max_unmap : 0;
  info.max_write_same_blocks = bl->max_ws_len;
  return true;
}

bool parse_provisioning(scsi_task *task, LunInfo &info) {
  if (!task || task->status != SCSI_STATUS_GOOD)
    return false;
  const auto *lbp = static_cast<const scsi_inquiry_logical_block_provisioning *>(scsi_datain_unmarshall(task));
  if (!lbp)
    return false;
  info.lbpu = lbp->lbpu != 0;
  info.lbpws = lbp->lbpws != 0;
  return true;
}

bool poll_context_until(iscsi_context *ctx, const std::function<bool()> &finished, int seconds,
                        const std::function<bool()> &cancelled, std::string &why) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (!finished()) {
    if (cancelled && cancelled()) {
      why = "cancelled";
      return false;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      why = "no answer within " + std::to_string(seconds) + "s";
      return false;
    }
    // libiscsi may change sockets during a login (a redirect to another portal).
    pollfd pfd{iscsi_get_fd(ctx), static_cast<short>(iscsi_which_events(ctx)), 0};
    const int n = ::poll(&pfd, 1, 100);
    if (n < 0 && errno != EINTR) {
      why = std::string("poll: ") + errno_text(errno);
      return false;
    }
    if (iscsi_service(ctx, n > 0 ? pfd.revents : 0) < 0 && !finished()) {
      why.clear(); // libiscsi's error says why
      return false;
    }
  }
  return true;
}

namespace {

struct PendingLogin {
  bool done = false;
  bool abandoned = false;
  int status = 0;
};
// Logins given up on whose callback has not run: a few bytes each, at most kMaxAbandoned kept
// (past that they are left to leak: a target that accepts connections and never answers a login,
// thousands of times).
constexpr std::size_t kMaxAbandoned = 4096;
std::mutex abandoned_mu;
std::vector<std::unique_ptr<PendingLogin>> &abandoned_logins() {
  static auto *list = new std::vector<std::unique_ptr<PendingLogin>>; // never destroyed: callbacks may come late
  return *list;
}
void keep_abandoned(PendingLogin *l) {
  l->abandoned = true;
  std::lock_guard lock(abandoned_mu);
  auto &list = abandoned_logins();
  if (list.size() < kMaxAbandoned) {
    try {
      list.emplace_back(l);
    } catch (...) {
    }
  }
}
void forget_abandoned(PendingLogin *l) {
  std::lock_guard lock(abandoned_mu);
  auto &list = abandoned_logins();
  for (auto it = list.begin(); it != list.end(); ++it)
    if (it->get() == l) {
      list.erase(it); // deletes it
      return;
    }
  delete l; // not kept (the list was full)
}

// iscsi_full_connect_sync, but polled here: it gives up at the deadline, and within 100 ms of
// cancelled() turning true (a daemon stopping, a device removed while its target is away).
// 0 when logged in; else -1 with the reason in `why` (empty: libiscsi's error says it).
// Not iscsi_full_connect_async(): it allocates state that only its callbacks free, and a login
// given up on during the TCP connect never gets one.
int full_connect_within(iscsi_context *ctx, const IscsiUri &uri, int seconds, const std::function<bool()> &cancelled,
                        std::string &why) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  // The poll below bounds the login to the deadline; libiscsi's own timer counts whole seconds
  // of the wall clock (a 1 s bound could end after 0.1 s), so it is off until the login is done.
  iscsi_set_timeout(ctx, 0);
  auto left = [&deadline] {
    const auto s = std::chrono::ceil<std::chrono::seconds>(deadline - std::chrono::steady_clock::now()).count();
    return static_cast<int>(std::max<long long>(s, 1));
  };
  std::string portal = uri.portal;
  for (int redirects = 0;; ++redirects) {
    // The TCP connect: its callback runs only from iscsi_service(), never when the context is
    // destroyed, so its state can live here (the caller destroys ctx when this fails).
    struct Step {
      bool done = false;
      int status = 0;
    } connected;
    auto on_connected = [](iscsi_context *, int status, void *, void *p) {
      auto *c = static_cast<Step *>(p);
      c->done = true;
      c->status = status;
    };
    if (iscsi_connect_async(ctx, portal.c_str(), on_connected, &connected) != 0)
      return -1;
    if (!poll_context_until(
            ctx, [&connected] { return connected.done; }, left(), cancelled, why)) {
      iscsi_disconnect(ctx); // no later callback into this frame
      if (why.rfind("no answer", 0) == 0)
        why += " (the login bound: request-timeout, or 30s)";
      return -1;
    }
    if (connected.status != 0)
      return -1;
    // The login: a PDU, whose callback may still run once the login is given up on (with
    // CANCELLED when the context is destroyed, in some libiscsi versions; bookworm's never runs
    // it). So its state is on the heap, and an abandoned one is kept reachable until then.
    auto *login = new PendingLogin;
    auto on_logged_in = [](iscsi_context *, int status, void *, void *p) {
      auto *l = static_cast<PendingLogin *>(p);
      if (l->abandoned) {
        forget_abandoned(l);
        return;
      }
      l->done = true;
      l->status = status;
    };
    if (iscsi_login_async(ctx, on_logged_in, login) != 0) {
      delete login; // not queued: the callback never runs
      return -1;
    }
    if (!poll_context_until(
            ctx, [login] { return login->done; }, left(), cancelled, why)) {
      keep_abandoned(login);
      if (why.rfind("no answer", 0) == 0)
        why += " (the login bound: request-timeout, or 30s)";
      return -1;
    }
    const int status = login->status;
    delete login;
    const char *moved = iscsi_get_target_address(ctx);
    if (status == SCSI_STATUS_REDIRECT && moved && *moved && redirects < 4) {
      // The target moved to another portal: log in there, within the same deadline.
      VB_LOG_INFO("iscsi: %s redirects the login to %s", portal.c_str(), moved);
      portal = moved;
      iscsi_disconnect(ctx);
      continue;
    }
    if (status != 0)
      return -1;
    break;
  }
  iscsi_set_timeout(ctx, seconds); // the checks that follow: libiscsi's timer again

  // A new session usually starts with a UNIT ATTENTION (power on, reset): taken here, as
  // iscsi_full_connect does, so that the checks that follow get answers (bounded).
  for (int i = 0; i < 10 && std::chrono::steady_clock::now() < deadline && !(cancelled && cancelled()); ++i) {
    TaskPtr tur(iscsi_testunitready_sync(ctx, uri.lun));
    if (!tur || tur->status != SCSI_STATUS_CHECK_CONDITION || tur->sense.key != SCSI_SENSE_UNIT_ATTENTION)
      break;
  }
  return 0;
}

} // namespace

int setup_bound_seconds(const IscsiOptions &options) noexcept {
  const long long ms = options.request_timeout.count();
  return ms > 0 ? static_cast<int>(std::clamp<long long>((ms + 999) / 1000, 1, 3600)) : 30;
}

LunInfo login_and_probe(iscsi_context *ctx, const IscsiUri &uri, const IscsiOptions &options,
                        const std::function<bool()> &cancelled) {
  const std::string name = describe_lun(uri);
  // libiscsi times out these commands itself while it runs its own loop. Without a
  // request-timeout a start-up that hangs is still worse than one that fails.
  const int seconds = setup_bound_seconds(options);
  iscsi_set_timeout(ctx, seconds);
  std::string why;
  if (full_connect_within(ctx, uri, seconds, cancelled, why) != 0) {
    std::string msg = std::string("cannot log in to ") + name + ": " + (why.empty() ? iscsi_error(ctx) : why);
    if (msg.find("uthentication") != std::string::npos)
      msg += options.chap_username.empty()
                 ? " (the target wants CHAP: set chap.username and chap.password-file)"
                 : " (check chap.username, the password in chap.password-file and, for mutual CHAP, the "
                   "target's account)";
    else if (msg.find("uthorization") != std::string::npos)
      msg += " (the target does not let this initiator in: check its ACL and initiator-name)";
    throw std::runtime_error(msg);
  }
  LunInfo info;
  const int lun = uri.lun;
  TaskPtr standard(iscsi_inquiry_sync(ctx, lun, 0, 0, 255));
  if (!standard || standard->status != SCSI_STATUS_GOOD)
    throw std::runtime_error(name + ": INQUIRY failed: " + failure_of(ctx, standard.get()));
  const auto *inq = static_cast<const scsi_inquiry_standard *>(scsi_datain_unmarshall(standard.get()));
  if (!inq)
    throw std::runtime_error(name + ": INQUIRY returned data that cannot be parsed");
  if (inq->device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS)
    throw std::runtime_error(name + ": the LUN is not a disk (its device type is " +
                             scsi_devtype_to_str(inq->device_type) + ")");
  info.tpgs = inq->tpgs & 3;
  TaskPtr capacity(iscsi_readcapacity16_sync(ctx, lun));
  if (!parse_read_capacity16(capacity.get(), info))
    throw std::runtime_error(name + ": READ CAPACITY(16) failed: " + failure_of(ctx, capacity.get()));
  // The rest is optional: a LUN that lacks a page simply does not get what the page offers.
  TaskPtr identification(iscsi_inquiry_sync(ctx, lun, 1, SCSI_INQUIRY_PAGECODE_DEVICE_IDENTIFICATION, 255));
  parse_device_identification(identification.get(), info);
  TaskPtr limits(iscsi_inquiry_sync(ctx, lun, 1, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, 255));
  parse_block_limits(limits.get(), info);
  TaskPtr provisioning(iscsi_inquiry_sync(ctx, lun, 1, SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING, 255));
  parse_provisioning(provisioning.get(), info);
  TaskPtr mode(iscsi_modesense6_sync(ctx, lun, 1, SCSI_MODESENSE_PC_CURRENT, SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255));
  if (!parse_mode_sense(mode.get(), info)) {
    TaskPtr caching(iscsi_modesense6_sync(ctx, lun, 1, SCSI_MODESENSE_PC_CURRENT, SCSI_MODEPAGE_CACHING, 0, 255));
    if (!parse_mode_sense(caching.get(), info))
      VB_LOG_WARN("%s: MODE SENSE failed (%s): assuming a writable disk with a write cache and no FUA", name.c_str(),
                  failure_of(ctx, caching.get()).c_str());
  }
  iscsi_set_timeout(ctx, 0); // from here on the session's request-timeout applies
  return info;
}

bool IscsiLunSize::observe(std::uint64_t bytes) noexcept {
  std::lock_guard lock(mu_);
  if (bytes_.exchange(bytes, std::memory_order_relaxed) == bytes)
    return false;
  if (handler_) {
    try {
      handler_(bytes);
    } catch (const std::exception &e) {
      VB_LOG_ERROR("iscsi: reporting the new size failed: %s", e.what());
    }
  }
  return true;
}

void IscsiLunSize::set_handler(Handler handler) {
  std::lock_guard lock(mu_);
  handler_ = std::move(handler);
}

bool IscsiTarget::first_report(const std::string &kind) const {
  std::lock_guard lock(mu_);
  return reported_.insert(kind).second;
}

void derive_capabilities(IscsiTarget &t) {
  const LunInfo &l = t.lun;
  const std::uint32_t bs = l.block_size;
  if (bs < 512 || bs > 4096 || !std::has_single_bit(bs))
    throw std::runtime_error(t.name + ": the LUN has " + std::to_string(bs) +
                             "-byte blocks; virtio-blk supports logical blocks of 512..4096 bytes (powers of two)");
  if (l.blocks == 0 || l.blocks > std::numeric_limits<std::uint64_t>::max() / bs)
    throw std::runtime_error(t.name + ": the LUN reports " + std::to_string(l.blocks) + " blocks");
  BackendCapabilities c;
  c.size = l.blocks * bs;
  c.logical_block_size = bs;
  c.physical_block_size = l.physical_exponent <= 8 ? bs << l.physical_exponent : bs;
  const std::uint64_t optimal = std::uint64_t{l.optimal_transfer_blocks} * bs;
  c.optimal_io_size = optimal <= kMaxCommand ? static_cast<std::uint32_t>(optimal) : 0;

  std::uint64_t max_rw = kDefaultMaxCommand;
  if (l.max_transfer_blocks != 0)
    max_rw = std::min<std::uint64_t>(std::uint64_t{l.max_transfer_blocks} * bs, kMaxCommand);
  if (t.options.max_command_bytes != 0)
    max_rw = std::min<std::uint64_t>(max_rw, t.options.max_command_bytes);
  max_rw = std::max<std::uint64_t>(max_rw - max_rw % bs, bs);
  t.max_rw_bytes = max_rw;
  c.max_transfer = static_cast<std::uint32_t>(max_rw);

  c.read_only = l.write_protected;
  c.can_flush = l.write_cache;
  c.can_discard = l.lbpu && l.max_unmap_blocks != 0;
  c.can_write_zeroes = l.lbpws || l.max_write_same_blocks != 0;
  c.can_zero_unmap = c.can_write_zeroes && l.lbpws;
  constexpr std::uint64_t u32_max = std::numeric_limits<std::uint32_t>::max();
  t.max_unmap_blocks = c.can_discard ? std::min<std::uint64_t>(l.max_unmap_blocks, u32_max) : 0;
  t.max_zero_blocks = l.max_write_same_blocks != 0 ? std::min<std::uint64_t>(l.max_write_same_blocks, u32_max)
                                                   : std::max<std::uint64_t>(kDefaultZeroBytes / bs, 1);
  // The engine applies one limit to discard and write-zeroes: the smaller of what the LUN
  // states for each offered one (the backend splits anything larger anyway).
  std::uint64_t limit = 0;
  auto lower = [&limit](std::uint64_t bytes) { limit = limit == 0 ? bytes : std::min(limit, bytes); };
  if (c.can_discard && l.max_unmap_blocks != u32_max)
    lower(t.max_unmap_blocks * bs);
  if (c.can_write_zeroes && l.max_write_same_blocks != 0)
    lower(t.max_zero_blocks * bs);
  c.max_discard = limit != 0 && limit <= u32_max ? static_cast<std::uint32_t>(limit) : 0;
  c.identity = l.wwn.empty() ? t.name : l.wwn;
  t.caps = c;
  t.size.init(c.size);
  // A login that hangs (a target that accepts TCP but never answers) is abandoned after this.
  t.login_timeout = t.options.request_timeout.count() > 0
                        ? std::max(t.options.request_timeout, std::chrono::milliseconds(5000))
                        : std::chrono::milliseconds(30000);
}

void IscsiPathBook::init(const std::vector<IscsiUri> &paths) {
  std::lock_guard lock(mu_);
  paths_.clear();
  for (const IscsiUri &p : paths) {
    BackendPathStatus s;
    s.name = p.portal;
    paths_.push_back(std::move(s));
  }
}

void IscsiPathBook::add_queue() noexcept {
  std::lock_guard lock(mu_);
  for (BackendPathStatus &p : paths_)
    ++p.sessions;
}

void IscsiPathBook::remove_queue(const std::vector<bool> &was_up) noexcept {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < paths_.size(); ++i) {
    if (paths_[i].sessions > 0)
      --paths_[i].sessions;
    if (i < was_up.size() && was_up[i] && paths_[i].sessions_up > 0)
      --paths_[i].sessions_up;
  }
}

void IscsiPathBook::set_up(std::size_t path, bool up) noexcept {
  std::lock_guard lock(mu_);
  if (path >= paths_.size())
    return;
  BackendPathStatus &p = paths_[path];
  if (up && p.sessions_up < p.sessions)
    ++p.sessions_up;
  else if (!up && p.sessions_up > 0)
    --p.sessions_up;
}

void IscsiPathBook::failed_over(std::size_t path, std::uint64_t requests) noexcept {
  std::lock_guard lock(mu_);
  if (path < paths_.size())
    paths_[path].failovers += requests;
}

void IscsiPathBook::set_error(std::size_t path, const std::string &why) noexcept {
  std::lock_guard lock(mu_);
  if (path >= paths_.size())
    return;
  try {
    paths_[path].last_error = why;
  } catch (...) {
    // status only
  }
}

void IscsiPathBook::set_access(std::size_t path, const char *alua) noexcept {
  std::lock_guard lock(mu_);
  if (path >= paths_.size())
    return;
  try {
    paths_[path].alua = alua;
  } catch (...) {
    // status only
  }
}

std::vector<BackendPathStatus> IscsiPathBook::snapshot() const {
  std::lock_guard lock(mu_);
  return paths_;
}

} // namespace vb
