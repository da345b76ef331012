#!/usr/bin/env bash
# Benchmark (not a pass/fail test): fio 4k random reads at iodepth 32 and 1 on vduse-bridge's
# memory backend and on qemu-storage-daemon's vduse-blk export over a null-co blockdev, in the
# same boot, printed as IOPS and ratios. Run: test/vm/run-vm --icount test/vm/bench/memory-vs-qsd.sh
# (--icount makes guest time count instructions, so ratios repeat within ~10%).
source "$(dirname "$0")/../lib/daemon.sh"
command -v fio >/dev/null || skip "fio not installed"
QSD=$(command -v qemu-storage-daemon) || skip "qemu-storage-daemon not installed"
RUNTIME=${VDUSE_BRIDGE_BENCH_SECONDS:-8}
cd "$work" # fio may leave state files in the current directory

# fio_iops DEV IODEPTH: read IOPS of a time-based 4k randread run over the first 64 MiB.
fio_iops() {
  fio --eta=never --name=bench --filename="$1" --direct=1 --ioengine=libaio --iodepth="$2" --rw=randread \
    --bs=4k --size=64M --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=terse --terse-version=3 \
    --output="$work/fio.txt" >/dev/null 2>&1 || fail "fio failed on $1"
  awk -F';' '$1 == 3 {print $8}' "$work/fio.txt"
}

declare -A iops
memory_config "$work/m.yaml" vbbench0 1G
start_daemon "$work/m.yaml" vbbench0
dev=/dev/$(disk_of vbbench0)
# Touch the range first: reading never-written memory costs a page fault per page, which
# null-co's read-zeroes does not pay; the comparison is about the I/O path.
dd if=/dev/zero of="$dev" bs=1M count=64 oflag=direct status=none
for qd in 32 1; do iops[vb-$qd]=$(fio_iops "$dev" "$qd"); done
stop_daemon

qsd_pid='' qsd_attached=0
qsd_stop() {
  if [ "$qsd_attached" -eq 1 ]; then vdpa dev del qsd0 || echo "warning: vdpa dev del qsd0 failed" >&2; fi
  qsd_attached=0
  if alive "$qsd_pid"; then
    kill -TERM "$qsd_pid" 2>/dev/null || true
    wait "$qsd_pid" 2>/dev/null || true
  fi
  qsd_pid=''
}
on_cleanup qsd_stop
"$QSD" --blockdev driver=null-co,node-name=n0,size=1073741824,read-zeroes=on \
  --export type=vduse-blk,id=e0,node-name=n0,name=qsd0,writable=on,num-queues=1,queue-size=256 \
  >"$work/qsd.log" 2>&1 &
qsd_pid=$!
qsd_up() { [ -e /dev/vduse/qsd0 ] || ! alive "$qsd_pid"; }
wait_for 60 /dev/vduse/qsd0 qsd_up
[ -e /dev/vduse/qsd0 ] || fail "qemu-storage-daemon did not start: $(cat "$work/qsd.log")"
vdpa dev add name qsd0 mgmtdev vduse || fail "vdpa dev add name qsd0 failed"
qsd_attached=1
wait_for 30 "the qsd disk" disk_ready qsd0
dev=/dev/$(disk_of qsd0)
for qd in 32 1; do iops[qsd-$qd]=$(fio_iops "$dev" "$qd"); done
qsd_stop

echo "bench: 4k randread, ${RUNTIME}s per run, IOPS in guest time"
for qd in 32 1; do
  ratio=$(awk -v a="${iops[vb-$qd]}" -v b="${iops[qsd-$qd]}" 'BEGIN { printf "%.2f", a / b }')
  printf 'bench: iodepth %-2s  vduse-bridge(memory) %8s  qemu-storage-daemon(null-co) %8s  ratio %sx\n' \
    "$qd" "${iops[vb-$qd]}" "${iops[qsd-$qd]}" "$ratio"
done
