// What the plugin remembers about a staged volume, in STATE-DIR/DEVICE/staged: enough for a
// restarted plugin to publish, unpublish and unstage it. The file is written whole (temporary file,
// fsync, rename) and read back as untrusted input: bounded, every field checked.
#pragma once

#include <optional>
#include <string>

namespace vb::csi {

inline constexpr std::size_t kMaxStateFile = 8192;

struct StagedVolume {
  std::string volume_id;
  std::string access;       // "block" or "mount"
  std::string staging_path; // kubelet's staging_target_path
  std::string device_node;  // /dev/vdX
  std::string fs_type;      // for "mount"; "" for "block"
};

std::string format_staged_volume(const StagedVolume &v);
// Throws std::runtime_error saying what is wrong (a line, a missing or bad field).
StagedVolume parse_staged_volume(const std::string &text);

// Atomically writes text to path with the given mode; throws std::runtime_error.
void write_file_atomically(const std::string &path, const std::string &text, unsigned mode);

// The volume's state, or nullopt when the file does not exist; throws std::runtime_error for one
// that cannot be read or does not parse.
std::optional<StagedVolume> load_staged_volume(const std::string &path);

} // namespace vb::csi
