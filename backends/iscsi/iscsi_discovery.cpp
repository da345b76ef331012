#include "iscsi/iscsi_discovery.h"

#include "common/units.h"

#include <algorithm>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <memory>
#include <stdexcept>

namespace vb {
namespace {

struct ContextClose {
  void operator()(iscsi_context *ctx) const noexcept {
    if (iscsi_is_logged_in(ctx))
      iscsi_logout_sync(ctx);
    iscsi_destroy_context(ctx);
  }
};
using ContextPtr = std::unique_ptr<iscsi_context, ContextClose>;

struct TaskFree {
  void operator()(scsi_task *t) const noexcept { scsi_free_scsi_task(t); }
};
using TaskPtr = std::unique_ptr<scsi_task, TaskFree>;

int timeout_seconds(const IscsiOptions &options) {
  const long long ms = options.request_timeout.count();
  return ms > 0 ? static_cast<int>(std::min<long long>((ms + 999) / 1000, 3600)) : 30;
}

ContextPtr log_in(const IscsiOptions &options, const IscsiUri &uri) {
  ContextPtr ctx(make_iscsi_context(options, uri));
  iscsi_set_timeout(ctx.get(), timeout_seconds(options));
  if (iscsi_connect_sync(ctx.get(), uri.portal.c_str()) != 0)
    throw std::runtime_error("cannot connect to " + uri.portal + ": " + iscsi_error(ctx.get()));
  if (iscsi_login_sync(ctx.get()) != 0)
    throw std::runtime_error("cannot log in to " + (uri.target.empty() ? uri.portal : uri.target) + ": " +
                             iscsi_error(ctx.get()));
  return ctx;
}

// Runs a synchronous command again while it fails with UNIT ATTENTION: a plain login (no TEST
// UNIT READY, unlike a full connect) leaves the target's "bus reset" attention to the first one.
template <typename Command> TaskPtr without_attention(Command command) {
  TaskPtr task(command());
  for (int i = 0;
       i < 8 && task && task->status == SCSI_STATUS_CHECK_CONDITION && task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
       ++i)
    task.reset(command());
  return task;
}

void describe(iscsi_context *ctx, IscsiDiscoveredLun &l) {
  TaskPtr inquiry = without_attention([&] { return iscsi_inquiry_sync(ctx, l.lun, 0, 0, 255); });
  const auto *std_inq = inquiry && inquiry->status == SCSI_STATUS_GOOD
                            ? static_cast<const scsi_inquiry_standard *>(scsi_datain_unmarshall(inquiry.get()))
                            : nullptr;
  if (!std_inq) {
    l.error = std::string("INQUIRY failed: ") + (inquiry ? describe_sense(inquiry->sense) : iscsi_error(ctx));
    return;
  }
  const char *type = scsi_devtype_to_str(std_inq->device_type);
  l.type = type ? type : "unknown";
  l.disk = std_inq->device_type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS;
  if (!l.disk)
    return;
  TaskPtr capacity = without_attention([&] { return iscsi_readcapacity16_sync(ctx, l.lun); });
  LunInfo info;
  if (!parse_read_capacity16(capacity.get(), info)) {
    l.error =
        std::string("READ CAPACITY(16) failed: ") + (capacity ? describe_sense(capacity->sense) : iscsi_error(ctx));
    return;
  }
  l.size = info.blocks * info.block_size;
  l.block_size = info.block_size;
}

// SendTargets on portal (host:port): the targets and their portals as the target lists them.
std::vector<IscsiDiscoveredTarget> send_targets(const IscsiOptions &options, const std::string &portal) {
  IscsiUri uri;
  uri.portal = portal;
  std::vector<IscsiDiscoveredTarget> out;
  ContextPtr ctx = log_in(options, uri); // a discovery session: no target name
  iscsi_discovery_address *found = iscsi_discovery_sync(ctx.get());
  if (!found)
    throw std::runtime_error("SendTargets discovery on " + portal + " failed: " + iscsi_error(ctx.get()));
  for (const iscsi_discovery_address *a = found; a; a = a->next) {
    IscsiDiscoveredTarget t;
    t.name = a->target_name ? a->target_name : "";
    for (const iscsi_target_portal *p = a->portals; p; p = p->next)
      if (p->portal)
        t.portals.emplace_back(p->portal);
    out.push_back(std::move(t));
  }
  iscsi_free_discovery_data(ctx.get(), found);
  return out;
}

} // namespace

std::vector<std::string> discover_target_portals(const IscsiOptions &options, const IscsiUri &uri, std::size_t most) {
  std::vector<std::string> out{uri.portal};
  for (const IscsiDiscoveredTarget &t : send_targets(options, uri.portal)) {
    if (t.name != uri.target)
      continue;
    for (const std::string &listed : t.portals) {
      // "host:port,tpgt" from the target: kept only if it reads as a portal.
      const std::string address = listed.substr(0, listed.rfind(','));
      std::string portal;
      try {
        portal = parse_iscsi_portal_uri("iscsi://" + address);
      } catch (const std::invalid_argument &) {
        continue;
      }
      if (std::find(out.begin(), out.end(), portal) == out.end() && out.size() < most)
        out.push_back(portal);
    }
  }
  return out;
}

std::vector<IscsiDiscoveredTarget> discover_iscsi(const std::string &portal_uri, const IscsiOptions &options) {
  IscsiUri portal;
  portal.portal = parse_iscsi_portal_uri(portal_uri);
  std::vector<IscsiDiscoveredTarget> out = send_targets(options, portal.portal);
  for (IscsiDiscoveredTarget &t : out) {
    IscsiUri uri = portal;
    uri.target = t.name;
    try {
      ContextPtr ctx = log_in(options, uri);
      TaskPtr report = without_attention([&] { return iscsi_reportluns_sync(ctx.get(), 0, 16384); });
      const auto *list = report && report->status == SCSI_STATUS_GOOD
                             ? static_cast<const scsi_reportluns_list *>(scsi_datain_unmarshall(report.get()))
                             : nullptr;
      if (!list) {
        t.error =
            std::string("REPORT LUNS failed: ") + (report ? describe_sense(report->sense) : iscsi_error(ctx.get()));
        continue;
      }
      for (std::uint32_t i = 0; i < list->num; ++i) {
        IscsiDiscoveredLun l;
        l.lun = list->luns[i];
        uri.lun = l.lun;
        l.uri = describe_lun(uri);
        describe(ctx.get(), l);
        t.luns.push_back(std::move(l));
      }
    } catch (const std::exception &e) {
      t.error = e.what();
    }
  }
  return out;
}

std::string discover_iscsi_text(const std::string &portal_uri, const IscsiOptions &options) {
  if (!options.chap_username.empty())
    (void)read_secret_file(options.chap_password_file, "CHAP secret");
  const auto targets = discover_iscsi(portal_uri, options);
  if (targets.empty())
    return portal_uri + ": no targets\n";
  return format_discovery(targets);
}

std::string format_discovery(const std::vector<IscsiDiscoveredTarget> &targets) {
  std::string out;
  for (const IscsiDiscoveredTarget &t : targets) {
    if (!t.error.empty()) {
      out += t.name + ": " + t.error + "\n";
      continue;
    }
    if (t.luns.empty())
      out += t.name + ": no LUNs\n";
    for (const IscsiDiscoveredLun &l : t.luns) {
      out += l.uri;
      if (!l.error.empty())
        out += "  " + l.error;
      else if (l.disk)
        out += "  disk, " + format_size(l.size) + ", " + std::to_string(l.block_size) + "-byte blocks";
      else
        out += "  " + l.type + " (not a disk)";
      out += "\n";
    }
  }
  return out;
}

} // namespace vb
