#!/usr/bin/env bash
# fio with crc32c verification through the iscsi backend: tgtd in the guest on 127.0.0.1 serves a
# 256 MiB LUN backed by a file in tmpfs; a 2-queue device (one iSCSI session per queue): random
# writes at 4k and 64k and mixed read/write at 16k, iodepth 32, two jobs in disjoint 32 MiB ranges.
# Any verify or I/O error fails the test. Then 1 MiB written through the disk must be in the LUN's
# backing file.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v fio >/dev/null || skip "fio not installed"

NAME=vbiscsifio0
SIZE=$((256 << 20))
img=$work/lun1.img
tgtd_start
truncate -s "$SIZE" "$img"
tgt_lun_add 1 "$img"
echo "ok: tgtd (pid $tgtd_pid) on 127.0.0.1:$tgtd_port, LUN 1: $img ($(stat -f -c %T "$img")), 256 MiB"
iscsi_config "$work/c.yaml" "$NAME" "$(iscsi_uri 1)" "queues: 2" \
  "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
require_iscsi_backend "$work/c.yaml"
cd "$work" # fio writes verify state files into the current directory

start_daemon "$work/c.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
dname=${disk#/dev/}
size=$(blockdev --getsize64 "$disk")
[ "$size" -eq "$SIZE" ] || fail "$disk is $size bytes, the LUN has $SIZE"
nq=$(find "/sys/block/$dname/mq" -mindepth 1 -maxdepth 1 | wc -l)
[ "$nq" -eq 2 ] || fail "$disk has $nq hardware queues, expected 2"
lbs=$(cat "/sys/block/$dname/queue/logical_block_size")
[ "$lbs" -eq 512 ] || fail "$disk has $lbs-byte logical blocks, the LUN 512"
echo "ok: $disk: $size bytes, 2 queues, 512-byte blocks"

for run in "randwrite 4k" "randwrite 64k" "randrw 16k"; do
  read -r rw bs <<<"$run"
  out=$work/fio-$rw-$bs
  fio --eta=never --name="verify-$rw-$bs" --filename="$disk" --direct=1 --ioengine=libaio --iodepth=32 \
    --numjobs=2 --offset_increment=64M --size=32M --rw="$rw" --bs="$bs" --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --group_reporting --output-format=terse --terse-version=3 --output="$out.txt" 2>"$out.err" ||
    { cat "$out.err" "$out.txt"; fail "fio $rw bs=$bs failed"; }
  # Terse v3: field 5 error, 6 KiB read (including the verify reads), 47 KiB written.
  read -r errors read_kib write_kib < <(awk -F';' '$1 == 3 { print $5, $6, $47 }' "$out.txt")
  [ "${errors:-}" = 0 ] || { cat "$out.txt"; fail "fio $rw bs=$bs reported error '${errors:-none}'"; }
  echo "ok: fio $rw bs=$bs iodepth=32 numjobs=2 verify=crc32c: ${write_kib} KiB written, ${read_kib} KiB read"
done

# Past fio's ranges (0-32M, 64M-96M): what the disk wrote is what tgtd stored in the file.
head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=200 oflag=direct status=none || fail "dd write failed"
sync "$disk"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=200 count=1 status=none) ||
  fail "the LUN's backing file holds other data than was written through $disk"
dd if="$disk" of="$work/back" bs=1M skip=200 count=1 iflag=direct status=none || fail "dd read failed"
cmp "$work/pattern" "$work/back" || fail "read back through $disk differs"
echo "ok: 1 MiB written through $disk is in the backing file and reads back identical"
stop_daemon
