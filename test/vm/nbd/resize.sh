#!/usr/bin/env bash
# The export changes size under a live disk: nbdkit's file plugin serves an image in tmpfs; the
# image is grown (then shrunk) and nbdkit restarted. The daemon reconnects, sees the new size,
# updates the capacity (VDUSE_DEV_SET_CONFIG + config interrupt) and the kernel's disk follows:
# /sys/block/vdX/size changes, the new space is readable and writable, the old data is intact.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"

sock=$work/nbd.sock
uri=$(nbd_unix_uri "$sock")
img=$work/disk.img
nbd_config "$work/resize.yaml" vbnbdsz0 "$uri" "backend.reconnect-timeout: 60s"
require_nbd_backend "$work/resize.yaml"
truncate -s 64M "$img"
start_server() {
  rm -f "$sock"
  nbdkit_start srv -U "$sock" file file="$img"
}
start_server
start_daemon "$work/resize.yaml" vbnbdsz0
dname=$(disk_of vbnbdsz0)
disk=/dev/$dname
sectors() { cat "/sys/block/$dname/size"; }
[ "$(sectors)" -eq $((64 << 11)) ] || fail "$disk has $(sectors) sectors, expected $((64 << 11))"
head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=10 oflag=direct status=none || fail "write before the resize failed"
echo "ok: $disk is 64 MiB, 1 MiB written at 10 MiB"

# --- grow ------------------------------------------------------------------------------------
nbdkit_kill srv
truncate -s 96M "$img"
start_server
grown() { [ "$(sectors)" -eq $((96 << 11)) ]; }
wait_for 30 "$disk to grow to 96 MiB after the server came back bigger" grown
echo "ok: $disk grew to 96 MiB ($(sectors) sectors) without a restart"
dd if="$work/pattern" of="$disk" bs=1M seek=90 oflag=direct status=none || fail "write to the new space failed"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=90 count=1 status=none) || fail "the new space does not hold the write"
cmp "$work/pattern" <(dd if="$disk" bs=1M skip=10 count=1 iflag=direct status=none) ||
  fail "data written before the resize changed"
echo "ok: the new space is writable and the old data intact"
grep -Eiq "size changed" "$daemon_log" || fail "the daemon log does not mention the resize"
echo "ok: daemon log: $(grep -Ei "size changed" "$daemon_log" | tail -n 1)"

# --- shrink ----------------------------------------------------------------------------------
nbdkit_kill srv
truncate -s 32M "$img"
start_server
shrunk() { [ "$(sectors)" -eq $((32 << 11)) ]; }
wait_for 30 "$disk to shrink to 32 MiB" shrunk
echo "ok: $disk shrank to 32 MiB"
if timeout -k 5 30 dd if="$disk" of=/dev/null bs=4k count=1 skip=$((40 << 8)) iflag=direct status=none 2>/dev/null; then
  fail "a read past the new end succeeded"
fi
cmp "$work/pattern" <(dd if="$disk" bs=1M skip=10 count=1 iflag=direct status=none) ||
  fail "data inside the shrunk disk changed"
echo "ok: reads past the new end fail, data inside is intact"
daemon_alive || fail "the daemon died"
stop_daemon
nbdkit_kill srv
