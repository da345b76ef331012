// backend.type: nbd: its keys and their checks, and the backend it makes.
#include "common/text.h"
#include "nbd/nbd_backend.h"
#include "nbd/nbd_options.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <stdexcept>

namespace vb {
namespace {

constexpr unsigned max_connections = 16; // per device; more buys nothing on one server

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
  const auto question = rest.find('?');
  if (question != std::string_view::npos) {
    const std::string_view after = rest.substr(question + 1);
    parts.query = after.substr(0, after.find('#'));
  }
  return parts;
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
    if (name == "socket" && eq != std::string_view::npos && eq + 1 < param.size())
      socket = true;
  }
  if (is_unix_scheme(parts->scheme) && !socket)
    check.expected(v, "a socket= query parameter naming the server's socket in an " + std::string(parts->scheme) +
                          " URI (nbd+unix:///export?socket=/run/nbd.sock)");
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
constexpr std::array<BackendKey<NbdOptions>, 8> keys{{
    {"uri", true, &apply_uri},
    {"connections", false, &apply_connections},
    {"tls-certificates", false, &apply_absolute_path<NbdOptions, &NbdOptions::tls_certificates>},
    {"tls-psk-file", false, &apply_absolute_path<NbdOptions, &NbdOptions::tls_psk_file>},
    {"reconnect-timeout", false, &apply_timeout<NbdOptions, &NbdOptions::reconnect_timeout, Forever::unlimited>},
    {"request-timeout", false, &apply_timeout<NbdOptions, &NbdOptions::request_timeout, Forever::zero>},
    {"structured-replies", false, &apply_boolean<NbdOptions, &NbdOptions::structured_replies>},
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
};

} // namespace vb
