#!/usr/bin/env bash
# Benchmark (not a pass/fail test): the same tgtd LUN (1 GiB, a file on the guest's tmpfs, tgtd on
# 127.0.0.1), reached by
#   (a) vduse-bridge's iscsi backend (libiscsi; virtio-blk through VDUSE),
#   (b) qemu-storage-daemon: --blockdev driver=iscsi (libiscsi too, from qemu-block-extra) +
#       --export type=vduse-blk (its VDUSE peer),
#   (c) the kernel's iSCSI initiator (open-iscsi: iscsid + iscsiadm, iscsi_tcp; a /dev/sdX),
# each measured with fio 4k randread qd1 and qd32, 4k randwrite qd32, 128k sequential read and write
# qd8, interleaved (round by round, workload by workload, path by path) so that drifts of the
# machine's speed hit every path alike. Prints per workload the median of the rounds and the ratio
# to (b), on lines starting with "bench:". A path whose tool is missing is left out with the reason;
# (a) is left out while the daemon says the iscsi backend is not available.
#
# Run: test/vm/run-vm --icount test/vm/bench/iscsi-vs-peers.sh (--icount: guest time counts
# instructions, so ratios repeat; the figures are guest time, not this machine's speed).
# VDUSE_BRIDGE_BENCH_SECONDS (default 5) per run, VDUSE_BRIDGE_BENCH_ROUNDS (default 3),
# VDUSE_BRIDGE_BENCH_QUEUES (default 1: vduse-bridge queues, i.e. iSCSI sessions, like qsd's
# num-queues=1 over its one session). With the defaults and 3 paths it is 45 runs, about 5 minutes
# of wall time on a 2-core machine: within run-vm's default --timeout 600.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v fio >/dev/null || skip "fio not installed"
RUNTIME=${VDUSE_BRIDGE_BENCH_SECONDS:-5}
ROUNDS=${VDUSE_BRIDGE_BENCH_ROUNDS:-3}
QUEUES=${VDUSE_BRIDGE_BENCH_QUEUES:-1}
for v in RUNTIME ROUNDS QUEUES; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || fail "$v must be a positive integer, got '${!v}'"
done
REGION=256M # every workload runs over the first 256 MiB, written once before the first run
cd "$work"  # fio may leave state files in the current directory

img=$work/lun1.img
# Reading never-written tmpfs costs the target nothing; write the region once so that every path
# reads real pages.
dd if=/dev/zero of="$img" bs=1M count=256 status=none || fail "prefilling the LUN's file failed"
truncate -s 1G "$img"
tgtd_start
tgt_lun_add 1 "$img"
uri=$(iscsi_uri 1)
echo "ok: tgtd (pid $tgtd_pid) on 127.0.0.1:$tgtd_port, LUN 1: 1 GiB on tmpfs, first $REGION written"

paths=()
declare -A dev=() label=() missing=()
label=([vb]=vduse-bridge [qsd]=qsd [kiscsi]=kernel-iscsi)

# (a) vduse-bridge
iscsi_config "$work/vb.yaml" vbiscsibench0 "$uri" "queues: $QUEUES" "queue-size: 256" \
  "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
rc=0
iscsi_backend_check "$work/vb.yaml" || rc=$?
if [ "$rc" -eq 0 ]; then
  start_daemon "$work/vb.yaml" vbiscsibench0
  dev[vb]=/dev/$(disk_of vbiscsibench0)
  paths+=(vb)
  echo "ok: (a) vduse-bridge iscsi backend serves ${dev[vb]} (queues $QUEUES: $QUEUES session(s))"
else
  missing[vb]=$iscsi_unavailable
fi

# (b) qemu-storage-daemon
qsd_pid='' qsd_attached=0
qsd_stop() {
  if [ "$qsd_attached" -eq 1 ]; then vdpa dev del qsdiscsi0 || echo "warning: vdpa dev del qsdiscsi0 failed" >&2; fi
  qsd_attached=0
  if alive "$qsd_pid"; then
    kill -TERM "$qsd_pid" 2>/dev/null || true
    wait "$qsd_pid" 2>/dev/null || true
  fi
  qsd_pid=''
}
on_cleanup qsd_stop
qsd_up() { [ -e /dev/vduse/qsdiscsi0 ] || ! alive "$qsd_pid"; }
if ! QSD=$(command -v qemu-storage-daemon); then
  missing[qsd]="qemu-storage-daemon not installed (Debian: qemu-system-common)"
elif ! compgen -G "/usr/lib/*/qemu/block-iscsi.so" >/dev/null && ! compgen -G "/usr/lib/qemu/block-iscsi.so" >/dev/null; then
  missing[qsd]="qemu's iscsi block driver is not installed (Debian: qemu-block-extra)"
