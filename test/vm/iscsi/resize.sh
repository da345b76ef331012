#!/usr/bin/env bash
# The LUN changes size under a live disk: its backing file (tmpfs) grows, then shrinks, each time
# with tgtd restarted (tgtd reads a LUN's size when the LUN is made, and never announces a change
# with CAPACITY DATA HAS CHANGED). The sessions log in again, find the same LUN (identity, block
# size) with another size, and the daemon resizes the disk: /sys/block/vdX/size follows, the new
# space is writable, data is intact, reads past a shrunk end fail.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"

img=$work/lun1.img
tgtd_start
truncate -s 64M "$img"
tgt_lun_add 1 "$img"
iscsi_config "$work/c.yaml" vbiscsisz0 "$(iscsi_uri 1)" "queues: 2" "backend.reconnect-timeout: 60s"
require_iscsi_backend "$work/c.yaml"
start_daemon "$work/c.yaml" vbiscsisz0
dname=$(disk_of vbiscsisz0)
disk=/dev/$dname
sectors() { cat "/sys/block/$dname/size"; }
[ "$(sectors)" -eq $((64 << 11)) ] || fail "$disk has $(sectors) sectors, expected $((64 << 11))"
head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=10 oflag=direct status=none || fail "write before the resize failed"
echo "ok: $disk is 64 MiB, 1 MiB written at 10 MiB"

# --- grow --------------------------------------------------------------------------------------
tgtd_kill KILL
truncate -s 96M "$img"
tgtd_start
grown() { [ "$(sectors)" -eq $((96 << 11)) ]; }
wait_for 60 "$disk to grow to 96 MiB after the LUN came back bigger" grown
echo "ok: $disk grew to 96 MiB ($(sectors) sectors) without a restart"
dd if="$work/pattern" of="$disk" bs=1M seek=90 oflag=direct status=none || fail "write to the new space failed"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=90 count=1 status=none) || fail "the new space does not hold the write"
cmp "$work/pattern" <(dd if="$disk" bs=1M skip=10 count=1 iflag=direct status=none) ||
  fail "data written before the resize changed"
echo "ok: the new space is writable and the old data intact"
grep -Eiq "size changed" "$daemon_log" || fail "the daemon log does not mention the resize"
echo "ok: daemon log: $(grep -Ei "size changed" "$daemon_log" | tail -n 1 | cut -c1-200)"

# --- shrink ------------------------------------------------------------------------------------
tgtd_kill KILL
truncate -s 32M "$img"
tgtd_start
shrunk() { [ "$(sectors)" -eq $((32 << 11)) ]; }
wait_for 60 "$disk to shrink to 32 MiB" shrunk
echo "ok: $disk shrank to 32 MiB"
if timeout -k 5 30 dd if="$disk" of=/dev/null bs=4k count=1 skip=$((40 << 8)) iflag=direct status=none 2>/dev/null; then
  fail "a read past the new end succeeded"
fi
cmp "$work/pattern" <(dd if="$disk" bs=1M skip=10 count=1 iflag=direct status=none) ||
  fail "data inside the shrunk disk changed"
echo "ok: reads past the new end fail, data inside is intact"
daemon_alive || fail "the daemon died"
stop_daemon
