#!/usr/bin/env bash
# fio with crc32c verification over a 2-queue memory device: random writes and mixed
# read/write, 4k and 64k blocks, iodepth 32. Any verify error or I/O error fails the test.
source "$(dirname "$0")/../lib/daemon.sh"
command -v fio >/dev/null || skip "fio not installed"

memory_config "$work/c.yaml" vbfio0 256M "queues: 2"
start_daemon "$work/c.yaml" vbfio0
disk=/dev/$(disk_of vbfio0)
nq=$(ls -d /sys/block/"$(basename "$disk")"/mq/* | wc -l)
[ "$nq" -eq 2 ] || fail "the disk has $nq hardware queues, expected 2"
echo "ok: $disk has 2 queues"

cd "$work" # fio writes verify state files into the current directory
for rw in randwrite randrw; do
  for bs in 4k 64k; do
    fio --eta=never --name="verify-$rw-$bs" --filename="$disk" --direct=1 --ioengine=libaio --iodepth=32 \
      --numjobs=2 --offset_increment=64M --size=48M --rw="$rw" --bs="$bs" \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting --output-format=terse \
      --terse-version=3 --output="$work/fio-$rw-$bs.txt" 2>"$work/fio-$rw-$bs.err" ||
      { cat "$work/fio-$rw-$bs.err" "$work/fio-$rw-$bs.txt"; fail "fio $rw $bs failed"; }
    # Terse v3 field 5 is the job's error code.
    errors=$(awk -F';' '$1 == 3 {print $5}' "$work/fio-$rw-$bs.txt")
    [ "$errors" = 0 ] || { cat "$work/fio-$rw-$bs.txt"; fail "fio $rw $bs reported error '$errors'"; }
    echo "ok: fio $rw bs=$bs iodepth=32 verify=crc32c"
  done
done
stop_daemon
