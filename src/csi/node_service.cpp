#include "csi/node_service.h"

#include "common/errors.h"
#include "common/log.h"
#include "common/small_file.h"
#include "control/control_client.h"
#include "csi/device_list.h"
#include "csi/host_mounts.h"
#include "csi/volume_spec.h"
#include "csi/volume_state.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

using grpc::Status;
using grpc::StatusCode;
namespace v1 = ::csi::v1;

namespace vb::csi {
namespace {

constexpr std::size_t kMaxMountFlags = 32;
constexpr std::size_t kMaxMountFlag = 256;

Status invalid(const std::string &m) { return {StatusCode::INVALID_ARGUMENT, m}; }
Status precondition(const std::string &m) { return {StatusCode::FAILED_PRECONDITION, m}; }
Status unavailable(const std::string &m) { return {StatusCode::UNAVAILABLE, m}; }
Status internal(const std::string &m) { return {StatusCode::INTERNAL, m}; }

Status check_path(const std::string &what, const std::string &path) {
  if (path.empty())
    return invalid(what + " is missing");
  if (auto p = path_problem(path); !p.empty())
    return invalid(what + ": " + p);
  return Status::OK;
}

Status check_volume_id(const std::string &id) {
  if (auto p = volume_id_problem(id); !p.empty())
    return invalid(p);
  return Status::OK;
}

bool reader_mode(const v1::VolumeCapability &c) {
  const auto m = c.access_mode().mode();
  return m == v1::VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY ||
         m == v1::VolumeCapability::AccessMode::MULTI_NODE_READER_ONLY;
}

// The filesystem and mount flags a mount capability asks for, checked.
Status check_mount_capability(const v1::VolumeCapability &c, std::string &fs_type) {
  const auto &m = c.mount();
  fs_type = m.fs_type();
  if (!fs_type.empty() && fs_type != "ext2" && fs_type != "ext3" && fs_type != "ext4" && fs_type != "xfs")
    return invalid("volume_capability.mount.fs_type: expected ext2, ext3, ext4 or xfs, got '" + fs_type.substr(0, 32) +
                   "'");
  if (c.access_mode().mode() == v1::VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER)
    return invalid("volume_capability: a filesystem volume cannot be written from several nodes "
                   "(MULTI_NODE_MULTI_WRITER needs volumeMode: Block)");
  if (static_cast<std::size_t>(m.mount_flags_size()) > kMaxMountFlags)
    return invalid("volume_capability.mount.mount_flags: at most " + std::to_string(kMaxMountFlags) + " flags");
  for (const auto &f : m.mount_flags()) {
    bool bad = f.empty() || f.size() > kMaxMountFlag;
    for (char ch : f)
      bad = bad || ch == ',' || ch == ' ' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
    if (bad)
      return invalid("volume_capability.mount.mount_flags: '" + f.substr(0, 64) +
                     "' is not a mount option (one word each, no commas or spaces)");
  }
  return Status::OK;
}

Status check_capability(const v1::VolumeCapability &c, bool present) {
  if (!present)
    return invalid("volume_capability is missing");
  if (!c.has_block() && !c.has_mount())
    return invalid("volume_capability: neither block nor mount access");
  return Status::OK;
}

// stat() of a block device node: its device number, or 0.
dev_t block_device_number(const std::string &node) {
  struct stat st {};
  if (::stat(node.c_str(), &st) != 0 || !S_ISBLK(st.st_mode))
    return 0;
  return st.st_rdev;
}

bool same_device(const MountEntry &m, dev_t dev) { return m.major == ::major(dev) && m.minor == ::minor(dev); }

// Whether target (a file bind-mounted for a block volume) is the device node dev.
bool target_is_device(const std::string &target, dev_t dev) {
  struct stat st {};
  return ::stat(target.c_str(), &st) == 0 && S_ISBLK(st.st_mode) && st.st_rdev == dev;
}

std::uint64_t device_size(const std::string &node) {
  int fd = ::open(node.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return 0;
  std::uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) != 0)
    size = 0;
  ::close(fd);
  return size;
}

// The kernel's read-only flag of a block device (BLKROSET): a read-only bind mount of a device
// node does not stop writes to the device, so a read-only block publish sets it on the disk.
void set_block_read_only(const std::string &node, bool read_only) {
  int fd = ::open(node.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    throw std::runtime_error(errno_message("open " + node, errno));
  int flag = read_only ? 1 : 0;
  const int rc = ::ioctl(fd, BLKROSET, &flag);
  const int err = errno;
  ::close(fd);
  if (rc != 0)
    throw std::runtime_error(errno_message(std::string("BLKROSET ") + (read_only ? "1" : "0") + " on " + node, err));
}

// The publishes of a block volume other than `except`: bind mounts of its node.
std::vector<MountEntry> block_publishes(const std::vector<MountEntry> &mounts, dev_t dev, const std::string &node,
                                        const std::string &except) {
  const std::string base = node.substr(node.rfind('/') + 1);
  std::vector<MountEntry> out;
  for (const auto &m : mounts)
    if (m.mount_point != except && m.root == "/" + base && target_is_device(m.mount_point, dev))
      out.push_back(m);
  return out;
}

std::string not_serving_message(const std::string &device, const std::string &volume_id,
                                std::chrono::milliseconds waited, const std::string &state) {
  return "device " + device + " for volume " + volume_id + " is not serving after " +
         std::to_string(waited.count() / 1000) + "s (" + state +
         "): it is kept, and the next NodeStageVolume goes on waiting";
}

std::string control_text(const std::string &socket, const std::string &command, std::chrono::milliseconds t) {
  return control::control_request(socket, command, t);
}

Status daemon_error(const control::ControlError &e) {
  using R = control::ControlError::Reason;
  if (e.reason() == R::failed)
    return internal(std::string("vduse-bridge: ") + e.what());
  return unavailable(std::string("the vduse-bridge daemon cannot be asked: ") + e.what());
}

void make_dirs(const std::string &path, mode_t mode) {
  std::string sofar;
  std::size_t at = 1;
  while (at != std::string::npos) {
    at = path.find('/', at);
    sofar = path.substr(0, at);
    if (::mkdir(sofar.c_str(), mode) != 0 && errno != EEXIST)
      throw std::runtime_error(errno_message("mkdir " + sofar, errno));
    if (at != std::string::npos)
      ++at;
  }
}

// The volume's directory and all in it (its files, a temporary one a killed plugin left).
void remove_volume_dir(const std::string &dir) {
  std::error_code ec;
  for (const auto &entry : std::filesystem::directory_iterator(dir, ec))
    std::filesystem::remove(entry.path(), ec);
  if (::rmdir(dir.c_str()) != 0 && errno != ENOENT)
    VB_LOG_WARN("%s", errno_message("rmdir " + dir, errno).c_str());
}

// Control characters of a request's strings, made visible before they reach a log line.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 512))
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  return out;
}

// Where else than `except` the device is mounted: a mount of its filesystem, or a bind mount of
// its node (a published block volume); "" if nowhere.
std::string mounted_elsewhere(const std::vector<MountEntry> &mounts, dev_t dev, const std::string &node,
                              const std::string &except) {
  const std::string base = node.substr(node.rfind('/') + 1);
  for (const auto &m : mounts) {
    if (m.mount_point == except)
      continue;
    if (same_device(m, dev))
      return m.mount_point;
    if (m.root == "/" + base && target_is_device(m.mount_point, dev))
      return m.mount_point;
  }
  return "";
}

// Logs one call's outcome (never a secret: requests are not logged, only ids and paths).
Status logged(const char *call, const std::string &volume_id, Status s, std::chrono::steady_clock::time_point started) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  if (s.ok())
    VB_LOG_INFO("%s %s: ok (%lld ms)", call, printable(volume_id).c_str(), static_cast<long long>(ms));
  else
    VB_LOG_WARN("%s %s: %s (code %d, %lld ms)", call, printable(volume_id).c_str(),
                printable(s.error_message()).c_str(), static_cast<int>(s.error_code()), static_cast<long long>(ms));
  return s;
}

} // namespace

