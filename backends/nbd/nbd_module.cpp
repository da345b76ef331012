// backend.type: nbd: its keys and their checks, and the backend it makes.
#include "common/secret_file.h"
#include "common/small_file.h"
#include "common/text.h"
#include "nbd/nbd_backend.h"
#include "nbd/nbd_options.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <stdexcept>
#include <sys/stat.h>

namespace vb {
namespace {

constexpr unsigned max_connections = 16;            // per device; more buys nothing on one server
constexpr std::size_t max_export_name = 4096;       // NBD protocol: NBD_OPT_GO's name is at most 4096 bytes
constexpr std::size_t max_socket_path = 107;        // sizeof(sockaddr_un::sun_path) less its NUL
constexpr std::uint64_t vsock_cid_any = 0xffffffff; // VMADDR_CID_ANY: not a peer's address

constexpr std::array<std::string_view, 6> schemes{"nbd", "nbds", "nbd+unix", "nbds+unix", "nbd+vsock", "nbds+vsock"};

bool is_tls_scheme(std::string_view scheme) { return scheme.starts_with("nbds"); }
bool is_unix_scheme(std::string_view scheme) { return scheme.ends_with("+unix"); }

// %XX decoded, lower-cased: query parameter names as a URI parser might read them.
std::string folded_name(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%' && i + 2 < text.size() && hex_digit(text[i + 1]) >= 0 && hex_digit(text[i + 2]) >= 0) {
      c = static_cast<char>(hex_digit(text[i + 1]) * 16 + hex_digit(text[i + 2]));
      i += 2;
    }
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// The parts of an NBD URI this file cares about; views into the text.
struct UriParts {
  std::string_view scheme;    // before "://"
  std::string_view authority; // [userinfo@]host[:port], up to the path, query or fragment
  std::string_view path;      // after the authority, up to '?' or '#': "/export"
  std::string_view query;     // after '?', up to '#'; empty when none
};

std::optional<UriParts> split_uri(std::string_view text) {
  const auto sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0)
    return std::nullopt;
  UriParts parts;
  parts.scheme = text.substr(0, sep);
  const std::string_view rest = text.substr(sep + 3);
  parts.authority = rest.substr(0, rest.find_first_of("/?#"));
  const std::string_view after_authority = rest.substr(parts.authority.size());
  parts.path = after_authority.substr(0, after_authority.find_first_of("?#"));
  const auto question = rest.find('?');
  if (question != std::string_view::npos) {
    const std::string_view after = rest.substr(question + 1);
    parts.query = after.substr(0, after.find('#'));
  }
  return parts;
}

// The checks of the authority (host and port) and of the export name, by transport.
void check_address(const ConfigChecker &check, const ConfigValue &v, const UriParts &parts,
                   std::string_view export_name) {
  const auto wrong = [&](const std::string &what, std::string_view part) {
    check.fail(v.at, v.key, "expected " + what + ", got " + config_quoted(part, '\'') + " in " + config_describe(v));
  };
  std::string_view hostport = parts.authority;
  if (const auto at = hostport.rfind('@'); at != std::string_view::npos)
    hostport.remove_prefix(at + 1);
  std::string_view host = hostport;
  std::string_view port;
  bool has_port = false;
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos)
      wrong("an IPv6 address closed by ']' such as [::1]:10809", hostport);
    const std::string_view inside = host.substr(1, close - 1);
    if (inside.empty() || inside.find_first_not_of("0123456789abcdefABCDEF:.") != std::string_view::npos ||
        inside.find(':') == std::string_view::npos)
      wrong("an IPv6 address in brackets such as [::1]", host.substr(0, close + 1));
    const std::string_view after = host.substr(close + 1);
    if (!after.empty() && !after.starts_with(':'))
      wrong("':' and a port after an IPv6 address in brackets", hostport);
    has_port = !after.empty();
    port = has_port ? after.substr(1) : after;
    host = host.substr(0, close + 1);
  } else if (const auto colon = host.find(':'); colon != std::string_view::npos) {
    if (host.find(':', colon + 1) != std::string_view::npos)
      wrong("an IPv6 address in brackets such as [::1]:10809", hostport);
    has_port = true;
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  const std::string_view scheme = parts.scheme;
  if (scheme.ends_with("+unix")) {
    if (!hostport.empty())
      wrong("no host in a " + std::string(scheme) + " URI (the socket= parameter names the server: " +
                std::string(scheme) + ":///export?socket=/run/nbd.sock)",
            hostport);
  } else if (scheme.ends_with("+vsock")) {
    if (!host.empty()) {
      const auto cid = config_decimal(host);
      if (!cid || *cid >= vsock_cid_any)
        wrong("a vsock CID from 0 to 4294967294 as the host (2 is the host of a VM, 1 this machine, 0 the "
              "hypervisor; none: 2)",
              host);
    }
    if (has_port) {
      const auto n = config_decimal(port);
      if (!n || *n == 0 || *n >= 0xffffffff)
        wrong("a vsock port from 1 to 4294967294 after the CID", port);
    }
  } else {
    if (host.empty() && has_port)
      wrong("a host before the port", hostport);
    if (has_port) {
      const auto n = config_decimal(port);
      if (!n || *n == 0 || *n > 65535)
        wrong("a port from 1 to 65535", port);
    }
  }
  const std::string name = percent_decoded(export_name);
  if (name.size() > max_export_name)
    check.fail(v.at, v.key,
               "expected an export name of at most 4096 bytes (the NBD protocol's limit), got " +
                   std::to_string(name.size()) + " bytes in " + config_describe(v));
}

