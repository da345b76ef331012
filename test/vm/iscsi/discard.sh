#!/usr/bin/env bash
# Discard and write-zeroes through the iscsi backend, as the LUN says (tgtd in the guest, LUNs on
# tmpfs). A thin-provisioned LUN (thin_provisioning=1: UNMAP, WRITE SAME with UNMAP, LBPRZ) offers
# both: blkdiscard (UNMAP) and fallocate --punch-hole (WRITE SAME with UNMAP) read back zeros and
# free the backing file's space; blkdiscard -z (WRITE SAME, no unmap) reads back zeros; data
# around the ranges is intact. A fully provisioned LUN offers neither and blkdiscard fails.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v blkdiscard >/dev/null || skip "blkdiscard not installed (util-linux)"

thin=$work/thin.img full=$work/full.img
tgtd_start
truncate -s 64M "$thin" "$full"
tgt_lun_add 1 "$thin" 512 thin_provisioning=1
tgt_lun_add 2 "$full"
echo "ok: tgtd (pid $tgtd_pid) on 127.0.0.1:$tgtd_port: LUN 1 thin-provisioned, LUN 2 not, 64 MiB each on tmpfs"
iscsi_config "$work/thin.yaml" vbiscsidisc0 "$(iscsi_uri 1)" "backend.reconnect-timeout: 60s"
iscsi_config "$work/full.yaml" vbiscsidisc1 "$(iscsi_uri 2)" "backend.reconnect-timeout: 60s"
require_iscsi_backend "$work/thin.yaml"

allocated() { echo $(($(stat -c %b "$1") * 512)); } # bytes the file holds in tmpfs
MiB=$((1 << 20))

# --- thin-provisioned LUN ---------------------------------------------------------------------
start_daemon "$work/thin.yaml" vbiscsidisc0
disk=/dev/$(disk_of vbiscsidisc0)
q=/sys/block/${disk#/dev/}/queue
[ "$(cat "$q/discard_max_bytes")" -gt 0 ] || fail "$disk: discard not offered for a thin-provisioned LUN"
[ "$(cat "$q/write_zeroes_max_bytes")" -gt 0 ] || fail "$disk: write-zeroes not offered for a thin-provisioned LUN"
echo "ok: $disk offers discard (max $(cat "$q/discard_max_bytes")) and write-zeroes (max $(cat "$q/write_zeroes_max_bytes"))"

head -c $((8 * MiB)) /dev/urandom >"$work/data"
dd if="$work/data" of="$disk" bs=1M oflag=direct status=none || fail "writing 8 MiB failed"
sync "$disk"
cp "$work/data" "$work/expect"
a0=$(allocated "$thin")
[ "$a0" -ge $((8 * MiB)) ] || fail "the backing file holds only $a0 bytes after 8 MiB were written"

blkdiscard -o $((1 * MiB)) -l $((2 * MiB)) "$disk" || fail "blkdiscard failed"
dd if=/dev/zero of="$work/expect" bs=1M seek=1 count=2 conv=notrunc status=none
a1=$(allocated "$thin")
[ $((a0 - a1)) -ge $((2 * MiB)) ] || fail "blkdiscard of 2 MiB freed only $((a0 - a1)) bytes of the backing file"
echo "ok: blkdiscard (UNMAP) of 2 MiB freed $((a0 - a1)) bytes of the backing file"

if fallocate --punch-hole -o $((4 * MiB)) -l $((1 * MiB)) "$disk" 2>"$work/fallocate.err"; then
  dd if=/dev/zero of="$work/expect" bs=1M seek=4 count=1 conv=notrunc status=none
  a2=$(allocated "$thin")
  [ $((a1 - a2)) -ge $((1 * MiB)) ] ||
    fail "fallocate --punch-hole (write-zeroes with unmap) of 1 MiB freed only $((a1 - a2)) bytes"
  echo "ok: fallocate --punch-hole (WRITE SAME with UNMAP) of 1 MiB freed $((a1 - a2)) bytes"
else
  fail "fallocate --punch-hole on $disk failed: $(cat "$work/fallocate.err")"
fi

blkdiscard -z -o $((6 * MiB)) -l $((1 * MiB)) "$disk" || fail "blkdiscard -z failed"
dd if=/dev/zero of="$work/expect" bs=1M seek=6 count=1 conv=notrunc status=none
echo "ok: blkdiscard -z (WRITE SAME) of 1 MiB"

echo 3 >/proc/sys/vm/drop_caches
dd if="$disk" of="$work/back" bs=1M count=8 iflag=direct status=none || fail "reading back failed"
cmp "$work/expect" "$work/back" || fail "the disk does not read back zeros in the ranges and the data around them"
cmp "$work/expect" <(head -c $((8 * MiB)) "$thin") || fail "the backing file does not hold what the disk reads"
echo "ok: the three ranges read back as zeros (disk and backing file), the data around them intact"
{ sync "$disk" && blockdev --flushbufs "$disk"; } || fail "flush failed"
echo "ok: flush"
stop_daemon

# --- fully provisioned LUN --------------------------------------------------------------------
start_daemon "$work/full.yaml" vbiscsidisc1
disk=/dev/$(disk_of vbiscsidisc1)
q=/sys/block/${disk#/dev/}/queue
[ "$(cat "$q/discard_max_bytes")" -eq 0 ] || fail "$disk offers discard, but the LUN has no UNMAP"
if blkdiscard -o 0 -l $((1 * MiB)) "$disk" 2>/dev/null; then fail "blkdiscard succeeded on a LUN without UNMAP"; fi
echo "ok: a LUN without thin provisioning offers no discard and blkdiscard fails"
stop_daemon
