#include "csi/volume_state.h"

#include "common/errors.h"
#include "common/small_file.h"
#include "common/unique_fd.h"
#include "csi/host_mounts.h"
#include "csi/volume_spec.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <sstream>
#include <stdexcept>

namespace vb::csi {

std::string format_staged_volume(const StagedVolume &v) {
  return "volume-id=" + v.volume_id + "\naccess=" + v.access + "\nstaging-path=" + v.staging_path +
         "\ndevice-node=" + v.device_node + "\nfs-type=" + v.fs_type + "\n";
}

StagedVolume parse_staged_volume(const std::string &text) {
  if (text.size() > kMaxStateFile)
    throw std::runtime_error("more than " + std::to_string(kMaxStateFile) + " bytes");
  StagedVolume v;
  bool seen[5] = {};
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto eq = line.find('=');
    if (eq == std::string::npos)
      throw std::runtime_error("line " + std::to_string(n) + ": expected KEY=VALUE");
    std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    static const char *const keys[] = {"volume-id", "access", "staging-path", "device-node", "fs-type"};
    std::string *fields[] = {&v.volume_id, &v.access, &v.staging_path, &v.device_node, &v.fs_type};
    bool known = false;
    for (int i = 0; i < 5; ++i)
      if (key == keys[i]) {
        if (seen[i])
          throw std::runtime_error("line " + std::to_string(n) + ": " + key + " given twice");
        seen[i] = known = true;
        *fields[i] = value;
      }
    if (!known)
      throw std::runtime_error("line " + std::to_string(n) + ": unknown key '" + key.substr(0, 64) + "'");
  }
  for (bool s : seen)
    if (!s)
      throw std::runtime_error("a field is missing");
  if (auto p = volume_id_problem(v.volume_id); !p.empty())
    throw std::runtime_error("volume-id: " + p);
  if (v.access != "block" && v.access != "mount")
    throw std::runtime_error("access: expected block or mount");
  if (auto p = path_problem(v.staging_path); !p.empty())
    throw std::runtime_error("staging-path: " + p);
  if (v.device_node.rfind("/dev/", 0) != 0 || !path_problem(v.device_node).empty())
    throw std::runtime_error("device-node: expected a path under /dev");
  if (v.access == "mount" && v.fs_type != "ext2" && v.fs_type != "ext3" && v.fs_type != "ext4" && v.fs_type != "xfs")
    throw std::runtime_error("fs-type: expected ext2, ext3, ext4 or xfs");
  return v;
}

void write_file_atomically(const std::string &path, const std::string &text, unsigned mode) {
  const std::string temp = path + ".tmp";
  ::unlink(temp.c_str());
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (fd.get() < 0)
    throw std::runtime_error(errno_message("create " + temp, errno));
  if (::fchmod(fd.get(), mode) != 0 ||
      ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::fsync(fd.get()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw std::runtime_error(errno_message("write " + temp, err));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw std::runtime_error(errno_message("rename " + temp, err));
  }
}

std::optional<StagedVolume> load_staged_volume(const std::string &path) {
  SmallFile f = read_small_file(path, kMaxStateFile);
  if (f.error == ENOENT)
    return std::nullopt;
  if (f.error != 0)
    throw std::runtime_error(path + ": " + f.problem());
  try {
    return parse_staged_volume(f.text);
  } catch (const std::exception &e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

} // namespace vb::csi