// The userinfo's password, if the URI has one (nbd://user:secret@host/).
std::optional<std::string_view> password_of(const UriParts &parts) {
  const auto at = parts.authority.rfind('@');
  if (at == std::string_view::npos)
    return std::nullopt;
  const std::string_view userinfo = parts.authority.substr(0, at);
  const auto colon = userinfo.find(':');
  if (colon == std::string_view::npos)
    return std::nullopt;
  return userinfo.substr(colon + 1);
}

// The one check of an NBD URI, for the configuration file and for check_nbd_uri().
void check_uri(const ConfigChecker &check, const ConfigValue &v) {
  static const std::string what = "an NBD URI such as nbd://host/export or nbd+unix:///export?socket=/run/nbd.sock";
  const std::string &text = check.scalar(v, what);
  const auto parts = split_uri(text);
  // First, so that no later message shows the secret.
  if (parts) {
    if (auto password = password_of(*parts)) {
      const std::string_view uri = text;
      const auto start = static_cast<std::size_t>(password->data() - text.data());
      const std::string hidden =
          std::string(uri.substr(0, start)) + "***" + std::string(uri.substr(start + password->size()));
      check.fail(v.at, v.key,
                 "expected a URI without a password, got one in " + config_quoted(hidden, '\'') +
                     ": secrets come from files, never from the URI; put the PSK in tls-psk-file and use "
                     "an nbds URI (the user name may stay: nbds://alice@host/export)");
    }
  }
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      check.expected(v, "a URI without spaces, control characters or non-ASCII bytes (percent-encode them)");
  if (!parts)
    check.expected(v, what);
  if (std::find(schemes.begin(), schemes.end(), parts->scheme) == schemes.end())
    check.fail(v.at, v.key,
               "expected a URI scheme of " + config_list(schemes) + ", got " + config_quoted(parts->scheme, '\'') +
                   " in " + config_describe(v));
  bool socket = false;
  std::string socket_path;
  std::string_view query = parts->query;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const auto eq = param.find('=');
    const std::string name = folded_name(param.substr(0, eq));
    if (name == "tls-psk-file" || name == "tls-certificates")
      check.expected(v, "a URI without a " + name + " query parameter",
                     ": paths and secrets come from the configuration; name the file with the backend key " + name +
                         " instead");
    if (name == "socket" && eq != std::string_view::npos && eq + 1 < param.size()) {
      socket = true;
      socket_path = percent_decoded(param.substr(eq + 1));
    }
  }
  if (is_unix_scheme(parts->scheme) && !socket)
    check.expected(v, "a socket= query parameter naming the server's socket in an " + std::string(parts->scheme) +
                          " URI (nbd+unix:///export?socket=/run/nbd.sock)");
  if (is_unix_scheme(parts->scheme)) {
    if (!socket_path.starts_with('/'))
      check.fail(v.at, v.key,
                 "expected an absolute socket= path (the daemon's working directory is /), got " +
                     config_quoted(socket_path, '\'') + " in " + config_describe(v));
    if (socket_path.size() > max_socket_path)
      check.fail(v.at, v.key,
                 "expected a socket= path of at most 107 bytes (what a unix socket address holds), got " +
                     std::to_string(socket_path.size()) + " bytes in " + config_describe(v));
  }
  std::string_view export_name = parts->path;
  if (export_name.starts_with('/'))
    export_name.remove_prefix(1);
  check_address(check, v, *parts, export_name);
}

void apply_uri(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/, NbdOptions &out) {
  check_uri(check, v);
  out.uri = v.text;
}

void apply_connections(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                       NbdOptions &out) {
  out.connections = check.count(v, 1, max_connections);
}

// uri comes first: the TLS keys are checked against its scheme.
constexpr std::array<BackendKey<NbdOptions>, 9> keys{{
    {"uri", true, &apply_uri},
    {"connections", false, &apply_connections},
    {"tls-certificates", false, &apply_absolute_path<NbdOptions, &NbdOptions::tls_certificates>},
    {"tls-psk-file", false, &apply_absolute_path<NbdOptions, &NbdOptions::tls_psk_file>},
    {"reconnect-timeout", false, &apply_timeout<NbdOptions, &NbdOptions::reconnect_timeout, Forever::unlimited>},
    {"request-timeout", false, &apply_timeout<NbdOptions, &NbdOptions::request_timeout, Forever::zero>},
    {"structured-replies", false, &apply_boolean<NbdOptions, &NbdOptions::structured_replies>},
    {"direct-transmission", false, &apply_boolean<NbdOptions, &NbdOptions::direct_transmission>},
    {"resize-poll-interval", false, &apply_duration<NbdOptions, &NbdOptions::resize_poll_interval>},
}};
constexpr auto key_names = names_of(keys);