// ---- Identity ----

Status IdentityService::GetPluginInfo(grpc::ServerContext *, const v1::GetPluginInfoRequest *,
                                      v1::GetPluginInfoResponse *out) {
  out->set_name(kDriverName);
  out->set_vendor_version(VDUSE_BRIDGE_VERSION);
  return Status::OK;
}

Status IdentityService::GetPluginCapabilities(grpc::ServerContext *, const v1::GetPluginCapabilitiesRequest *,
                                              v1::GetPluginCapabilitiesResponse *out) {
  // No CONTROLLER_SERVICE: volumes are provisioned statically. Expansion is online (the disk
  // grows under a mounted filesystem).
  out->add_capabilities()->mutable_volume_expansion()->set_type(v1::PluginCapability::VolumeExpansion::ONLINE);
  return Status::OK;
}

Status IdentityService::Probe(grpc::ServerContext *, const v1::ProbeRequest *, v1::ProbeResponse *out) {
  // Ready whenever it serves: the liveness probe restarts a plugin that is not, and restarting
  // it would not bring a stopped daemon back (calls that need the daemon say UNAVAILABLE).
  out->mutable_ready()->set_value(true);
  return Status::OK;
}

// ---- Node ----

NodeService::Claim::Claim(NodeService &s, std::string volume_id) : service_(s), volume_id_(std::move(volume_id)) {
  std::lock_guard lock(service_.mutex_);
  held_ = service_.busy_.insert(volume_id_).second;
}