else
  "$QSD" --blockdev "driver=iscsi,node-name=n0,transport=tcp,portal=127.0.0.1:$tgtd_port,target=$TGT_IQN,lun=1,initiator-name=iqn.2026-11.org.vduse-bridge.vmtest:qsd" \
    --export type=vduse-blk,id=e0,node-name=n0,name=qsdiscsi0,writable=on,num-queues=1,queue-size=256 \
    >"$work/qsd.log" 2>&1 &
  qsd_pid=$!
  wait_for 60 /dev/vduse/qsdiscsi0 qsd_up
  if alive "$qsd_pid"; then
    vdpa dev add name qsdiscsi0 mgmtdev vduse || fail "vdpa dev add name qsdiscsi0 failed"
    qsd_attached=1
    wait_for 30 "the qsd disk" disk_ready qsdiscsi0
    dev[qsd]=/dev/$(disk_of qsdiscsi0)
    paths+=(qsd)
    echo "ok: (b) qemu-storage-daemon iscsi -> vduse-blk serves ${dev[qsd]} (num-queues 1, queue-size 256)"
  else
    wait "$qsd_pid" 2>/dev/null || true
    qsd_pid=''
    missing[qsd]="qemu-storage-daemon --blockdev driver=iscsi failed: $(tr '\n' ' ' <"$work/qsd.log")"
  fi
fi

# (c) the kernel's initiator: iscsid keeps its node database under /etc/iscsi, read-only here, so
# it gets a private tmpfs copy for the run.
iscsid_pid='' kiscsi_logged_in=0 etc_iscsi_mounted=0
kiscsi_stop() {
  if [ "$kiscsi_logged_in" -eq 1 ]; then
    iscsiadm -m node -T "$TGT_IQN" -p "127.0.0.1:$tgtd_port" --logout >/dev/null 2>&1 ||
      echo "warning: iscsiadm --logout failed" >&2
  fi
  kiscsi_logged_in=0
  if alive "$iscsid_pid"; then
    kill -TERM "$iscsid_pid" 2>/dev/null || true
    wait_gone "$iscsid_pid" 10 || kill -KILL "$iscsid_pid" 2>/dev/null || true
    wait "$iscsid_pid" 2>/dev/null || true
  fi
  iscsid_pid=''
  if [ "$etc_iscsi_mounted" -eq 1 ]; then umount /etc/iscsi && etc_iscsi_mounted=0; fi
}
on_cleanup kiscsi_stop
kiscsi_disk() {
  local d
  for d in /sys/class/iscsi_session/session*/device/target*/*/block/*; do
    [ -e "$d" ] && [ -b "/dev/${d##*/}" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
kiscsi_ready() { kiscsi_disk >/dev/null; }
if ! command -v iscsiadm >/dev/null || ! command -v iscsid >/dev/null; then
  missing[kiscsi]="iscsiadm/iscsid not installed (Debian: open-iscsi)"
elif [ ! -e /sys/module/iscsi_tcp ]; then
  missing[kiscsi]="the iscsi_tcp kernel module is not loaded"
elif [ ! -f /etc/iscsi/iscsid.conf ]; then
  missing[kiscsi]="/etc/iscsi/iscsid.conf missing (open-iscsi not installed properly)"
elif ! { cp -a /etc/iscsi "$work/etc-iscsi" && mount -t tmpfs tmpfs /etc/iscsi; }; then
  missing[kiscsi]="cannot put a writable /etc/iscsi in place (tmpfs)"
else
  etc_iscsi_mounted=1
  cp -a "$work/etc-iscsi/." /etc/iscsi/
  echo "InitiatorName=iqn.2026-11.org.vduse-bridge.vmtest:kernel" >/etc/iscsi/initiatorname.iscsi
  mkdir -p /run/lock/iscsi
  # Its own session: on SIGTERM iscsid signals its whole process group, which would be this script.
  setsid iscsid -f >"$work/iscsid.log" 2>&1 &
  iscsid_pid=$!
  # Discovery needs iscsid up (its control socket): retried until it answers or iscsid is gone.
  discovered() {
    iscsiadm -m discovery -t sendtargets -p "127.0.0.1:$tgtd_port" >"$work/iscsiadm.log" 2>&1 || ! alive "$iscsid_pid"
  }
  wait_for 30 "iscsid to answer a discovery" discovered
  if alive "$iscsid_pid" && grep -q "$TGT_IQN" "$work/iscsiadm.log" &&
    iscsiadm -m node -T "$TGT_IQN" -p "127.0.0.1:$tgtd_port" --login >>"$work/iscsiadm.log" 2>&1; then
    kiscsi_logged_in=1
    wait_for 60 "the kernel initiator's disk" kiscsi_ready
    dev[kiscsi]=$(kiscsi_disk)
    paths+=(kiscsi)
    echo "ok: (c) kernel iSCSI initiator: ${dev[kiscsi]} (open-iscsi, 1 session)"
  else
    missing[kiscsi]="iscsiadm discovery or login failed: $(tail -n 2 "$work/iscsiadm.log" "$work/iscsid.log" | tr '\n' ' ')"
  fi
