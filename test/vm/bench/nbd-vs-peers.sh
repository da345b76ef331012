#!/usr/bin/env bash
# Benchmark (not a pass/fail test): the same `nbdkit memory 1G` server on a unix socket, reached by
#   (a) vduse-bridge's nbd backend (virtio-blk through VDUSE),
#   (b) qemu-storage-daemon: --blockdev driver=nbd + --export type=vduse-blk (its VDUSE peer),
#   (c) the kernel's NBD client (/dev/nbdN set up by nbd-client),
#   (d) fio's libnbd ioengine (no kernel block layer at all: the ceiling),
# each measured with fio 4k randread qd1 and qd32, 4k randwrite qd32, 128k sequential read and write
# qd8, interleaved (round by round, workload by workload, path by path) so that drifts of the
# machine's speed hit every path alike. Prints per workload the median of the rounds and the ratio
# to (b), on lines starting with "bench:". A path whose tool is missing is left out with the reason;
# (a) is left out while the daemon says the nbd backend is not available.
#
# Run: test/vm/run-vm --icount test/vm/bench/nbd-vs-peers.sh (--icount: guest time counts
# instructions, so ratios repeat; the figures are guest time, not this machine's speed).
# VDUSE_BRIDGE_BENCH_SECONDS (default 5) per run, VDUSE_BRIDGE_BENCH_ROUNDS (default 3),
# VDUSE_BRIDGE_BENCH_QUEUES (default 1: vduse-bridge queues and connections, like qsd's num-queues=1).
# With the defaults the 4 paths make 60 runs, about 5 minutes of wall time on a 2-core machine: within
# run-vm's default --timeout 600; longer or more runs need a larger --timeout.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"
command -v fio >/dev/null || skip "fio not installed"
command -v nbdcopy >/dev/null || skip "nbdcopy not installed (libnbd-bin)"
RUNTIME=${VDUSE_BRIDGE_BENCH_SECONDS:-5}
ROUNDS=${VDUSE_BRIDGE_BENCH_ROUNDS:-3}
QUEUES=${VDUSE_BRIDGE_BENCH_QUEUES:-1}
for v in RUNTIME ROUNDS QUEUES; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || fail "$v must be a positive integer, got '${!v}'"
done
REGION=256M # every workload runs over the first 256 MiB, written once before the first run
cd "$work" # fio may leave state files in the current directory

sock=$work/nbd.sock
uri=$(nbd_unix_uri "$sock")
nbdkit_start mem -U "$sock" memory 1G
echo "ok: nbdkit memory 1G on $sock (pid ${nbdkit_pids[mem]})"
# Reading never-written sparse memory costs the server nothing; write the region once so every path
# reads real data.
nbdcopy -- [ nbdkit --exit-with-parent pattern "$REGION" ] "$uri" || fail "prefilling $REGION failed"
echo "ok: first $REGION of the server written (nbdkit pattern plugin, via nbdcopy)"

paths=()
declare -A dev=() label=() missing=()
label=([vb]=vduse-bridge [qsd]=qsd [knbd]=kernel-nbd [fionbd]=fio-libnbd)

# (a) vduse-bridge
nbd_config "$work/vb.yaml" vbnbdbench0 "$uri" "queues: $QUEUES" "queue-size: 256" \
  "backend.connections: $QUEUES" "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
rc=0
nbd_backend_check "$work/vb.yaml" || rc=$?
if [ "$rc" -eq 0 ]; then
  start_daemon "$work/vb.yaml" vbnbdbench0
  dev[vb]=/dev/$(disk_of vbnbdbench0)
  paths+=(vb)
  echo "ok: (a) vduse-bridge nbd backend serves ${dev[vb]} (queues $QUEUES, connections $QUEUES)"
else
  missing[vb]=$nbd_unavailable
fi