void check_together(const BackendKeys &in, const NbdOptions &out) {
  const ConfigValue *uri = find_backend_key(in, "uri");
  const ConfigValue *first_tls = nullptr;
  for (const auto &v : in.values) {
    if (v.name != "tls-certificates" && v.name != "tls-psk-file")
      continue;
    if (first_tls)
      in.check.fail(v.key_at, v.key,
                    "expected tls-certificates or tls-psk-file, not both, got both (" + first_tls->name + " on line " +
                        std::to_string(first_tls->key_at.line) +
                        "): certificates and a PSK are two ways to authenticate, pick one");
    first_tls = &v;
  }
  if (first_tls && uri) {
    const std::string_view scheme = split_uri(out.uri)->scheme;
    if (!is_tls_scheme(scheme))
      in.check.fail(first_tls->key_at, first_tls->key,
                    "expected a TLS URI scheme (nbds, nbds+unix or nbds+vsock) for this key, got " +
                        config_quoted(scheme, '\'') + " in uri (line " + std::to_string(uri->at.line) +
                        "): without TLS the key would be ignored");
  }
}

std::unique_ptr<BackendOptions> parse(const BackendKeys &in) {
  auto out = std::make_unique<NbdOptions>();
  apply_backend_keys(in, nbd_backend_module, keys, *out);
  check_together(in, *out);
  return out;
}

// The socket= path of an nbd+unix URI already checked, or "".
std::string socket_of(std::string_view uri) {
  const auto parts = split_uri(uri);
  if (!parts || !is_unix_scheme(parts->scheme))
    return {};
  std::string_view query = parts->query;
  std::string out;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const auto eq = param.find('=');
    if (eq != std::string_view::npos && folded_name(param.substr(0, eq)) == "socket")
      out = percent_decoded(param.substr(eq + 1));
  }
  return out;
}

// libnbd's client files in a tls-certificates directory (nbd_set_tls_certificates(3), as
// gnutls loads them): the CA that signed the server's certificate, and our certificate and key.
constexpr std::array<std::string_view, 3> client_certificate_files{"ca-cert.pem", "client-cert.pem", "client-key.pem"};

void preflight(const BackendOptions &options, std::vector<PreflightFinding> &out) {
  const auto &o = dynamic_cast<const NbdOptions &>(options);
  using S = PreflightFinding::Severity;
  if (!o.tls_psk_file.empty())
    if (const std::string problem = secret_file_problem(o.tls_psk_file); !problem.empty())
      out.push_back({S::error, "tls-psk-file", o.tls_psk_file + " " + problem});
  if (!o.tls_certificates.empty()) {
    struct stat st {};
    if (::stat(o.tls_certificates.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      out.push_back({S::error, "tls-certificates",
                     o.tls_certificates + " is not a directory (it must hold ca-cert.pem, client-cert.pem and "
                                          "client-key.pem)"});
    } else {
      for (auto name : client_certificate_files) {
        const std::string path = o.tls_certificates + "/" + std::string(name);
        if (name == "client-key.pem") {
          if (const std::string problem = secret_file_problem(path); !problem.empty())
            out.push_back({S::error, "tls-certificates", std::string(path).append(" ").append(problem)});
          continue;
        }
        const SmallFile f = read_small_file(path, 1 << 20);
        if (f.error != 0)
          out.push_back({S::error, "tls-certificates",
                         path + ": " +
                             (f.error == ENOENT ? std::string("missing (libnbd needs ca-cert.pem, "
                                                              "client-cert.pem and client-key.pem)")
                                                : f.problem())});
      }
    }
  }
  if (const std::string socket = socket_of(o.uri); !socket.empty()) {
    if (const std::string problem = parent_directory_problem(socket); !problem.empty()) {
      out.push_back({S::error, "uri", "the socket " + socket + ": " + problem});
    } else {
      struct stat st {};
      if (::stat(socket.c_str(), &st) != 0)
        out.push_back({S::warning, "uri",
                       "the socket " + socket + " does not exist yet (fine if the server starts later: I/O waits)"});
      else if (!S_ISSOCK(st.st_mode))
        out.push_back(
            {S::error, "uri", "the socket " + socket + " is " + file_type_name(st.st_mode) + ", not a unix socket"});
    }
  }
}

std::unique_ptr<Backend> create(const BackendOptions &options, const BackendDevice & /*device*/) {
  return std::make_unique<NbdBackend>(dynamic_cast<const NbdOptions &>(options));
}

} // namespace

void check_nbd_uri(const std::string &uri) { check_outside_file("nbd backend", "uri", uri, &check_uri); }

const BackendModule nbd_backend_module{
    .type = "nbd",
    .article = "an",
    .keys = key_names,
    .parse = &parse,
    .create = &create,
    .preflight = &preflight,
};

} // namespace vb