fi

for p in vb qsd kiscsi; do
  [ -z "${missing[$p]:-}" ] || echo "bench: ${label[$p]}: skipped: ${missing[$p]}"
done
[ ${#paths[@]} -gt 0 ] || skip "no path to measure"

# Same I/O scheduler for every block device (a single-queue device defaults to mq-deadline, a
# multi-queue one to none): none, so that the comparison is about the I/O path.
for p in "${paths[@]}"; do
  echo none >"/sys/block/${dev[$p]#/dev/}/queue/scheduler" || fail "cannot set the none scheduler on ${dev[$p]}"
done

# name rw bs iodepth unit
workloads=(
  "randread-4k-qd1 randread 4k 1 IOPS"
  "randread-4k-qd32 randread 4k 32 IOPS"
  "randwrite-4k-qd32 randwrite 4k 32 IOPS"
  "read-128k-qd8 read 128k 8 MiB/s"
  "write-128k-qd8 write 128k 8 MiB/s"
)

# run_fio PATH RW BS IODEPTH UNIT: prints the IOPS or MiB/s of one time-based run.
run_fio() {
  local path=$1 rw=$2 bs=$3 qd=$4 unit=$5 out=$work/fio.txt
  fio --eta=never --name=bench --ioengine=libaio --direct=1 "--filename=${dev[$path]}" --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --size="$REGION" --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=terse \
    --terse-version=3 --output="$out" >"$work/fio.err" 2>&1 ||
    fail "fio $rw bs=$bs iodepth=$qd failed on ${label[$path]}: $(cat "$work/fio.err" "$out")"
  # Terse v3: field 5 error, 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS.
  awk -F';' -v rw="$rw" -v unit="$unit" '
    $1 == 3 {
      if ($5 != 0) { print "error " $5; exit 1 }
      w = (rw ~ /write/)
      if (unit == "IOPS") v = w ? $49 : $8; else v = (w ? $48 : $7) / 1024
      printf (unit == "IOPS" ? "%d\n" : "%.1f\n"), v
      found = 1
    }
    END { if (!found) exit 1 }' "$out" || fail "no result from fio $rw on ${label[$path]}: $(cat "$out")"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

nruns=$((ROUNDS * ${#workloads[@]} * ${#paths[@]}))
echo "bench: tgtd LUN 1G (file on tmpfs, 127.0.0.1), fio over the first $REGION, ${RUNTIME}s per run after" \
  "1s ramp, $ROUNDS rounds, $nruns runs (~$((nruns * (RUNTIME + 2)))s guest time), median, guest time"
declare -A results=()
for ((r = 1; r <= ROUNDS; r++)); do
  for w in "${workloads[@]}"; do
    read -r name rw bs qd unit <<<"$w"
    # Rotate the order of the paths each round: no path always runs right after the same one.
    for ((i = 0; i < ${#paths[@]}; i++)); do
      p=${paths[$(((i + r - 1) % ${#paths[@]}))]}
      v=$(run_fio "$p" "$rw" "$bs" "$qd" "$unit")
      results[$p/$name]+="$v "
      printf '  round %d %-18s %-12s %10s %s\n' "$r" "$name" "${label[$p]}" "$v" "$unit"
    done
  done
done

printf 'bench: %-18s %-6s' workload unit
for p in vb qsd kiscsi; do printf ' %20s' "${label[$p]}"; done
echo
for w in "${workloads[@]}"; do
  read -r name rw bs qd unit <<<"$w"
  base=''
  if [ -n "${results[qsd/$name]:-}" ]; then
    # shellcheck disable=SC2086 # the runs are space-separated numbers
    base=$(median ${results[qsd/$name]})
  fi
  printf 'bench: %-18s %-6s' "$name" "$unit"
  for p in vb qsd kiscsi; do
    if [ -z "${results[$p/$name]:-}" ]; then
      printf ' %20s' n/a
      continue
    fi
    # shellcheck disable=SC2086
    m=$(median ${results[$p/$name]})
    if [ -n "$base" ]; then
      printf ' %20s' "$m ($(awk -v a="$m" -v b="$base" 'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }'))"
    else
      printf ' %20s' "$m"
    fi
  done
  echo
done
echo "bench: (ratios are to qsd, qemu-storage-daemon's iscsi -> vduse-blk path)"

# Tear down in order: devices off the bus before the target goes.
if [ -n "${dev[vb]:-}" ]; then stop_daemon; fi
qsd_stop
kiscsi_stop
tgtd_stop
