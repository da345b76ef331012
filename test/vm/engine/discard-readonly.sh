#!/usr/bin/env bash
# blkdiscard and blkdiscard -z (WRITE_ZEROES) read back zeros; flush works; a read-only device
# rejects writes but serves reads.
source "$(dirname "$0")/../lib/daemon.sh"

memory_config "$work/e.yaml" vbdisc0 32M
start_daemon "$work/e.yaml" vbdisc0
disk=/dev/$(disk_of vbdisc0)
[ "$(cat /sys/block/"$(basename "$disk")"/queue/discard_max_bytes)" -gt 0 ] || fail "discard not offered"
head -c $((8 << 20)) /dev/urandom | dd of="$disk" bs=1M oflag=direct status=none
blkdiscard -o $((1 << 20)) -l $((2 << 20)) "$disk" || fail "blkdiscard failed"
dd if="$disk" of="$work/r1" bs=1M skip=1 count=2 iflag=direct status=none
cmp -n $((2 << 20)) "$work/r1" /dev/zero || fail "discarded range does not read back as zeros"
echo "ok: blkdiscard range reads back zeros"
blkdiscard -z -o $((4 << 20)) -l $((1 << 20)) "$disk" || fail "blkdiscard -z failed"
dd if="$disk" of="$work/r2" bs=1M skip=4 count=1 iflag=direct status=none
cmp -n $((1 << 20)) "$work/r2" /dev/zero || fail "zeroed range does not read back as zeros"
[ "$(dd if="$disk" bs=1M skip=3 count=1 iflag=direct status=none | tr -d '\0' | wc -c)" -gt 0 ] ||
  fail "data outside the discarded ranges was lost"
echo "ok: blkdiscard -z (WRITE_ZEROES) reads back zeros, neighbours intact"
{ sync "$disk" && blockdev --flushbufs "$disk"; } || fail "flush failed"
echo "ok: flush"
stop_daemon

memory_config "$work/f.yaml" vbro0 16M "read-only: true"
start_daemon "$work/f.yaml" vbro0
disk=/dev/$(disk_of vbro0)
[ "$(blockdev --getro "$disk")" = 1 ] || fail "the disk is not marked read-only"
if dd if=/dev/zero of="$disk" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
  fail "a write to the read-only disk succeeded"
fi
dd if="$disk" of=/dev/null bs=1M iflag=direct status=none || fail "reading the read-only disk failed"
echo "ok: read-only disk refuses writes, serves reads"
stop_daemon
