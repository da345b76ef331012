// The CSI Identity and Node services: kubelet's calls become requests to the host's daemon (over
// its control socket), filesystems and mounts. The plugin keeps nothing in memory that matters:
// what a call needs is read again from the state directory, the mount table and the daemon, so
// a plugin killed at any point and started again carries on (every call is idempotent).
//
// Threading: gRPC runs calls on its own threads; calls for one volume are serialised by a
// per-volume claim (a second concurrent call gets ABORTED), calls for different volumes run at once.
#pragma once

#include "csi.grpc.pb.h"
#include "csi/csi_options.h"
#include "csi/volume_state.h"

#include <chrono>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>

namespace vb::csi {

inline constexpr const char *kDriverName = "blk.vduse-bridge.org";

class IdentityService final : public ::csi::v1::Identity::Service {
public:
  explicit IdentityService(const CsiOptions &options) : options_(options) {}
  grpc::Status GetPluginInfo(grpc::ServerContext *, const ::csi::v1::GetPluginInfoRequest *,
                             ::csi::v1::GetPluginInfoResponse *) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext *, const ::csi::v1::GetPluginCapabilitiesRequest *,
                                     ::csi::v1::GetPluginCapabilitiesResponse *) override;
  grpc::Status Probe(grpc::ServerContext *, const ::csi::v1::ProbeRequest *, ::csi::v1::ProbeResponse *) override;

private:
  const CsiOptions &options_;
};

class NodeService final : public ::csi::v1::Node::Service {
public:
  explicit NodeService(const CsiOptions &options) : options_(options) {}
  grpc::Status NodeStageVolume(grpc::ServerContext *, const ::csi::v1::NodeStageVolumeRequest *,
                               ::csi::v1::NodeStageVolumeResponse *) override;
  grpc::Status NodeUnstageVolume(grpc::ServerContext *, const ::csi::v1::NodeUnstageVolumeRequest *,
                                 ::csi::v1::NodeUnstageVolumeResponse *) override;
  grpc::Status NodePublishVolume(grpc::ServerContext *, const ::csi::v1::NodePublishVolumeRequest *,
                                 ::csi::v1::NodePublishVolumeResponse *) override;
  grpc::Status NodeUnpublishVolume(grpc::ServerContext *, const ::csi::v1::NodeUnpublishVolumeRequest *,
                                   ::csi::v1::NodeUnpublishVolumeResponse *) override;
  grpc::Status NodeGetVolumeStats(grpc::ServerContext *, const ::csi::v1::NodeGetVolumeStatsRequest *,
                                  ::csi::v1::NodeGetVolumeStatsResponse *) override;
  grpc::Status NodeExpandVolume(grpc::ServerContext *, const ::csi::v1::NodeExpandVolumeRequest *,
                                ::csi::v1::NodeExpandVolumeResponse *) override;
  grpc::Status NodeGetCapabilities(grpc::ServerContext *, const ::csi::v1::NodeGetCapabilitiesRequest *,
                                   ::csi::v1::NodeGetCapabilitiesResponse *) override;
  grpc::Status NodeGetInfo(grpc::ServerContext *, const ::csi::v1::NodeGetInfoRequest *,
                           ::csi::v1::NodeGetInfoResponse *) override;

  // The start-up sweep, run from a thread until the daemon answers once. A csi- device of the
  // daemon's whose state directory is gone was staged before the host's /run was emptied (a
  // reboot: the daemon restarted it from its drop-in) and nothing here will ever unstage it: it is
  // removed unless its disk is mounted somewhere. Calls wait while it runs. Returns how many were
  // removed, or -1 if the daemon did not answer (then nothing is changed: try again later).
  int remove_stale_devices();

  // Held for the length of one call on a volume.
  class Claim {
  public:
    Claim(NodeService &s, std::string volume_id);
    ~Claim();
    Claim(const Claim &) = delete;
    Claim &operator=(const Claim &) = delete;
    bool held() const noexcept { return held_; }

  private:
    NodeService &service_;
    std::string volume_id_;
    bool held_ = false;
  };

private:
  grpc::Status stage(const ::csi::v1::NodeStageVolumeRequest &r);
  grpc::Status unstage(const ::csi::v1::NodeUnstageVolumeRequest &r);
  grpc::Status publish(const ::csi::v1::NodePublishVolumeRequest &r);
  grpc::Status unpublish(const ::csi::v1::NodeUnpublishVolumeRequest &r);
  grpc::Status expand(const ::csi::v1::NodeExpandVolumeRequest &r, ::csi::v1::NodeExpandVolumeResponse *out);
  std::string volume_dir(const std::string &device) const { return options_.state_dir + "/" + device; }
  // The staged volume's disk now, checked by its serial (the daemon asked if the recorded node
  // names another disk; the record is corrected); "" if it has none.
  std::string current_node(const std::string &device, const StagedVolume &staged);
  std::shared_mutex sweep_mutex_; // shared by calls, exclusive for the start-up sweep

  const CsiOptions &options_;
  std::mutex mutex_;
  std::set<std::string> busy_; // volume ids with a call running
};

} // namespace vb::csi