NodeService::Claim::~Claim() {
  if (!held_)
    return;
  std::lock_guard lock(service_.mutex_);
  service_.busy_.erase(volume_id_);
}

#define VB_CSI_CALL(NAME, BODY)                                                                                        \
  const auto started = std::chrono::steady_clock::now();                                                               \
  Status s = check_volume_id(request->volume_id());                                                                    \
  if (s.ok()) {                                                                                                        \
    std::shared_lock sweep(sweep_mutex_);                                                                              \
    Claim claim(*this, request->volume_id());                                                                          \
    if (!claim.held())                                                                                                 \
      s = Status(StatusCode::ABORTED, "another call for volume " + request->volume_id() + " is in progress");          \
    else {                                                                                                             \
      try {                                                                                                            \
        s = BODY;                                                                                                      \
      } catch (const control::ControlError &e) {                                                                       \
        s = daemon_error(e);                                                                                           \
      } catch (const std::exception &e) {                                                                              \
        s = internal(e.what());                                                                                        \
      }                                                                                                                \
    }                                                                                                                  \
  }                                                                                                                    \
  return logged(NAME, request->volume_id().substr(0, kMaxVolumeId), s, started)

Status NodeService::NodeStageVolume(grpc::ServerContext *, const v1::NodeStageVolumeRequest *request,
                                    v1::NodeStageVolumeResponse *) {
  VB_CSI_CALL("NodeStageVolume", stage(*request));
}
Status NodeService::NodeUnstageVolume(grpc::ServerContext *, const v1::NodeUnstageVolumeRequest *request,
                                      v1::NodeUnstageVolumeResponse *) {
  VB_CSI_CALL("NodeUnstageVolume", unstage(*request));
}
Status NodeService::NodePublishVolume(grpc::ServerContext *, const v1::NodePublishVolumeRequest *request,
                                      v1::NodePublishVolumeResponse *) {
  VB_CSI_CALL("NodePublishVolume", publish(*request));
}
Status NodeService::NodeUnpublishVolume(grpc::ServerContext *, const v1::NodeUnpublishVolumeRequest *request,
                                        v1::NodeUnpublishVolumeResponse *) {
  VB_CSI_CALL("NodeUnpublishVolume", unpublish(*request));
}
Status NodeService::NodeExpandVolume(grpc::ServerContext *, const v1::NodeExpandVolumeRequest *request,
                                     v1::NodeExpandVolumeResponse *response) {
  VB_CSI_CALL("NodeExpandVolume", expand(*request, response));
}

