// backend.type: iscsi: its keys and their checks, the backend it makes, and --discover.
#include "common/secret_file.h"
#include "common/text.h"
#include "iscsi/iscsi_backend.h"
#include "iscsi/iscsi_discovery.h"
#include "iscsi/iscsi_options.h"
#include "iscsi/iscsi_target.h"

#include <algorithm>
#include <stdexcept>

namespace vb {
namespace {

constexpr std::uint64_t max_lun = 16383;          // SAM flat space addressing
constexpr std::size_t max_iscsi_name_bytes = 223; // RFC 3720, 3.2.6.1
constexpr std::size_t max_chap_name_bytes = 255;  // what libiscsi keeps
constexpr std::string_view uri_example = "iscsi://host[:port]/iqn.2026-11.org.example:disk0/1";

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

bool all_hex(std::string_view s) { return s.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos; }

// Why text is not an iSCSI name as RFC 3720 3.2.6 has them, or "" when it is one:
//   iqn.YYYY-MM.reversed.domain[:anything]  (lowercase letters, digits, '-', '.', ':')
//   eui. and 16 hex digits; naa. and 16 or 32 hex digits (RFC 3980).
std::string iscsi_name_problem(std::string_view text) {
  if (text.size() > max_iscsi_name_bytes)
    return "at most " + std::to_string(max_iscsi_name_bytes) + " bytes";
  if (text.starts_with("eui.")) {
    const std::string_view hex = text.substr(4);
    return hex.size() == 16 && all_hex(hex) ? "" : "16 hex digits after eui.";
  }
  if (text.starts_with("naa.")) {
    const std::string_view hex = text.substr(4);
    return (hex.size() == 16 || hex.size() == 32) && all_hex(hex) ? "" : "16 or 32 hex digits after naa.";
  }
  if (!text.starts_with("iqn."))
    return "a name starting with iqn., eui. or naa.";
  const std::string_view rest = text.substr(4);
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  const bool dated = rest.size() >= 8 && digit(rest[0]) && digit(rest[1]) && digit(rest[2]) && digit(rest[3]) &&
                     rest[4] == '-' && digit(rest[5]) && digit(rest[6]) && rest[7] == '.' &&
                     ((rest[5] == '0' && rest[6] >= '1') || (rest[5] == '1' && rest[6] <= '2'));
  if (!dated)
    return "a year and month after iqn. (iqn.YYYY-MM.)";
  const std::string_view authority =
      rest.substr(8, rest.find(':') == std::string_view::npos ? std::string_view::npos : rest.find(':') - 8);
  if (authority.empty() || authority.front() == '.' || authority.back() == '.' ||
      authority.find("..") != std::string_view::npos)
    return "a reversed domain name after the date (iqn.2026-11.org.example)";
  for (char c : text.substr(4))
    if (!((c >= 'a' && c <= 'z') || digit(c) || c == '-' || c == '.' || c == ':'))
      return (c >= 'A' && c <= 'Z') ? "lowercase letters only (iSCSI names are compared lowercased)"
                                    : "only letters, digits, '-', '.' and ':'";
  return {};
}

// host[:port], the host possibly an IPv6 address in brackets: a URI's authority, or a portal.
// where ("the URI", "the portal") and example are for the messages.
void check_host_port(const ConfigChecker &check, const ConfigValue &v, std::string_view authority,
                     std::string_view where, std::string_view example, const std::string &shape) {
  const std::string in(where);
  std::string_view host = authority;
  std::string_view port;
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos || close == 1)
      check.expected(v, "an IPv6 address in brackets such as [::1] as " + in + "'s host");
    const std::string_view after = host.substr(close + 1);
    if (!after.empty() && !after.starts_with(':'))
      check.expected(v, shape);
    port = after.empty() ? after : after.substr(1);
    host = host.substr(0, close + 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
    if (port.empty())
      check.expected(v, "a port number after ':' in " + in + "'s host");
  }
  if (host.empty())
    check.expected(v, "a host in " + in + " (" + std::string(example) + ")");
  if (!port.empty()) {
    const auto n = config_decimal(port);
    if (!n || *n == 0 || *n > 65535)
      check.fail(v.at, v.key,
                 "expected a port from 1 to 65535 in " + in + ", got " + config_quoted(port, '\'') + " in " +
                     config_describe(v));
  }
}

// The one check of a LUN's URI, for the configuration file and for check_iscsi_uri().
void check_uri(const ConfigChecker &check, const ConfigValue &v) {
  const std::string what = "an iSCSI URI such as " + std::string(uri_example);
  const std::string &text = check.scalar(v, what);
  const auto sep = text.find("://");
  const bool has_scheme = sep != std::string::npos && sep != 0;
  const std::string_view scheme = has_scheme ? std::string_view(text).substr(0, sep) : std::string_view();
  const std::string_view rest = has_scheme ? std::string_view(text).substr(sep + 3) : std::string_view();
  const std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
  // First, so that no later message shows the secret (libiscsi reads user%password@ there).
  if (has_scheme) {
    if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
      const std::string hidden = std::string(scheme) + "://***@" + std::string(rest.substr(at + 1));
      check.fail(v.at, v.key,
                 "expected a URI without user information, got one in " + config_quoted(hidden, '\'') +
                     ": secrets come from files, never from the URI; name the CHAP user with chap.username "
                     "and its password with chap.password-file");
    }
  }
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      check.expected(v, "a URI without spaces, control characters or non-ASCII bytes (percent-encode them)");
  if (!has_scheme)
    check.expected(v, what);
  if (scheme != "iscsi")
    check.fail(v.at, v.key,
               "expected a URI scheme of iscsi, got " + config_quoted(scheme, '\'') + " in " + config_describe(v));
  if (text.find_first_of("?#") != std::string::npos)
    check.expected(v, "a URI without a query or fragment",
                   ": digests and CHAP are set with the backend keys header-digest and chap");
  check_host_port(check, v, authority, "the URI", uri_example, what);
  // /target-name/lun
  const std::string_view path = rest.substr(authority.size());
  const auto slash = path.rfind('/');
  if (path.size() < 2 || slash == 0 || slash == std::string_view::npos)
    check.expected(v, what, " (the target name and the LUN follow the host)");
  const std::string_view target = path.substr(1, slash - 1);
  const std::string_view lun = path.substr(slash + 1);
  if (target.empty())
    check.expected(v, what, " (the target name and the LUN follow the host)");
  if (target.find('/') != std::string_view::npos)
    check.expected(v, what, " (a target name has no '/')");
  const auto n = config_decimal(lun);
  if (!n || *n > max_lun)
    check.fail(v.at, v.key,
               "expected a LUN from 0 to " + std::to_string(max_lun) + " at the end of the URI, got " +
                   config_quoted(lun, '\'') + " in " + config_describe(v));
  if (const std::string problem = iscsi_name_problem(percent_decoded(target)); !problem.empty())
    check.fail(v.at, v.key,
               "expected an iSCSI target name (iqn.YYYY-MM.reversed.domain[:name], eui. or naa.): " + problem +
                   ", got " + config_quoted(target, '\'') + " in " + config_describe(v));
}

