// A real tgtd iSCSI target on a private port, reached with libiscsi: proves the harness
// the iSCSI backend's tests stand on (start, configure, readiness, clean-up by PID).
#include "test_support.h"

#include <doctest/doctest.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include <cstring>
#include <memory>
#include <vector>

namespace {

struct IscsiDeleter {
  void operator()(iscsi_context *c) const {
    iscsi_logout_sync(c);
    iscsi_destroy_context(c);
  }
};
struct TaskDeleter {
  void operator()(scsi_task *t) const { scsi_free_scsi_task(t); }
};
using Task = std::unique_ptr<scsi_task, TaskDeleter>;

} // namespace

TEST_CASE("tgtd LUN: capacity, write and read back through libiscsi") {
  if (!vb::test::find_program("tgtd") || !vb::test::find_program("tgtadm"))
    VB_SKIP("tgtd/tgtadm not installed (package tgt; scripts/install-deps installs it)");
  vb::test::TempDir dir;
  vb::test::TgtdServer tgt(dir);
  for (unsigned block_size : {512u, 4096u}) {
    CAPTURE(block_size);
    const int lun = block_size == 512 ? 1 : 2;
    tgt.add_lun(lun, 16 << 20, block_size);

    std::unique_ptr<iscsi_context, IscsiDeleter> ctx(iscsi_create_context("iqn.2026-11.org.vduse-bridge.test:init"));
    REQUIRE(ctx);
    iscsi_set_session_type(ctx.get(), ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(ctx.get(), ISCSI_HEADER_DIGEST_NONE);
    REQUIRE(iscsi_set_targetname(ctx.get(), tgt.iqn().c_str()) == 0);
    REQUIRE_MESSAGE(iscsi_full_connect_sync(ctx.get(), tgt.portal().c_str(), lun) == 0, iscsi_get_error(ctx.get()));

    Task cap(iscsi_readcapacity16_sync(ctx.get(), lun));
    REQUIRE(cap);
    REQUIRE(cap->status == SCSI_STATUS_GOOD);
    auto *rc16 = static_cast<scsi_readcapacity16 *>(scsi_datain_unmarshall(cap.get()));
    REQUIRE(rc16);
    CHECK(rc16->block_length == block_size);
    CHECK((rc16->returned_lba + 1) * block_size == 16 << 20);

    std::vector<unsigned char> out(8 * block_size), in(out.size());
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = static_cast<unsigned char>(i * 7 + block_size);
    Task w(iscsi_write16_sync(ctx.get(), lun, 3, out.data(), static_cast<uint32_t>(out.size()), block_size, 0, 0, 0, 0,
                              0));
    REQUIRE(w);
    CHECK(w->status == SCSI_STATUS_GOOD);
    Task r(iscsi_read16_sync(ctx.get(), lun, 3, static_cast<uint32_t>(in.size()), block_size, 0, 0, 0, 0, 0));
    REQUIRE(r);
    REQUIRE(r->status == SCSI_STATUS_GOOD);
    REQUIRE(r->datain.size == static_cast<int>(in.size()));
    std::memcpy(in.data(), r->datain.data, in.size());
    CHECK(in == out);
  }
}
