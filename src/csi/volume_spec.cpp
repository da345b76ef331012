#include "csi/volume_spec.h"

#include "config/config.h"

#include <cstdint>
#include <cstdio>
#include <set>
#include <string_view>
#include <utility>

namespace vb::csi {
namespace {

// Attributes that are device keys rather than backend keys.
const std::set<std::string, std::less<>> kDeviceKeys = {"queues",    "queue-size",      "logical-block-size",
                                                        "read-only", "control-timeout", "busy-poll-us"};
// Chosen by the plugin: the name and serial must follow the volume id (so a restaged volume finds
// its device), and the disk must appear on this host.
const std::set<std::string, std::less<>> kPluginKeys = {"name", "serial", "attach"};

struct SecretKey {
  const char *secret;     // the node-stage secret's key
  const char *config_key; // where the file's path goes, under backend
};
const SecretKey kSecrets[] = {
    {"chap-password", "chap.password-file"},
    {"chap-target-password", "chap.target-password-file"},
    {"tls-psk", "tls-psk-file"},
};

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

std::string key_problem(std::string_view key) {
  if (key.empty() || key.size() > kMaxAttributeKey)
    return "a key of 1 to " + std::to_string(kMaxAttributeKey) + " bytes";
  if (key[0] < 'a' || key[0] > 'z')
    return "a key starting with a lower-case letter";
  for (char c : key)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
      return "a key of lower-case letters, digits and '-'";
  return "";
}

std::string value_problem(std::string_view value, std::size_t limit) {
  if (value.size() > limit)
    return "a value of at most " + std::to_string(limit) + " bytes, got " + std::to_string(value.size());
  for (char c : value)
    if (is_control(static_cast<unsigned char>(c)))
      return "a value without control characters";
  return "";
}

bool is_plain_scalar(std::string_view v) {
  if (v == "true" || v == "false")
    return true;
  std::size_t i = (!v.empty() && v[0] == '-') ? 1 : 0;
  if (i == v.size())
    return false;
  for (; i < v.size(); ++i)
    if (v[i] < '0' || v[i] > '9')
      return false;
  return v.size() <= 20;
}

std::string quoted(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + "\"";
}

// A value as YAML: integers and booleans as they are (the parser wants them unquoted), anything
// else double-quoted so no value can add a key or a document.
std::string scalar(std::string_view v) { return is_plain_scalar(v) ? std::string(v) : quoted(v); }

std::string trimmed(std::string_view s) {
  while (!s.empty() && s.front() == ' ')
    s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ')
    s.remove_suffix(1);
  return std::string(s);
}

} // namespace

std::string device_name_for(const std::string &volume_id) {
  std::uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : volume_id) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char hex[17];
  (void)std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return std::string("csi-") + hex;
}

bool is_csi_device_name(const std::string &name) {
  if (name.size() != 20 || name.compare(0, 4, "csi-") != 0)
    return false;
  for (std::size_t i = 4; i < name.size(); ++i)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
      return false;
  return true;
}

std::string volume_id_problem(const std::string &volume_id) {
  if (volume_id.empty())
    return "the volume id is empty";
  if (volume_id.size() > kMaxVolumeId)
    return "the volume id is longer than " + std::to_string(kMaxVolumeId) + " bytes";
  for (char c : volume_id)
    if (is_control(static_cast<unsigned char>(c)))
      return "the volume id holds a control character";
  return "";
}