Status NodeService::stage(const v1::NodeStageVolumeRequest &r) {
  if (Status s = check_path("staging_target_path", r.staging_target_path()); !s.ok())
    return s;
  if (Status s = check_capability(r.volume_capability(), r.has_volume_capability()); !s.ok())
    return s;
  const auto &cap = r.volume_capability();
  std::string fs_type;
  if (cap.has_mount())
    if (Status s = check_mount_capability(cap, fs_type); !s.ok())
      return s;
  const bool read_only = reader_mode(cap);
  const std::string device = device_name_for(r.volume_id());
  const std::string dir = volume_dir(device);

  if (auto t = r.volume_context().find("type"); t != r.volume_context().end() && !options_.backends.count(t->second)) {
    std::string allowed;
    for (const auto &b : options_.backends)
      allowed.append(allowed.empty() ? "" : ",").append(b);
    return invalid("volume attribute 'type': '" + printable(t->second.substr(0, 32)) +
                   "' is not allowed on this node (vduse-bridge-csi --backends " + allowed + ")");
  }
  VolumeSpec spec;
  try {
    spec = build_volume_spec(r.volume_id(), {r.volume_context().begin(), r.volume_context().end()},
                             {r.secrets().begin(), r.secrets().end()}, dir, read_only);
  } catch (const VolumeSpecError &e) {
    return invalid(e.what());
  }

  // A volume staged before (this plugin restarted, or kubelet retries) keeps its state: the same
  // request must find what it made and succeed.
  std::optional<StagedVolume> previous;
  try {
    previous = load_staged_volume(dir + "/staged");
  } catch (const std::exception &e) { // written again below
    VB_LOG_WARN("NodeStageVolume %s: %s: written again", r.volume_id().c_str(), e.what());
  }
  if (previous && previous->access != (cap.has_block() ? "block" : "mount"))
    return {StatusCode::ALREADY_EXISTS,
            "volume " + r.volume_id() + " is staged with " + previous->access + " access already; unstage it first"};
  if (previous && previous->volume_id != r.volume_id())
    return {StatusCode::ALREADY_EXISTS, "device " + device + " is staged for another volume id (" +
                                            printable(previous->volume_id) + "); unstage that first"};
  // A device made from other attributes (the PersistentVolume was recreated with another URI, or
  // another access mode) is not adopted: it would serve another disk than the one asked for.
  const std::string config_path = dir + "/device.yaml";
  if (const SmallFile before = read_small_file(config_path, 1 << 20); before.error == 0 && before.text != spec.config) {
    if (find_device(parse_device_list(control_text(options_.control_socket, "list", std::chrono::seconds(5))), device))
      return {StatusCode::ALREADY_EXISTS, "volume " + r.volume_id() +
                                              " is staged with other volume attributes or "
                                              "another access mode (its device " +
                                              device + " serves those); unstage it first"};
  }

  make_dirs(options_.state_dir, 0700);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw std::runtime_error(errno_message("mkdir " + dir, errno));
  // Secrets are written again at every stage: a rotated Secret reaches the next reconnect, and a
  // key dropped from it goes.
  for (const char *key : {"chap-password", "chap-target-password", "tls-psk"}) {
    const std::string path = dir + "/" + key;
    bool kept = false;
    for (const auto &f : spec.secrets)
      kept = kept || f.path == path;
    if (!kept)
      ::unlink(path.c_str());
  }
  for (const auto &f : spec.secrets)
    write_file_atomically(f.path, f.content, 0600);
  write_file_atomically(config_path, spec.config, 0600);

  try {
    (void)control_text(options_.control_socket, "add " + config_path, options_.stage_timeout);
  } catch (const control::ControlError &e) {
    const std::string what = e.what();
    const bool exists = e.reason() == control::ControlError::Reason::failed &&
                        what.find("a device named '" + device + "' exists already") != std::string::npos;
    if (!exists) {
      if (e.reason() == control::ControlError::Reason::failed)
        return precondition("vduse-bridge refused the device for volume " + r.volume_id() + ": " + what);
      return daemon_error(e);
    }
  }

  // Wait for the device to serve and its node to appear.
  const auto deadline = std::chrono::steady_clock::now() + options_.stage_timeout;
  std::string last_state = "not listed";
  std::string node;
  dev_t dev = 0;
  for (;;) {
    auto listed =
        find_device(parse_device_list(control_text(options_.control_socket, "list", std::chrono::seconds(5))), device);
    if (listed) {
      last_state = listed->state;
      if (listed->serving() && !listed->node.empty() && block_serial(listed->node) == device &&
          (dev = block_device_number(listed->node)) != 0) {
        node = listed->node;
        break;
      }
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return unavailable(not_serving_message(device, r.volume_id(), options_.stage_timeout, last_state));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  StagedVolume staged{r.volume_id(), cap.has_block() ? "block" : "mount", r.staging_target_path(), node, ""};
  if (cap.has_block()) {
    write_file_atomically(dir + "/staged", format_staged_volume(staged), 0600);
    return Status::OK;
  }

  const auto mounts = read_mounts();
  if (auto m = mount_at(mounts, r.staging_target_path())) {
    if (!same_device(*m, dev))
      return {StatusCode::ALREADY_EXISTS,
              "staging_target_path " + r.staging_target_path() + " has " + m->source + " mounted, not " + node};
    staged.fs_type = m->fs_type;
    write_file_atomically(dir + "/staged", format_staged_volume(staged), 0600);
    return Status::OK;
  }
  std::string found = probe_filesystem(node);
  if (found.empty()) {
    if (read_only)
      return precondition("volume " + r.volume_id() +
                          " is blank and its access mode is read-only: nothing to "
                          "mount (write a filesystem on it first, or stage it writable once)");
    if (fs_type.empty())
      fs_type = "ext4";
    VB_LOG_INFO("NodeStageVolume %s: %s is blank: making an %s filesystem", r.volume_id().c_str(), node.c_str(),
                fs_type.c_str());
    make_filesystem(node, fs_type);
    found = fs_type;
  } else if (fs_type.empty()) {
    if (found != "ext2" && found != "ext3" && found != "ext4" && found != "xfs")
      return precondition("volume " + r.volume_id() + " holds " + found +
                          ", not a filesystem this plugin mounts "
                          "(ext2, ext3, ext4, xfs): nothing was changed");
    fs_type = found;
  } else if (found != fs_type) {
    return precondition("volume " + r.volume_id() + " holds " + found + ", not the " + fs_type +
                        " asked for: it is not reformatted");
  }
  staged.fs_type = fs_type;
  write_file_atomically(dir + "/staged", format_staged_volume(staged), 0600);
  make_dirs(r.staging_target_path(), 0750);
  mount_filesystem(node, r.staging_target_path(), fs_type,
                   {cap.mount().mount_flags().begin(), cap.mount().mount_flags().end()}, read_only);
  return Status::OK;
}

Status NodeService::unstage(const v1::NodeUnstageVolumeRequest &r) {
  if (Status s = check_path("staging_target_path", r.staging_target_path()); !s.ok())
    return s;
  const std::string device = device_name_for(r.volume_id());
  const std::string dir = volume_dir(device);
  std::optional<StagedVolume> staged;
  try {
    staged = load_staged_volume(dir + "/staged");
  } catch (const std::exception &e) {
    VB_LOG_WARN("NodeUnstageVolume %s: %s: going on from the daemon's list", r.volume_id().c_str(), e.what());
  }
  // A recorded node is believed only while its serial is still this device's.
  std::string node = staged && block_serial(staged->device_node) == device ? staged->device_node : "";
  bool daemon_has_it = false;
  auto listed =
      find_device(parse_device_list(control_text(options_.control_socket, "list", std::chrono::seconds(5))), device);
  if (listed) {
    daemon_has_it = true;
    if (!listed->node.empty() && block_serial(listed->node) == device)
      node = listed->node;
  }
  const dev_t dev = node.empty() ? 0 : block_device_number(node);
  const auto mounts = read_mounts();
  if (dev != 0) {
    if (auto where = mounted_elsewhere(mounts, dev, node, r.staging_target_path()); !where.empty())
      return precondition("volume " + r.volume_id() + " is still published at " + where +
                          " (NodeUnpublishVolume first)");
  }
  if (auto m = mount_at(mounts, r.staging_target_path()); m && (dev == 0 || same_device(*m, dev)))
    unmount_all(r.staging_target_path());
  // What this mount table cannot show: a mount in another namespace, a device-mapper holder.
  if (dev != 0)
    if (auto why = device_claimed(node); !why.empty())
      return precondition("volume " + r.volume_id() + ": " + why + "; the device is kept");
  if (daemon_has_it) {
    try {
      (void)control_text(options_.control_socket, "remove " + device, std::chrono::seconds(60));
    } catch (const control::ControlError &e) {
      if (e.reason() != control::ControlError::Reason::failed ||
          std::string(e.what()).find("no device named") == std::string::npos)
        throw;
    }
  }
  remove_volume_dir(dir);
  return Status::OK;
}

int NodeService::remove_stale_devices() {
  // Asked once without the lock, so that a daemon that does not answer holds up no call.
  try {
    (void)control_text(options_.control_socket, "list", std::chrono::seconds(5));
  } catch (const control::ControlError &e) {
    VB_LOG_DEBUG("the daemon does not answer (%s): devices left from before a reboot are looked for later", e.what());
    return -1;
  }
  std::unique_lock sweep(sweep_mutex_);
  std::vector<ListedDevice> devices;
  std::vector<MountEntry> mounts;
  try {
    devices = parse_device_list(control_text(options_.control_socket, "list", std::chrono::seconds(5)));
    mounts = read_mounts();
  } catch (const std::exception &e) {
    VB_LOG_DEBUG("the start-up sweep: %s: tried again later", e.what());
    return -1;
  }
  int removed = 0;
  for (const auto &d : devices) {
    if (!is_csi_device_name(d.name))
      continue;
    struct stat st {};
    if (::stat(volume_dir(d.name).c_str(), &st) == 0 || errno != ENOENT)
      continue; // staged by this plugin since the last boot (or unknown: keep it)
    const dev_t dev = d.node.empty() || block_serial(d.node) != d.name ? 0 : block_device_number(d.node);
    if (dev != 0) {
      std::string where = mounted_elsewhere(mounts, dev, d.node, "");
      if (where.empty())
        where = device_claimed(d.node);
      else
        where = std::string(d.node).append(" is mounted at ").append(where);
      if (!where.empty()) {
        VB_LOG_WARN("device %s has no state in %s but %s: kept", d.name.c_str(), options_.state_dir.c_str(),
                    where.c_str());
        continue;
      }
    }
    try {
      (void)control_text(options_.control_socket, "remove " + d.name, std::chrono::seconds(60));
      VB_LOG_INFO("device %s: no volume of this node's is staged on it since the host started: removed",
                  d.name.c_str());
      ++removed;
    } catch (const control::ControlError &e) {
      VB_LOG_WARN("device %s: left from before a reboot, but remove failed: %s", d.name.c_str(), e.what());
    }
  }
  return removed;
}

std::string NodeService::current_node(const std::string &device, const StagedVolume &staged) {
  // The recorded /dev/vdX may name another disk by now (the daemon started the device again and
  // the kernel gave the name to another one): believed only while its serial is this device's.
  if (block_serial(staged.device_node) == device)
    return staged.device_node;
  std::optional<ListedDevice> listed;
  try {
    listed =
        find_device(parse_device_list(control_text(options_.control_socket, "list", std::chrono::seconds(5))), device);
  } catch (const control::ControlError &e) {
    VB_LOG_WARN("%s: the recorded node %s is not its disk, and the daemon cannot be asked: %s", device.c_str(),
                staged.device_node.c_str(), e.what());
    return "";
  }
  if (!listed || listed->node.empty() || block_serial(listed->node) != device)
    return "";
  VB_LOG_INFO("%s: its disk is %s now (%s when staged)", device.c_str(), listed->node.c_str(),
              staged.device_node.c_str());
  StagedVolume moved = staged;
  moved.device_node = listed->node;
  write_file_atomically(volume_dir(device) + "/staged", format_staged_volume(moved), 0600);
  return listed->node;
}

Status NodeService::publish(const v1::NodePublishVolumeRequest &r) {
  if (Status s = check_path("target_path", r.target_path()); !s.ok())
    return s;
  if (Status s = check_path("staging_target_path", r.staging_target_path()); !s.ok())
    return s;
  if (Status s = check_capability(r.volume_capability(), r.has_volume_capability()); !s.ok())
    return s;
  const auto &cap = r.volume_capability();
  std::string fs_type;
  if (cap.has_mount())
    if (Status s = check_mount_capability(cap, fs_type); !s.ok())
      return s;
  const std::string device = device_name_for(r.volume_id());
  auto staged = load_staged_volume(volume_dir(device) + "/staged");
  if (!staged)
    return precondition("volume " + r.volume_id() + " is not staged on this node (NodeStageVolume first)");
  const std::string access = cap.has_block() ? "block" : "mount";
  if (staged->access != access)
    return precondition("volume " + r.volume_id() + " is staged for " + staged->access + " access, not " + access);
  const std::string node = current_node(device, *staged);
  const dev_t dev = node.empty() ? 0 : block_device_number(node);
  if (dev == 0)
    return precondition("volume " + r.volume_id() + ": its device " + device + " (" + staged->device_node +
                        " when staged) is gone (stage it again)");
  const bool read_only = r.readonly() || reader_mode(cap);
  const auto mounts = read_mounts();
  if (access == "mount") {
    auto sm = mount_at(mounts, staged->staging_path);
    if (!sm || !same_device(*sm, dev))
      return precondition("volume " + r.volume_id() + " is not mounted at its staging path " + staged->staging_path +
                          " (stage it again)");
  }
  if (auto m = mount_at(mounts, r.target_path())) {
    const bool ours = access == "mount" ? same_device(*m, dev) : target_is_device(r.target_path(), dev);
    if (!ours)
      return {StatusCode::ALREADY_EXISTS, "target_path " + r.target_path() + " has " + m->source + " mounted"};
    if (is_read_only(*m) != read_only)
      return {StatusCode::ALREADY_EXISTS, "target_path " + r.target_path() + " is published " +
                                              (is_read_only(*m) ? "read-only" : "read-write") + " already"};
    if (access == "block" && read_only) // a plugin killed after the bind mount: the flag may be missing
      set_block_read_only(node, true);
    return Status::OK;
  }
  if (access == "block") {
    // One disk, one read-only flag: every publish on this node read-only, or none.
    for (const auto &other : block_publishes(mounts, dev, node, r.target_path()))
      if (is_read_only(other) != read_only)
        return precondition("volume " + r.volume_id() + " is published " + (read_only ? "read-write" : "read-only") +
                            " at " + other.mount_point +
                            ": a block volume is read-only for all its pods on a node or for none");
  }
  const std::string parent = r.target_path().substr(0, r.target_path().rfind('/'));
  if (!parent.empty())
    make_dirs(parent, 0750);
  if (access == "mount") {
    if (::mkdir(r.target_path().c_str(), 0750) != 0 && errno != EEXIST)
      throw std::runtime_error(errno_message("mkdir " + r.target_path(), errno));
    bind_mount(staged->staging_path, r.target_path(), read_only);
  } else {
    int fd = ::open(r.target_path().c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (fd < 0)
      throw std::runtime_error(errno_message("create " + r.target_path(), errno));
    ::close(fd);
    // The flag first: a read-only publish is never writable, not even for a moment.
    set_block_read_only(node, read_only);
    bind_mount(node, r.target_path(), read_only);
  }
  return Status::OK;
}

Status NodeService::unpublish(const v1::NodeUnpublishVolumeRequest &r) {
  if (Status s = check_path("target_path", r.target_path()); !s.ok())
    return s;
  unmount_all(r.target_path());
  // kubelet expects the target gone: a directory (mount) or a file (block).
  if (::rmdir(r.target_path().c_str()) != 0 && errno == ENOTDIR)
    ::unlink(r.target_path().c_str());
  // The last publish of a block volume gone: its disk's read-only flag goes too.
  std::optional<StagedVolume> staged;
  try {
    staged = load_staged_volume(volume_dir(device_name_for(r.volume_id())) + "/staged");
  } catch (const std::exception &e) {
    VB_LOG_WARN("NodeUnpublishVolume %s: %s", r.volume_id().c_str(), e.what());
  }
  if (staged && staged->access == "block") {
    const std::string node = current_node(device_name_for(r.volume_id()), *staged);
    const dev_t dev = node.empty() ? 0 : block_device_number(node);
    if (dev != 0 && block_publishes(read_mounts(), dev, node, "").empty())
      set_block_read_only(node, false);
  }
  return Status::OK;
}

Status NodeService::NodeGetVolumeStats(grpc::ServerContext *, const v1::NodeGetVolumeStatsRequest *request,
                                       v1::NodeGetVolumeStatsResponse *out) {
  const auto &r = *request;
  if (Status s = check_volume_id(r.volume_id()); !s.ok())
    return s;
  if (Status s = check_path("volume_path", r.volume_path()); !s.ok())
    return s;
  try {
    const auto mounts = read_mounts();
    if (!mount_at(mounts, r.volume_path()))
      return {StatusCode::NOT_FOUND, "volume_path " + r.volume_path() + " is not a mounted volume"};
    struct stat st {};
    if (::stat(r.volume_path().c_str(), &st) != 0)
      return {StatusCode::NOT_FOUND, errno_message("volume_path " + r.volume_path(), errno)};
    if (S_ISBLK(st.st_mode)) {
      auto *u = out->add_usage();
      u->set_unit(v1::VolumeUsage::BYTES);
      u->set_total(static_cast<std::int64_t>(device_size(r.volume_path())));
    } else {
      struct statvfs vs {};
      if (::statvfs(r.volume_path().c_str(), &vs) != 0)
        return internal(errno_message("statvfs " + r.volume_path(), errno));
      auto *b = out->add_usage();
      b->set_unit(v1::VolumeUsage::BYTES);
      b->set_total(static_cast<std::int64_t>(vs.f_blocks * vs.f_frsize));
      b->set_available(static_cast<std::int64_t>(vs.f_bavail * vs.f_frsize));
      b->set_used(static_cast<std::int64_t>((vs.f_blocks - vs.f_bfree) * vs.f_frsize));
      auto *i = out->add_usage();
      i->set_unit(v1::VolumeUsage::INODES);
      i->set_total(static_cast<std::int64_t>(vs.f_files));
      i->set_available(static_cast<std::int64_t>(vs.f_favail));
      i->set_used(static_cast<std::int64_t>(vs.f_files - vs.f_ffree));
    }
    // The condition: the daemon's view of the device. Not serving, or reconnecting to its
    // server, is abnormal (I/O waits); the daemon not answering is too.
    auto *c = out->mutable_volume_condition();
    const std::string device = device_name_for(r.volume_id());
    try {
      auto listed = find_device(
          parse_device_list(control_text(options_.control_socket, "list", std::chrono::seconds(5))), device);
      if (!listed) {
        c->set_abnormal(true);
        c->set_message("vduse-bridge has no device " + device + " for this volume");
      } else if (listed->state != "serving") {
        c->set_abnormal(true);
        c->set_message("device " + device + " is " + listed->state + ": I/O waits until it serves again");
      } else {
        c->set_message("device " + device + " is serving");
      }
    } catch (const control::ControlError &e) {
      c->set_abnormal(true);
      c->set_message(std::string("the vduse-bridge daemon does not answer: ") + e.what());
    }
    return Status::OK;
  } catch (const std::exception &e) {
    return internal(e.what());
  }
}

Status NodeService::expand(const v1::NodeExpandVolumeRequest &r, v1::NodeExpandVolumeResponse *out) {
  if (Status s = check_path("volume_path", r.volume_path()); !s.ok())
    return s;
  auto staged = load_staged_volume(volume_dir(device_name_for(r.volume_id())) + "/staged");
  if (!staged)
    return {StatusCode::NOT_FOUND, "volume " + r.volume_id() + " is not staged on this node"};
  const std::string node = current_node(device_name_for(r.volume_id()), *staged);
  if (node.empty() || block_device_number(node) == 0)
    return {StatusCode::NOT_FOUND,
            "volume " + r.volume_id() + ": its device (" + staged->device_node + " when staged) is gone"};
  const std::int64_t required = r.has_capacity_range() ? r.capacity_range().required_bytes() : 0;
  const std::int64_t limit = r.has_capacity_range() ? r.capacity_range().limit_bytes() : 0;
  if (required < 0 || limit < 0 || (limit > 0 && required > limit))
    return invalid("capacity_range: expected 0 <= required_bytes <= limit_bytes");
  // The daemon follows the backend's size (resize-poll-interval for NBD, capacity data for iSCSI)
  // and the kernel then resizes the disk: give that a bounded while.
  const auto deadline = std::chrono::steady_clock::now() + options_.stage_timeout;
  std::uint64_t size = device_size(node);
  while (static_cast<std::int64_t>(size) < required && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    size = device_size(node);
  }
  if (static_cast<std::int64_t>(size) < required)
    return {StatusCode::OUT_OF_RANGE, "the disk of volume " + r.volume_id() + " holds " + std::to_string(size) +
                                          " bytes, fewer than the " + std::to_string(required) +
                                          " asked: resize the remote LUN or export first"};
  if (staged->access == "mount")
    grow_filesystem(node, staged->staging_path, staged->fs_type);
  out->set_capacity_bytes(static_cast<std::int64_t>(size));
  return Status::OK;
}

Status NodeService::NodeGetCapabilities(grpc::ServerContext *, const v1::NodeGetCapabilitiesRequest *,
                                        v1::NodeGetCapabilitiesResponse *out) {
  for (auto t : {v1::NodeServiceCapability::RPC::STAGE_UNSTAGE_VOLUME, v1::NodeServiceCapability::RPC::GET_VOLUME_STATS,
                 v1::NodeServiceCapability::RPC::EXPAND_VOLUME, v1::NodeServiceCapability::RPC::VOLUME_CONDITION})
    out->add_capabilities()->mutable_rpc()->set_type(t);
  return Status::OK;
}

Status NodeService::NodeGetInfo(grpc::ServerContext *, const v1::NodeGetInfoRequest *, v1::NodeGetInfoResponse *out) {
  out->set_node_id(options_.node_id);
  return Status::OK;
}

} // namespace vb::csi