void apply_uri(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/, IscsiOptions &out) {
  check_uri(check, v);
  out.uri = v.text;
}

constexpr std::string_view portal_example = "192.0.2.2:3260";

void apply_portals(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                   IscsiOptions &out) {
  const std::string what = "a list of portals of the URI's target (host or host:port, such as [" +
                           std::string(portal_example) + ", \"[2001:db8::2]:3260\"]) or discover";
  if (v.kind == ConfigValue::Kind::scalar && v.text == "discover") {
    out.discover_portals = true;
    return;
  }
  if (v.kind != ConfigValue::Kind::sequence || v.children.empty())
    check.expected(v, what);
  if (v.children.size() > IscsiOptions::kMaxPaths - 1)
    check.fail(v.at, v.key,
               "expected at most " + std::to_string(IscsiOptions::kMaxPaths - 1) +
                   " portals besides the URI's (one path each), got more");
  std::vector<std::string> seen;
  if (!out.uri.empty())
    seen.push_back(parse_iscsi_uri(out.uri).portal); // checked already by the uri key
  for (const ConfigValue &c : v.children) {
    const std::string shape = "a portal, host or host:port, such as " + std::string(portal_example);
    const std::string &text = check.scalar(c, shape);
    for (unsigned char ch : text)
      if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '@' || ch == '?' || ch == '#')
        check.expected(c, shape);
    check_host_port(check, c, text, "the portal", portal_example, shape);
    const std::string portal = parse_iscsi_portal_uri("iscsi://" + text);
    if (std::find(seen.begin(), seen.end(), portal) != seen.end())
      check.fail(c.at, c.key,
                 "expected each path once: " + config_quoted(portal, '\'') +
                     (seen.front() == portal && !out.uri.empty() ? " is the URI's portal" : " is listed twice"));
    seen.push_back(portal);
    out.portals.push_back(portal);
  }
}