VolumeSpec build_volume_spec(const std::string &volume_id, const std::map<std::string, std::string> &attributes,
                             const std::map<std::string, std::string> &secrets, const std::string &secret_dir,
                             bool read_only) {
  if (attributes.size() > kMaxAttributes)
    throw VolumeSpecError("", "too many volume attributes: " + std::to_string(attributes.size()) + ", at most " +
                                  std::to_string(kMaxAttributes));
  VolumeSpec spec;
  spec.device = device_name_for(volume_id);

  std::string type;
  std::vector<std::pair<std::string, std::string>> device_lines;  // key, YAML value
  std::vector<std::pair<std::string, std::string>> backend_lines; // key, YAML value (after "key:")
  std::vector<std::pair<std::string, std::string>> chap_lines;
  // A configuration key (devices[0]....) back to what set it, for the parser's messages.
  std::vector<std::pair<std::string, std::string>> origin;

  for (const auto &attribute : attributes) {
    const std::string &key = attribute.first;
    const std::string &value = attribute.second;
    // Kubernetes adds csi.storage.k8s.io/... keys (pod name, ephemeral): not ours.
    if (key.find('/') != std::string::npos)
      continue;
    auto attr_error = [&key](const std::string &what) {
      std::string m = "volume attribute '";
      m.append(key).append("': ").append(what);
      return VolumeSpecError(key, m);
    };
    if (auto p = key_problem(key); !p.empty())
      throw VolumeSpecError(key.substr(0, kMaxAttributeKey), "a volume attribute key: expected " + p);
    if (auto p = value_problem(value, kMaxAttributeValue); !p.empty())
      throw attr_error("expected " + p);
    if (kPluginKeys.count(key))
      throw attr_error("is chosen by the plugin (the device is named after the volume id), remove it");
    if (key == "chap" || (key.size() > 5 && key.compare(key.size() - 5, 5, "-file") == 0))
      throw attr_error("secrets come from the node-stage secret (keys chap-password, chap-target-password, "
                       "tls-psk), not from a file named by an attribute");
    if (key == "type") {
      type = value;
      origin.emplace_back("devices[0].backend.type", key);
    } else if (kDeviceKeys.count(key)) {
      device_lines.emplace_back(key, scalar(value));
      origin.emplace_back("devices[0]." + key, key);
    } else if (key == "chap-username" || key == "chap-target-username") {
      std::string sub = key == "chap-username" ? "username" : "target-username";
      chap_lines.emplace_back(sub, quoted(value));
      origin.emplace_back("devices[0].backend.chap." + sub, key);
    } else if (key == "portals" && trimmed(value) != "discover") {
      std::string list;
      std::string_view rest = value;
      std::size_t count = 0;
      while (true) {
        auto comma = rest.find(',');
        std::string item = trimmed(rest.substr(0, comma));
        if (item.empty())
          throw attr_error("expected a comma-separated list of host[:port] (or 'discover'), got an empty item");
        list += "\n        - " + quoted(item);
        ++count;
        if (comma == std::string_view::npos)
          break;
        rest.remove_prefix(comma + 1);
      }
      backend_lines.emplace_back(key, list);
      origin.emplace_back("devices[0].backend.portals", key);
    } else {
      backend_lines.emplace_back(key, " " + scalar(value));
      origin.emplace_back("devices[0].backend." + key, key);
    }
  }
  if (type.empty())
    throw VolumeSpecError("type", "volume attribute 'type' is missing: the backend type (nbd, iscsi, file or "
                                  "memory), as in vduse-bridge.yaml");

  for (const auto &secret : secrets) {
    const std::string &key = secret.first;
    const std::string &value = secret.second;
    const SecretKey *known = nullptr;
    for (const auto &s : kSecrets)
      if (key == s.secret)
        known = &s;
    if (!known)
      throw VolumeSpecError(key.substr(0, kMaxAttributeKey),
                            "node-stage secret '" + key.substr(0, kMaxAttributeKey) +
                                "': not a secret this plugin uses (chap-password, chap-target-password, tls-psk)");
    if (value.empty() || value.size() > kMaxSecretValue) {
      std::string m = "node-stage secret '";
      m.append(key).append("': expected 1 to ").append(std::to_string(kMaxSecretValue)).append(" bytes, got ");
      throw VolumeSpecError(key, m.append(std::to_string(value.size())));
    }
    std::string path = secret_dir;
    path.append("/").append(key);
    spec.secrets.push_back({path, value});
    std::string ck = known->config_key;
    if (ck.rfind("chap.", 0) == 0)
      chap_lines.emplace_back(ck.substr(5), quoted(path));
    else
      backend_lines.emplace_back(ck, " " + quoted(path));
    origin.emplace_back("devices[0].backend." + ck, "secret " + key);
  }
  auto has_chap = [&chap_lines](const char *k) {
    for (const auto &l : chap_lines)
      if (l.first == k)
        return true;
    return false;
  };
  if (has_chap("username") && !has_chap("password-file"))
    throw VolumeSpecError("chap-username", "volume attribute 'chap-username' needs the node-stage secret "
                                           "'chap-password' (the PersistentVolume's nodeStageSecretRef)");
  if (has_chap("target-username") && !has_chap("target-password-file"))
    throw VolumeSpecError("chap-target-username", "volume attribute 'chap-target-username' needs the node-stage "
                                                  "secret 'chap-target-password'");
  if (!has_chap("username") && has_chap("password-file"))
    throw VolumeSpecError("chap-password",
                          "node-stage secret 'chap-password' needs the volume attribute 'chap-username'");

  std::string &y = spec.config;
  y = "# Written by vduse-bridge-csi for volume " + quoted(volume_id) + "\n";
  y += "devices:\n  - name: " + spec.device + "\n    serial: " + spec.device + "\n    attach: virtio-vdpa\n";
  bool ro_given = false;
  for (const auto &[k, v] : device_lines) {
    if (k == "read-only" && read_only) {
      ro_given = true;
      y += "    read-only: true\n";
    } else {
      y.append("    ").append(k).append(": ").append(v).append("\n");
    }
  }
  if (read_only && !ro_given)
    y += "    read-only: true\n";
  y += "    backend:\n      type: " + quoted(type) + "\n";
  for (const auto &[k, v] : backend_lines)
    y.append("      ").append(k).append(":").append(v).append("\n");
  if (!chap_lines.empty()) {
    y += "      chap:\n";
    for (const auto &[k, v] : chap_lines)
      y.append("        ").append(k).append(": ").append(v).append("\n");
  }

  // The daemon's own parser has the last word; its message goes back under the attribute's name.
  auto check = check_config_text(y, "volume attributes");
  if (!check.errors.empty()) {
    const ConfigError &e = check.errors.front();
    std::string what = e.what();
    std::string problem = what;
    if (!e.key().empty()) {
      auto at = what.find(e.key() + ": ");
      if (at != std::string::npos)
        problem = what.substr(at + e.key().size() + 2);
    }
    std::string attribute;
    std::size_t best = 0;
    for (const auto &[ck, attr] : origin)
      if (e.key().rfind(ck, 0) == 0 && ck.size() > best) {
        best = ck.size();
        attribute = attr;
      }
    if (attribute.empty()) {
      std::string k = e.key();
      for (const char *prefix : {"devices[0].backend.", "devices[0]."})
        if (k.rfind(prefix, 0) == 0) {
          k = k.substr(std::string_view(prefix).size());
          break;
        }
      attribute = k.empty() ? "type" : k;
    }
    if (attribute.rfind("secret ", 0) == 0)
      throw VolumeSpecError(attribute.substr(7), "node-stage " + attribute + ": " + problem);
    throw VolumeSpecError(attribute, "volume attribute '" + attribute + "': " + problem);
  }
  return spec;
}

} // namespace vb::csi
