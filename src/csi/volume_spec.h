// From a CSI volume (its id, a PersistentVolume's volumeAttributes and the node-stage secrets) to
// the one-device configuration file the plugin hands to the daemon's `add` command.
//
// Everything in a request is untrusted: attribute keys and values are bounded and checked here,
// then the file is checked by the daemon's own configuration parser (check_config_text), and any
// problem becomes a VolumeSpecError naming the attribute, never the secret's value.
// Pure functions; any thread.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace vb::csi {

inline constexpr std::size_t kMaxAttributes = 64;
inline constexpr std::size_t kMaxAttributeKey = 64;
inline constexpr std::size_t kMaxAttributeValue = 4096;
inline constexpr std::size_t kMaxSecretValue = 4096;
inline constexpr std::size_t kMaxVolumeId = 256;

// A bad attribute or secret: what() says what is wrong with it ("volume attribute 'queues':
// expected an integer, got 'many'"); attribute() is its key.
class VolumeSpecError : public std::invalid_argument {
public:
  VolumeSpecError(std::string attribute, const std::string &what)
      : std::invalid_argument(what), attribute_(std::move(attribute)) {}
  const std::string &attribute() const noexcept { return attribute_; }

private:
  std::string attribute_;
};

// A secret file to write (mode 0600) in the device's secret directory before `add`.
struct SecretFile {
  std::string path;    // absolute: secret_dir/NAME
  std::string content; // never logged
};

struct VolumeSpec {
  std::string device;              // the daemon's device name, also the disk's serial
  std::string config;              // the YAML text of a one-device configuration file
  std::vector<SecretFile> secrets; // referenced by path from config
};

// "csi-" and 16 hex digits of a 64-bit FNV-1a hash of the volume id: a valid device name, and 20
// bytes, so the disk's serial (/dev/disk/by-id/virtio-csi-...) is the whole name.
std::string device_name_for(const std::string &volume_id);
// Whether NAME is one device_name_for() makes: csi- and 16 lower-case hex digits.
bool is_csi_device_name(const std::string &name);

// What is wrong with a volume id ("" if nothing): empty, longer than kMaxVolumeId, or holding
// a control character.
std::string volume_id_problem(const std::string &volume_id);

// Builds the device's configuration. secret_dir is where its secret files go (absolute);
// read_only makes the disk read-only (a reader access mode). Throws VolumeSpecError.
VolumeSpec build_volume_spec(const std::string &volume_id, const std::map<std::string, std::string> &attributes,
                             const std::map<std::string, std::string> &secrets, const std::string &secret_dir,
                             bool read_only);

} // namespace vb::csi
