#!/usr/bin/env bash
# A memory-backed device appears as /dev/vdX with the configured size and serial, and data
# written with O_DIRECT reads back identical (also through a 4096-byte-block device).
source "$(dirname "$0")/../lib/daemon.sh"

memory_config "$work/a.yaml" vbbasic0 64M 'serial: "serial-vbbasic0"'
start_daemon "$work/a.yaml" vbbasic0
disk=$(disk_of vbbasic0)
echo "ok: /dev/$disk appeared"

size=$(blockdev --getsize64 "/dev/$disk")
[ "$size" -eq $((64 << 20)) ] || fail "size is $size, expected $((64 << 20))"
echo "ok: size $size"
serial=$(cat "/sys/block/$disk/serial")
[ "$serial" = serial-vbbasic0 ] || fail "serial is '$serial', expected 'serial-vbbasic0'"
echo "ok: serial $serial (GET_ID)"

head -c $((4 << 20)) /dev/urandom >"$work/data"
dd if="$work/data" of="/dev/$disk" bs=1M oflag=direct status=none || fail "dd write failed"
dd if="/dev/$disk" of="$work/back" bs=1M count=4 iflag=direct status=none || fail "dd read failed"
cmp "$work/data" "$work/back" || fail "data read back differs"
echo "ok: 4 MiB written and read back identical"
# Unaligned-in-memory, odd-sized direct I/O: 3 x 4 KiB at an offset.
dd if="$work/data" of="/dev/$disk" bs=4k count=3 seek=1001 oflag=direct status=none || fail "small write failed"
dd if="/dev/$disk" of="$work/back2" bs=4k count=3 skip=1001 iflag=direct status=none || fail "small read failed"
head -c 12288 "$work/data" >"$work/expect2"
cmp "$work/expect2" "$work/back2" || fail "small read back differs"
echo "ok: 12 KiB at 4 MiB offset read back"
stop_daemon

memory_config "$work/b.yaml" vbbasic1 32M "logical-block-size: 4096"
start_daemon "$work/b.yaml" vbbasic1
disk=$(disk_of vbbasic1)
lbs=$(blockdev --getss "/dev/$disk")
[ "$lbs" -eq 4096 ] || fail "logical block size is $lbs, expected 4096"
dd if="$work/data" of="/dev/$disk" bs=64k oflag=direct status=none || fail "dd write failed (4k device)"
dd if="/dev/$disk" of="$work/back3" bs=64k count=64 iflag=direct status=none || fail "dd read failed (4k device)"
cmp "$work/back3" "$work/data" || fail "4k device read back differs"
echo "ok: 4096-byte logical blocks, data read back"
stop_daemon