# (b) qemu-storage-daemon
qsd_pid='' qsd_attached=0
qsd_stop() {
  if [ "$qsd_attached" -eq 1 ]; then vdpa dev del qsdnbd0 || echo "warning: vdpa dev del qsdnbd0 failed" >&2; fi
  qsd_attached=0
  if alive "$qsd_pid"; then
    kill -TERM "$qsd_pid" 2>/dev/null || true
    wait "$qsd_pid" 2>/dev/null || true
  fi
  qsd_pid=''
}
on_cleanup qsd_stop
qsd_up() { [ -e /dev/vduse/qsdnbd0 ] || ! alive "$qsd_pid"; }
if QSD=$(command -v qemu-storage-daemon); then
  "$QSD" --blockdev "driver=nbd,node-name=n0,server.type=unix,server.path=$sock" \
    --export type=vduse-blk,id=e0,node-name=n0,name=qsdnbd0,writable=on,num-queues=1,queue-size=256 \
    >"$work/qsd.log" 2>&1 &
  qsd_pid=$!
  wait_for 60 /dev/vduse/qsdnbd0 qsd_up
  alive "$qsd_pid" || fail "qemu-storage-daemon exited during start-up: $(cat "$work/qsd.log")"
  vdpa dev add name qsdnbd0 mgmtdev vduse || fail "vdpa dev add name qsdnbd0 failed"
  qsd_attached=1
  wait_for 30 "the qsd disk" disk_ready qsdnbd0
  dev[qsd]=/dev/$(disk_of qsdnbd0)
  paths+=(qsd)
  echo "ok: (b) qemu-storage-daemon nbd -> vduse-blk serves ${dev[qsd]} (num-queues 1, queue-size 256)"
else
  missing[qsd]="qemu-storage-daemon not installed (Debian: qemu-system-common)"
fi

# (c) kernel NBD client
if knbd_attach "$sock"; then
  dev[knbd]=$knbd_dev
  paths+=(knbd)
  echo "ok: (c) kernel nbd client: $knbd_dev (nbd-client -unix, 1 connection)"
else
  missing[knbd]=$knbd_error
fi

# (d) fio's libnbd engine
if fio --enghelp 2>/dev/null | grep -qw nbd; then
  paths+=(fionbd)
  echo "ok: (d) fio has the nbd (libnbd) ioengine"
else
  missing[fionbd]="this fio has no nbd ioengine (built without libnbd)"
fi

for p in vb qsd knbd fionbd; do
  [ -z "${missing[$p]:-}" ] || echo "bench: ${label[$p]}: skipped: ${missing[$p]}"
done
[ ${#paths[@]} -gt 0 ] || skip "no path to measure"

# Same I/O scheduler for every block device (a single-queue device defaults to mq-deadline, a
# multi-queue one to none): none, so that the comparison is about the I/O path.
for p in vb qsd knbd; do
  [ -n "${dev[$p]:-}" ] || continue
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
  local path=$1 rw=$2 bs=$3 qd=$4 unit=$5 target out=$work/fio.txt
  if [ "$path" = fionbd ]; then
    target=(--ioengine=nbd "--uri=$uri")
  else
    target=(--ioengine=libaio --direct=1 "--filename=${dev[$path]}")
  fi
  fio --eta=never --name=bench "${target[@]}" --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$REGION" \
    --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=terse --terse-version=3 \
    --output="$out" >"$work/fio.err" 2>&1 ||
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
echo "bench: nbdkit memory 1G (unix socket), fio over the first $REGION, ${RUNTIME}s per run after 1s ramp," \
  "$ROUNDS rounds, $nruns runs (~$((nruns * (RUNTIME + 2)))s guest time), median, guest time"
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
for p in vb qsd knbd fionbd; do printf ' %20s' "${label[$p]}"; done
echo
for w in "${workloads[@]}"; do
  read -r name rw bs qd unit <<<"$w"
  base=''
  if [ -n "${results[qsd/$name]:-}" ]; then
    # shellcheck disable=SC2086 # the runs are space-separated numbers
    base=$(median ${results[qsd/$name]})
  fi
  printf 'bench: %-18s %-6s' "$name" "$unit"
  for p in vb qsd knbd fionbd; do
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
echo "bench: (ratios are to qsd, qemu-storage-daemon's nbd -> vduse-blk path)"

# Tear down in order: devices off the bus before their servers go.
if [ -n "${dev[vb]:-}" ]; then stop_daemon; fi
qsd_stop
if [ -n "${dev[knbd]:-}" ]; then knbd_detach "${dev[knbd]}" || fail "nbd-client -d ${dev[knbd]} failed"; fi
nbdkit_kill mem
