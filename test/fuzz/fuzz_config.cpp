// libFuzzer target: arbitrary text as the configuration file. parse_config() may only throw
// ConfigError (config.h), whose what() is one printable line "FILE:LINE:COLUMN: KEY: problem"
// naming the file, a position inside the text and the key it reports; anything else that leaves
// the parser (another exception type, a crash, a hang) is a finding. What it accepts must be
// within the documented bounds of every field, and parsing is deterministic.
//
// yaml-cpp is Debian's build, not instrumented: coverage guidance and ASan cover config.cpp,
// and yaml-cpp only through what it hands back.
#include "config/config.h"
#include "fuzz_util.h"
#include "iscsi/iscsi_options.h"
#include "memory/memory_options.h"
#include "nbd/nbd_options.h"

#include <algorithm>
#include <set>
#include <string>

namespace {

constexpr const char *kSource = "fuzz.yaml";

bool power_of_two(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

bool printable(const std::string &s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

// A password in the URI's user information (RFC 3986: the authority ends at '/', '?' or '#').
bool has_password(const std::string &uri) {
  const auto sep = uri.find("://");
  if (sep == std::string::npos)
    return false;
  const std::string authority = uri.substr(sep + 3, uri.find_first_of("/?#", sep + 3) - (sep + 3));
  const auto at = authority.rfind('@');
  return at != std::string::npos && authority.substr(0, at).find(':') != std::string::npos;
}

void check_error(const vb::ConfigError &e, const std::string &text) {
  // Several problems are one line each, in file order; the first is the error's position.
  const std::string all = e.what();
  FUZZ_CHECK(e.count() >= 1);
  FUZZ_CHECK(static_cast<std::size_t>(std::count(all.begin(), all.end(), '\n')) == e.count() - 1);
  for (std::size_t at = 0; at <= all.size();) {
    const std::size_t end = std::min(all.find('\n', at), all.size());
    const std::string line = all.substr(at, end - at);
    FUZZ_CHECK(line.rfind(std::string(kSource) + ":", 0) == 0);
    FUZZ_CHECK(printable(line)); // no byte of the file that could mess up a terminal
    at = end + 1;
  }
  const std::string what = all.substr(0, all.find('\n'));
  const auto lines = static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1;
  FUZZ_CHECK(e.line() >= 1 && e.line() <= lines); // a position inside the text
  FUZZ_CHECK(e.column() >= 1);
  const std::string at =
      std::string(kSource) + ":" + std::to_string(e.line()) + ":" + std::to_string(e.column()) + ": ";
  FUZZ_CHECK(what.rfind(at, 0) == 0);
  if (!e.key().empty())
    FUZZ_CHECK(what.compare(at.size(), e.key().size() + 2, e.key() + ": ") == 0);
  FUZZ_CHECK(what.size() > at.size() + (e.key().empty() ? 0 : e.key().size() + 2)); // a problem is stated
}

void check_device(const vb::DeviceConfig &d) {
  FUZZ_CHECK(!d.name.empty() && d.name.size() <= 64 && std::all_of(d.name.begin(), d.name.end(), name_char));
  FUZZ_CHECK(d.queues >= 1 && d.queues <= 64);
  FUZZ_CHECK(power_of_two(d.queue_size) && d.queue_size >= 2 && d.queue_size <= 1024);
  FUZZ_CHECK(d.logical_block_size == 0 ||
             (power_of_two(d.logical_block_size) && d.logical_block_size >= 512 && d.logical_block_size <= 4096));
  FUZZ_CHECK(d.serial.size() <= 20 && printable(d.serial));
  FUZZ_CHECK(d.line >= 1);
  const std::string_view type = d.backend.type();
  FUZZ_CHECK(vb::find_backend_module(type) == d.backend.module && d.backend.options != nullptr);
  if (type == "memory") {
    const unsigned block = d.logical_block_size ? d.logical_block_size : 512;
    FUZZ_CHECK(d.backend.as<vb::MemoryOptions>().size > 0 && d.backend.as<vb::MemoryOptions>().size % block == 0);
    FUZZ_CHECK(d.backend.as<vb::MemoryOptions>().size <= (1ULL << 46));
  } else if (type == "nbd") {
    const auto &n = d.backend.as<vb::NbdOptions>();
    FUZZ_CHECK(!n.uri.empty());
    FUZZ_CHECK(n.connections >= 1 && n.connections <= 16);
    FUZZ_CHECK(n.tls_certificates.empty() || n.tls_psk_file.empty());
    FUZZ_CHECK(printable(n.uri) && n.uri.find(' ') == std::string::npos);
    FUZZ_CHECK(!has_password(n.uri)); // secrets never come from the file
    FUZZ_CHECK(n.reconnect_timeout.count() >= 0 && n.request_timeout.count() >= 0);
  } else if (type == "iscsi") {
    const auto &i = d.backend.as<vb::IscsiOptions>();
    FUZZ_CHECK(i.uri.rfind("iscsi://", 0) == 0 && printable(i.uri));
    FUZZ_CHECK(i.uri.find_first_of("?# ") == std::string::npos);
    FUZZ_CHECK(i.chap_username.empty() == i.chap_password_file.empty());
    FUZZ_CHECK(i.target_username.empty() == i.target_password_file.empty());
    FUZZ_CHECK(i.target_username.empty() || !i.chap_username.empty());
    FUZZ_CHECK(i.reconnect_timeout.count() >= 0 && i.request_timeout.count() >= 0);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string text(reinterpret_cast<const char *>(data), size);
  vb::Config config;
  try {
    config = vb::parse_config(text, kSource);
  } catch (const vb::ConfigError &e) {
    check_error(e, text);
    try {
      (void)vb::parse_config(text, kSource);
      FUZZ_CHECK(!"the second parse of the same text succeeded");
    } catch (const vb::ConfigError &again) {
      FUZZ_CHECK(std::string(again.what()) == e.what());
    }
    return 0;
  }
  // Any other exception escapes and libFuzzer reports it as a crash (std::terminate).
  FUZZ_CHECK(config.path == kSource);
  FUZZ_CHECK(!config.devices.empty());
  std::set<std::string> names;
  for (const auto &d : config.devices) {
    check_device(d);
    FUZZ_CHECK(names.insert(d.name).second);
  }
  const vb::Config again = vb::parse_config(text, kSource);
  FUZZ_CHECK(again.devices.size() == config.devices.size());
  for (std::size_t i = 0; i < again.devices.size(); ++i)
    FUZZ_CHECK(again.devices[i].same_settings(config.devices[i]));
  return 0;
}
