// The iSCSI backend (libiscsi): one LUN of an iSCSI target as a virtio-blk disk. The LUN's
// READ CAPACITY(16), VPD pages (Block Limits, Logical Block Provisioning, Device Identification)
// and MODE SENSE decide what the disk offers; each queue has its own session on its own loop
// (see iscsi_session.h), which survives the target going away. A capacity the LUN reports anew
// (CAPACITY DATA HAS CHANGED, or after a reconnection) is a resize, reported once per change.
#pragma once

#include "iscsi/iscsi_target.h"
#include "vduse-bridge/backend.h"

#include <memory>
#include <mutex>

struct iscsi_context;

namespace vb {

class IscsiBackend final : public Backend {
public:
  explicit IscsiBackend(IscsiOptions options);
  ~IscsiBackend() override;
  IscsiBackend(const IscsiBackend &) = delete;
  IscsiBackend &operator=(const IscsiBackend &) = delete;

  const BackendCapabilities &capabilities() const override { return target_->caps; }
  // Each queue gets its own session (queue 0 the one open() made; the others log in in the
  // background on their own loop). Called on that loop's thread.
  std::unique_ptr<BackendQueue> open_queue(EventLoop &loop, unsigned index) override;
  const char *kind() const noexcept override { return "iscsi"; }
  // Multipath: each path's sessions, failovers and last error (empty with one path).
  std::vector<BackendPathStatus> paths() const override;

  // What open() learnt; valid after open().
  const LunInfo &lun() const noexcept { return target_->lun; }
  // The LUN's size now, in bytes (it changes on resize).
  std::uint64_t current_size() const noexcept { return target_->size.get(); }

private:
  // Logs in once (blocking) to learn the LUN; that session becomes queue 0's. Throws with a
  // message: bad URI, unreadable password file, login refused (CHAP), not a disk...
  void connect() override;
  std::shared_ptr<IscsiTarget> target_;
  std::mutex mu_;
  iscsi_context *first_ = nullptr; // logged in by open(), adopted by queue 0
  unsigned first_path_ = 0;        // on which of the paths
  std::uint64_t first_key_ = 0;    // its persistent-reservation key (fencing), 0: none
};

} // namespace vb
