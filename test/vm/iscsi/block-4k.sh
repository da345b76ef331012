#!/usr/bin/env bash
# A LUN with 4096-byte logical blocks (tgtadm --blocksize 4096) through the iscsi backend: the disk
# takes the LUN's block size (/sys/block/vdX/queue/logical_block_size is 4096, no configuration
# needed), 512-byte O_DIRECT I/O is refused by the kernel, fio with crc32c verification at 4k and
# 64k passes, and a block written at a byte offset is at that offset in the backing file.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v fio >/dev/null || skip "fio not installed"

NAME=vbiscsi4k0
img=$work/lun1.img
tgtd_start
truncate -s 64M "$img"
tgt_lun_add 1 "$img" 4096
echo "ok: tgtd (pid $tgtd_pid) on 127.0.0.1:$tgtd_port, LUN 1: 64 MiB with 4096-byte blocks"
iscsi_config "$work/c.yaml" "$NAME" "$(iscsi_uri 1)" "queues: 2" "backend.reconnect-timeout: 60s"
require_iscsi_backend "$work/c.yaml"
cd "$work"

start_daemon "$work/c.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
q=/sys/block/${disk#/dev/}/queue
lbs=$(cat "$q/logical_block_size") pbs=$(cat "$q/physical_block_size")
[ "$lbs" -eq 4096 ] || fail "$disk: logical_block_size is $lbs, the LUN has 4096-byte blocks"
[ "$pbs" -ge 4096 ] || fail "$disk: physical_block_size is $pbs, below the logical block size"
[ "$(blockdev --getsize64 "$disk")" -eq $((64 << 20)) ] || fail "$disk is $(blockdev --getsize64 "$disk") bytes"
echo "ok: $disk: logical_block_size 4096, physical_block_size $pbs, 64 MiB"

if dd if="$disk" of=/dev/null bs=512 count=1 iflag=direct status=none 2>/dev/null; then
  fail "a 512-byte O_DIRECT read of a 4096-byte-block disk succeeded"
fi
echo "ok: 512-byte O_DIRECT I/O is refused"

for bs in 4k 64k; do
  fio --eta=never --name="verify-$bs" --filename="$disk" --direct=1 --ioengine=libaio --iodepth=16 \
    --numjobs=2 --offset_increment=32M --size=16M --rw=randwrite --bs="$bs" --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --group_reporting --output-format=terse --terse-version=3 --output="$work/fio-$bs.txt" \
    2>"$work/fio-$bs.err" || { cat "$work/fio-$bs.err" "$work/fio-$bs.txt"; fail "fio bs=$bs failed"; }
  errors=$(awk -F';' '$1 == 3 {print $5}' "$work/fio-$bs.txt")
  [ "$errors" = 0 ] || { cat "$work/fio-$bs.txt"; fail "fio bs=$bs reported error '$errors'"; }
  echo "ok: fio randwrite bs=$bs iodepth=16 numjobs=2 verify=crc32c"
done

head -c 12288 /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=4096 seek=5000 oflag=direct status=none || fail "dd write failed"
sync "$disk"
cmp "$work/pattern" <(dd if="$img" bs=4096 skip=5000 count=3 status=none) ||
  fail "3 blocks written at block 5000 are not at byte $((5000 * 4096)) of the backing file"
echo "ok: 3 blocks written at block 5000 are at byte $((5000 * 4096)) of the backing file"
stop_daemon