void apply_path_policy(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                       IscsiOptions &out) {
  using P = IscsiOptions::PathPolicy;
  static constexpr std::array<std::pair<std::string_view, P>, 2> policies{{
      {"failover", P::failover},
      {"round-robin", P::round_robin},
  }};
  out.path_policy = check.choice(v, policies);
}

void apply_fencing(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                   IscsiOptions &out) {
  using F = IscsiOptions::Fencing;
  static constexpr std::array<std::pair<std::string_view, F>, 2> kinds{{
      {"none", F::none},
      {"persistent-reservation", F::persistent_reservation},
  }};
  out.fencing = check.choice(v, kinds);
}

void apply_initiator_name(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                          IscsiOptions &out) {
  const std::string what = "an iSCSI name starting with iqn., eui. or naa. such as iqn.2026-11.org.example:host1 "
                           "(at most " +
                           std::to_string(max_iscsi_name_bytes) + " letters, digits, '.', '-' and ':')";
  const std::string &text = check.scalar(v, what);
  if (text.size() > max_iscsi_name_bytes ||
      !(text.starts_with("iqn.") || text.starts_with("eui.") || text.starts_with("naa.")) || text.size() < 5)
    check.expected(v, what);
  for (char c : text)
    if (!is_name_char(c) && c != '.' && c != ':')
      check.expected(v, what);
  if (text.find('_') != std::string::npos)
    check.expected(v, what);
  out.initiator_name = text;
}

std::string chap_user(const ConfigChecker &check, const ConfigValue &v, const std::string &note = {}) {
  const std::string what =
      "a CHAP user name of 1 to " + std::to_string(max_chap_name_bytes) + " bytes of printable ASCII without spaces";
  if (!v.present())
    check.expected(v, what, note);
  const std::string &text = check.scalar(v, what);
  if (text.empty() || text.size() > max_chap_name_bytes)
    check.expected(v, what);
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      check.expected(v, what);
  return text;
}

constexpr std::array<std::string_view, 4> chap_keys{"username", "password-file", "target-username",
                                                    "target-password-file"};

