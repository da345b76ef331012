#!/usr/bin/env bash
# vduse-bridge-csi against the real daemon, kernel, nbdkit and tgtd: a gRPC client (Python's
# grpcio) plays kubelet through stage/publish/unpublish/unstage of filesystem and block volumes,
# the plugin and the daemon SIGKILLed midway, CHAP secrets, bad attributes, late storage and an
# online expansion. The steps are in node_plugin.py; this script starts tgtd and cleans up.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"
source "$(dirname "$0")/../lib/iscsi.sh"

PLUGIN=$BUILD_DIR/src/csi/vduse-bridge-csi
[ -x "$PLUGIN" ] || fail "no plugin binary at $PLUGIN (build first)"
/usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null ||
  skip "python3-grpcio or python3-grpc-tools not installed (scripts/install-deps)"
for tool in mkfs.ext4 blkid resize2fs mount; do
  command -v "$tool" >/dev/null || skip "$tool not installed"
done

# The processes node_plugin.py starts (the daemon, nbdkit, the plugin) write their PIDs to
# $work/pids/NAME: if it dies without its own clean-up, these go here, mounts first.
csi_cleanup() {
  local m f pid
  # Deepest first: a bind mount of a staging mount goes before it.
  while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done < <(
    awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for f in plugin daemon nbdkit; do
    [ -f "$work/pids/$f" ] || continue
    pid=$(cat "$work/pids/$f")
    alive "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 60 || kill -KILL "$pid" 2>/dev/null || true
  done
}
on_cleanup csi_cleanup

tgtd_start
truncate -s 64M "$work/lun1.img"
tgt_lun_add 1 "$work/lun1.img"
# CHAP: the target admits only this account.
tgtadm_ --mode account --op new --user csi-user --password csi-secret-0123 >>"$work/tgtadm.log" 2>&1 ||
  fail "tgtadm: cannot create the CHAP account: $(tail -n 3 "$work/tgtadm.log")"
tgtadm_ --mode account --op bind --tid 1 --user csi-user >>"$work/tgtadm.log" 2>&1 ||
  fail "tgtadm: cannot bind the CHAP account: $(tail -n 3 "$work/tgtadm.log")"

mkdir -p "$work/pids"
rc=0
/usr/bin/python3 "$(dirname "$0")/node_plugin.py" "$work" "$DAEMON" "$PLUGIN" "$(iscsi_uri 1)" || rc=$?
[ "$rc" -ne 77 ] || skip "node_plugin.py skipped"
[ "$rc" -eq 0 ] || fail "node_plugin.py failed (exit $rc)"
echo "ok: the CSI node plugin's steps all passed"
