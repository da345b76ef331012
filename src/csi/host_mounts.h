// The host's mount table and the mount operations the node service needs: find what is mounted at
// a path (/proc/self/mountinfo), mount a filesystem, bind-mount, unmount, and run the helper
// programs (mount, mkfs, blkid, resize2fs, xfs_growfs) with a bound on their time and output.
//
// Blocking; any thread. Paths come from kubelet's requests and are checked by the caller
// (absolute, no "..", no control characters) before they reach here.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace vb::csi {

struct MountEntry {
  unsigned major = 0, minor = 0; // st_dev of the mounted filesystem (or the bound file's)
  std::string root;              // the part of the filesystem mounted here ("/" unless a bind)
  std::string mount_point;
  std::string options; // per-mount (ro/rw, ...)
  std::string fs_type;
  std::string source;
};

// Parses mountinfo text (proc(5)); octal escapes (\040 for a space) are undone. Lines that do
// not parse are skipped.
std::vector<MountEntry> parse_mountinfo(const std::string &text);

// The entries of /proc/self/mountinfo; throws std::runtime_error if it cannot be read.
std::vector<MountEntry> read_mounts();

// The last (topmost) mount at path, if any.
std::optional<MountEntry> mount_at(const std::vector<MountEntry> &mounts, const std::string &path);

// Whether a mount entry is read-only ("ro" among its per-mount options).
bool is_read_only(const MountEntry &m);

// What is wrong with a path from a request ("" if nothing): not absolute, "." or ".." parts, a
// control character, longer than 4096 bytes.
std::string path_problem(const std::string &path);

struct CommandResult {
  int exit_code = -1; // -1: did not run, or killed
  std::string output; // stdout and stderr, at most 64 KiB
  bool timed_out = false;
};

// Runs argv (argv[0] looked up in PATH) with no shell, stdin from /dev/null; kills it at timeout.
CommandResult run_command(const std::vector<std::string> &argv, std::chrono::seconds timeout);

// The filesystem type on a block device ("ext4", "xfs"), "" when it holds none, or throws
// std::runtime_error when it cannot tell. Blank means blkid -p found nothing AND the first and
// last MiB read without an error: blkid's "nothing found" is also its answer to a read that
// failed, and a disk taken for blank gets a new filesystem.
std::string probe_filesystem(const std::string &device);

// Reads the first and last MiB of a block device (O_DIRECT: the disk, not the page cache); throws
// std::runtime_error naming the step that failed.
void check_disk_reads(const std::string &device);

// Why the block device cannot be claimed for itself ("" if it can): a mounted filesystem on it
// (in any mount namespace) or a holder (device-mapper, md) has it open exclusively. Bind mounts
// of the node and plain opens do not count: the mount table tells those.
std::string device_claimed(const std::string &device);

// The serial of the block device at node (/sys/dev/block/M:m/serial, virtio-blk's), "" if none.
std::string block_serial(const std::string &node);

// Each throws std::runtime_error with the failing step and its words.
void make_filesystem(const std::string &device, const std::string &fs_type);
void mount_filesystem(const std::string &device, const std::string &target, const std::string &fs_type,
                      const std::vector<std::string> &flags, bool read_only);
void bind_mount(const std::string &source, const std::string &target, bool read_only);
// Unmounts every mount stacked at target; nothing mounted is fine.
void unmount_all(const std::string &target);
void grow_filesystem(const std::string &device, const std::string &mount_point, const std::string &fs_type);

} // namespace vb::csi