void apply_chap(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/, IscsiOptions &out) {
  if (v.kind != ConfigValue::Kind::map)
    check.expected(v, "a map with the keys username and password-file (and target-username and "
                      "target-password-file for mutual CHAP)");
  const auto given = check.entries(v, chap_keys, "a chap key");
  auto value = [&](std::size_t i) { return given[i] ? *given[i] : missing_config_value(v.key, chap_keys[i], v.at); };
  static const std::string path_what = "an absolute path (starting with '/')";
  out.chap_username = chap_user(check, value(0));
  if (!given[1])
    check.expected(value(1), path_what, " (the file holding the CHAP password)");
  out.chap_password_file = check.absolute_path(*given[1]);
  if (!given[2] && !given[3])
    return;
  static const std::string mutual = " (mutual CHAP needs both target-username and target-password-file)";
  out.target_username = chap_user(check, value(2), mutual);
  if (!given[3])
    check.expected(value(3), path_what, mutual);
  out.target_password_file = check.absolute_path(*given[3]);
}

void apply_header_digest(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                         IscsiOptions &out) {
  using D = IscsiOptions::HeaderDigest;
  static constexpr std::array<std::pair<std::string_view, D>, 3> digests{{
      {"none", D::none},
      {"crc32c", D::crc32c},
      {"prefer-crc32c", D::prefer_crc32c},
  }};
  out.header_digest = check.choice(v, digests);
}

constexpr std::array<BackendKey<IscsiOptions>, 11> keys{{
    {"uri", true, &apply_uri},
    {"portals", false, &apply_portals},
    {"path-policy", false, &apply_path_policy},
    {"fencing", false, &apply_fencing},
    {"initiator-name", false, &apply_initiator_name},
    {"chap", false, &apply_chap},
    {"header-digest", false, &apply_header_digest},
    {"reconnect-timeout", false, &apply_timeout<IscsiOptions, &IscsiOptions::reconnect_timeout, Forever::unlimited>},
    {"request-timeout", false, &apply_timeout<IscsiOptions, &IscsiOptions::request_timeout, Forever::zero>},
    {"nop-interval", false, &apply_timeout<IscsiOptions, &IscsiOptions::nop_interval, Forever::zero>},
    {"nop-timeout", false, &apply_timeout<IscsiOptions, &IscsiOptions::nop_timeout, Forever::zero>},
}};
constexpr std::array<std::string_view, 15> key_names{
    "uri",         "portals",       "path-policy",       "fencing",         "initiator-name",
    "chap",        "header-digest", "reconnect-timeout", "request-timeout", "nop-interval",
    "nop-timeout", "username",      "password-file",     "target-username", "target-password-file"};

std::unique_ptr<BackendOptions> parse(const BackendKeys &in) {
  auto out = std::make_unique<IscsiOptions>();
  apply_backend_keys(in, iscsi_backend_module, keys, *out);
  return out;
}

void preflight(const BackendOptions &options, std::vector<PreflightFinding> &out) {
  const auto &o = dynamic_cast<const IscsiOptions &>(options);
  const std::pair<const char *, const std::string *> files[] = {{"chap.password-file", &o.chap_password_file},
                                                                {"chap.target-password-file", &o.target_password_file}};
  for (const auto &[key, path] : files)
    if (!path->empty())
      if (const std::string problem = secret_file_problem(*path); !problem.empty())
        out.push_back({PreflightFinding::Severity::error, key, *path + " " + problem});
}

std::unique_ptr<Backend> create(const BackendOptions &options, const BackendDevice & /*device*/) {
  return std::make_unique<IscsiBackend>(dynamic_cast<const IscsiOptions &>(options));
}

constexpr std::array<std::string_view, 1> discover_schemes{"iscsi"};

std::string discover_portal(const std::string &uri) {
  // The default initiator name, no CHAP: what a portal shows to anyone.
  return discover_iscsi_text(uri, IscsiOptions{});
}

} // namespace

void check_iscsi_uri(const std::string &uri) { check_outside_file("iscsi backend", "uri", uri, &check_uri); }

const BackendModule iscsi_backend_module{
    .type = "iscsi",
    .article = "an",
    .keys = key_names,
    .parse = &parse,
    .create = &create,
    .discover_schemes = discover_schemes,
    .discover = &discover_portal,
    .preflight = &preflight,
};

} // namespace vb
