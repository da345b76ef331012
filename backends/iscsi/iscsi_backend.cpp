#include "iscsi/iscsi_backend.h"

#include "common/log.h"
#include "common/units.h"
#include "iscsi/iscsi_discovery.h"
#include "iscsi/iscsi_fencing.h"
#include "iscsi/iscsi_multipath.h"
#include "iscsi/iscsi_session.h"

#include <chrono>
#include <iscsi/iscsi.h>
#include <stdexcept>

namespace vb {

IscsiBackend::IscsiBackend(IscsiOptions options) : target_(std::make_shared<IscsiTarget>()) {
  target_->options = std::move(options);
  target_->size.set_handler([this](std::uint64_t bytes) { report_resize(bytes); });
  target_->sessions.set_sink([this](State state, const std::string &why) { report_health(state, why); });
}

IscsiBackend::~IscsiBackend() {
  target_->size.set_handler(nullptr); // a session that outlives the backend reports to nobody
  target_->sessions.set_sink(nullptr);
  if (first_)
    iscsi_destroy_context(first_);
}

void IscsiBackend::connect() {
  IscsiTarget &t = *target_;
  t.uri = parse_iscsi_uri(t.options.uri);
  t.name = describe_lun(t.uri);
  std::vector<std::string> portals{t.uri.portal};
  if (t.options.discover_portals)
    portals = discover_target_portals(t.options, t.uri, IscsiOptions::kMaxPaths);
  else
    portals.insert(portals.end(), t.options.portals.begin(), t.options.portals.end());
  t.paths.clear();
  for (const std::string &portal : portals) {
    IscsiUri path = t.uri;
    path.portal = portal;
    t.paths.push_back(path);
  }
  t.path_book.init(t.paths);
  // The first path that logs in tells what the LUN is; every other path must show the same.
  std::string failures;
  for (unsigned p = 0; p < t.paths.size() && !first_; ++p) {
    iscsi_context *ctx = make_iscsi_context(t.options, t.paths[p], session_number(0, p)); // queue 0's session
    try {
      t.lun = login_and_probe(ctx, t.paths[p], t.options, [this] { return open_cancelled(); });
      derive_capabilities(t);
      if (t.options.fencing == IscsiOptions::Fencing::persistent_reservation) {
        // The device's first login fences whatever this host left registered on the LUN (a
        // daemon that died, a queue or path no longer configured), then each session its slot.
        const PrJoined joined =
            pr_join_blocking(ctx, t.paths[p].lun,
                             PrSlot{pr_owner(t.options, t.paths[p]), static_cast<std::uint16_t>(session_number(0, p))},
                             static_cast<std::uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count()),
                             setup_bound_seconds(t.options), [this] { return open_cancelled(); });
        first_key_ = joined.key;
        if (joined.preempted > 0)
          VB_LOG_INFO("iscsi: %s: fenced %zu earlier registration(s) of this host (persistent-reservation keys "
                      "preempted)",
                      t.name.c_str(), joined.preempted);
      }
      first_ = ctx;
      first_path_ = p;
    } catch (const std::exception &e) {
      iscsi_destroy_context(ctx);
      if (t.paths.size() == 1 || open_cancelled())
        throw;
      failures += (failures.empty() ? "" : "; ") + t.paths[p].portal + ": " + e.what();
    }
  }
  if (!first_)
    throw std::runtime_error("no path to " + t.name + " logs in (" + failures + ")");
  if (t.paths.size() > 1)
    VB_LOG_INFO("iscsi: %s: %zu paths, policy %s%s", t.name.c_str(), t.paths.size(),
                t.options.path_policy == IscsiOptions::PathPolicy::failover ? "failover" : "round-robin",
                failures.empty() ? "" : (", not logged in yet: " + failures).c_str());
  const BackendCapabilities &c = t.caps;
  VB_LOG_INFO("iscsi: %s (%s): %s, %u-byte blocks (%u physical), max command %s%s%s%s%s", t.name.c_str(),
              c.identity.c_str(), format_size(c.size).c_str(), c.logical_block_size, c.physical_block_size,
              format_size(t.max_rw_bytes).c_str(), c.read_only ? ", read-only" : "", c.can_flush ? ", flush" : "",
              c.can_discard ? ", unmap" : "",
              c.can_write_zeroes ? (c.can_zero_unmap ? ", write same (unmap)" : ", write same") : "");
}

std::vector<BackendPathStatus> IscsiBackend::paths() const {
  if (target_->paths.size() < 2)
    return {};
  return target_->path_book.snapshot();
}

std::unique_ptr<BackendQueue> IscsiBackend::open_queue(EventLoop &loop, unsigned index) {
  if (target_->caps.size == 0)
    throw std::logic_error("iscsi: open_queue() before open()");
  iscsi_context *ctx = nullptr;
  {
    std::lock_guard lock(mu_);
    if (index == 0) {
      ctx = first_;
      first_ = nullptr;
    }
  }
  try {
    std::string name = target_->name + " q" + std::to_string(index);
    if (target_->paths.size() > 1)
      return std::make_unique<IscsiPathSet>(loop, target_, ctx, first_path_, ctx ? first_key_ : 0, index,
                                            std::move(name));
    auto session = std::make_unique<IscsiSession>(loop, target_, ctx, index, std::move(name));
    if (ctx)
      session->set_pr_key(first_key_);
    return session;
  } catch (...) {
    if (ctx)
      iscsi_destroy_context(ctx);
    throw;
  }
}

} // namespace vb
