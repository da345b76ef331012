# shellcheck shell=bash disable=SC2154 # paths, dev, backend, work, ... are suite.sh's
# Where the time of one I/O goes, per path: sourced by test/bench/suite.sh when
# VDUSE_BRIDGE_BENCH_MODE=breakdown (scripts/bench --breakdown). For each measured path it runs
# 4k randread at qd1 (and qd32) three times over the same disk:
#   1. counters: IOPS, system-wide context switches, interrupts and busy CPU time per I/O
#      (/proc/stat), the serving daemon's and the server's CPU time and context switches per I/O
#      (/proc/PID/stat and task/*/status), fio's own (its JSON);
#   2. the serving daemon's and the server's system calls per I/O, by name (strace -c -f; it slows
#      them, but the counts per I/O are what is kept);
#   3. context switches per I/O by task (fio, the daemon, the server, kernel workers): voluntary
#      ones (a sleep, so a later wake-up) and involuntary ones (preempted).
# Results go to $OUT/breakdown.csv (path,workload,metric,value; value per completed I/O unless the
# metric says otherwise) and are printed; test/bench/report.py renders them.

BD_CSV=$OUT/breakdown.csv
echo "path,workload,metric,value" >"$BD_CSV"
bd() { echo "$1,$2,$3,$4" >>"$BD_CSV"; }

# The server process of a path's backend (the same nbdkit or tgtd serves every path of a backend).
bd_server_pid() {
  case ${backend[$1]} in
  nbd) echo "${nbdkit_pids[mem]:-}" ;;
  iscsi) pgrep -x tgtd | head -n 1 ;;
  *) echo "" ;;
  esac
}
# proc_ctx PID: voluntary + involuntary context switches of all its threads.
proc_ctx() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches:|^nonvoluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}
# stat_line: ctxt intr busy_ticks idle_ticks (system-wide, /proc/stat)
stat_line() {
  awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8; idle = $5 + $6 } /^ctxt / { c = $2 } /^intr / { i = $2 }
       END { print c, i, busy, idle }' /proc/stat
}
# div A B [SCALE]: A*SCALE/B with two decimals.
div() { awk -v a="$1" -v b="$2" -v s="${3:-1}" 'BEGIN { if (b > 0) printf "%.2f", a * s / b; else print "nan" }'; }

# bd_fio PATH QD SECONDS JSON: one 4k randread run on PATH.
bd_fio() {
  local p=$1 qd=$2 secs=$3 json=$4 target
  if [ "$p" = fio-libnbd ]; then
    target=(--ioengine=nbd "--uri=$uri")
  else
    target=(--ioengine=libaio --direct=1 "--filename=${dev[$p]}")
  fi
  fio --eta=never --name=bd "${target[@]}" --rw=randread --bs=4k --iodepth="$qd" --size="$REGION" \
    --time_based --runtime="$secs" --ramp_time=500ms --output-format=json --output="$json" >"$work/fio.err" 2>&1 ||
    fail "fio (breakdown) failed on $p: $(cat "$work/fio.err")"
}
fio_ios() { jq -r '.jobs[0] | (.read.total_ios + .write.total_ios)' "$1"; }

# 1. counters
bd_counters() {
  local p=${1%@*} w=$2 qd=$3 json=$work/bd.json dpid spid s0 s1 d0=0 d1=0 dc0=0 dc1=0 v0=0 v1=0 vc0=0 vc1=0 ios
  dpid=${cpu_pid[$p]:-} spid=$(bd_server_pid "$p")
  s0=$(stat_line)
  [ -z "$dpid" ] || { d0=$(cpu_ticks "$dpid") && dc0=$(proc_ctx "$dpid"); }
  [ -z "$spid" ] || { v0=$(cpu_ticks "$spid") && vc0=$(proc_ctx "$spid"); }
  bd_fio "$p" "$qd" "$RUNTIME" "$json"
  s1=$(stat_line)
  [ -z "$dpid" ] || { d1=$(cpu_ticks "$dpid") && dc1=$(proc_ctx "$dpid"); }
  [ -z "$spid" ] || { v1=$(cpu_ticks "$spid") && vc1=$(proc_ctx "$spid"); }
  # Counters span the whole fio run (ramp included): per I/O over the I/Os of that span.
  ios=$(jq -r '.jobs[0] | (.read.total_ios + .write.total_ios)' "$json")
  local iops ramp_ios
  iops=$(jq -r '.jobs[0].read.iops | floor' "$json")
  ramp_ios=$(awk -v i="$iops" 'BEGIN { printf "%d", i * 0.5 }') # fio's total_ios leave the ramp out
  ios=$((ios + ramp_ios))
  read -r c0 i0 b0 _ <<<"$s0"
  read -r c1 i1 b1 _ <<<"$s1"
  p=$1 # the results under the variant's name
  bd "$p" "$w" iops "$iops"
  bd "$p" "$w" ctx_switches "$(div $((c1 - c0)) "$ios")"
  bd "$p" "$w" interrupts "$(div $((i1 - i0)) "$ios")"
  bd "$p" "$w" busy_cpu_us "$(div $((b1 - b0)) "$ios" $((1000000 / CLK)))"
  [ -z "$dpid" ] || bd "$p" "$w" daemon_cpu_us "$(div $((d1 - d0)) "$ios" $((1000000 / CLK)))"
  [ -z "$dpid" ] || bd "$p" "$w" daemon_ctx_switches "$(div $((dc1 - dc0)) "$ios")"
  [ -z "$spid" ] || bd "$p" "$w" server_cpu_us "$(div $((v1 - v0)) "$ios" $((1000000 / CLK)))"
  [ -z "$spid" ] || bd "$p" "$w" server_ctx_switches "$(div $((vc1 - vc0)) "$ios")"
  # fio's own: CPU % of its runtime and context switches (its JSON).
  jq -r --arg ios "$ios" '.jobs[0] | "\(.usr_cpu) \(.sys_cpu) \(.ctx) \(.job_runtime)"' "$json" |
    while read -r usr sys ctx rt; do
      bd "$p" "$w" fio_cpu_us "$(awk -v u="$usr" -v s="$sys" -v r="$rt" -v n="$ios" 'BEGIN { printf "%.2f", (u + s) / 100 * r * 1000 / n }')"
      bd "$p" "$w" fio_ctx_switches "$(div "$ctx" "$ios")"
    done
}

# 2. system calls of the daemon and the server (strace -c -f over one run)
bd_syscalls() {
  local p=$1 w=$2 qd=$3 json=$work/bd-strace.json who pid pids=() names=() i ios
  command -v strace >/dev/null || { bd "$p" "$w" note "strace not installed" && return 0; }
  [ -z "${cpu_pid[$p]:-}" ] || { pids+=("${cpu_pid[$p]}") && names+=(daemon); }
  pid=$(bd_server_pid "$p")
  [ -z "$pid" ] || { pids+=("$pid") && names+=(server); }
  [ ${#pids[@]} -gt 0 ] || return 0
  for i in "${!pids[@]}"; do
    strace -c -f -q -p "${pids[$i]}" -o "$work/bd-strace-${names[$i]}.txt" &
    eval "strace_pid_$i=\$!"
  done
  sleep 1 # strace attaches to every thread
  bd_fio "$p" "$qd" "$RUNTIME" "$json"
  for i in "${!pids[@]}"; do
    who=strace_pid_$i
    kill -INT "${!who}" 2>/dev/null || true
    wait "${!who}" 2>/dev/null || true
  done
  iops=$(jq -r '.jobs[0].read.iops | floor' "$json")
  ios=$(($(fio_ios "$json") + iops / 2)) # + the ramp (fio's totals leave it out)
  for i in "${!pids[@]}"; do
    # strace -c: "% time seconds usecs/call calls [errors] syscall"; the total line is left out.
    awk -v n="$ios" -v who="${names[$i]}" -v p="$p" -v w="$w" '
      $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
        calls = $4; name = $NF; if (calls / n >= 0.01) printf "%s,%s,%s_syscall_%s,%.2f\n", p, w, who, name, calls / n }' \
      "$work/bd-strace-${names[$i]}.txt" >>"$BD_CSV"
  done
}

# 3. context switches by task (every thread's /proc/PID/task/TID/status, kernel threads too):
#    a voluntary switch is a sleep, so each one is a wake-up of that task later.
# ctx_by_kind: "KIND VOLUNTARY INVOLUNTARY" lines, KIND from the thread's name.
ctx_by_kind() {
  # One awk over every thread's status file (Name: is the thread's comm); a thread gone meanwhile
  # is skipped.
  awk '
    function flush() { if (name != "") { v[kind(name)] += vol; n[kind(name)] += inv } name = ""; vol = inv = 0 }
    function kind(c) {
      if (c ~ /^fio/) return "fio"
      if (c ~ /^kworker/) return "kworker"
      if (c ~ /^ksoftirq/) return "ksoftirqd"
      if (c ~ /^(vduse-bridge|qemu-storage)/) return "daemon"
      if (c ~ /^(nbdkit|tgtd)/) return "server"
      return "other"
    }
    FNR == 1 { flush() }
    /^Name:/ { name = $2 }
    /^voluntary_ctxt_switches:/ { vol = $2 }
    /^nonvoluntary_ctxt_switches:/ { inv = $2 }
    END { flush(); for (k in v) print k, v[k], n[k] }' /proc/[0-9]*/task/[0-9]*/status 2>/dev/null
}
bd_sched() {
  local p=$1 w=$2 qd=$3 json=$work/bd-ctx.json ios before after
  before=$(ctx_by_kind)
  bd_fio "$p" "$qd" "$RUNTIME" "$json"
  after=$(ctx_by_kind)
  ios=$(($(fio_ios "$json") + $(jq -r '.jobs[0].read.iops | floor' "$json") / 2))
  # Threads that exist only in one of the snapshots (fio's) count from 0.
  awk -v n="$ios" -v p="$p" -v w="$w" '
    FNR == NR { v0[$1] = $2; n0[$1] = $3; next }
    { dv = $2 - v0[$1]; dn = $3 - n0[$1]; if (dv < 0) dv = $2; if (dn < 0) dn = $3
      printf "%s,%s,sleeps_%s,%.2f\n%s,%s,preempted_%s,%.2f\n", p, w, $1, dv / n, p, w, $1, dn / n }' \
    <(echo "$before") <(echo "$after") >>"$BD_CSV"
}
disk_ios_of() { if [ -n "${dev[$1]:-}" ]; then disk_ios "${dev[$1]}"; else echo 0; fi; }

bd_run_all() {
  local p qd w
  for qd in ${VDUSE_BRIDGE_BENCH_BREAKDOWN_QD:-1 32}; do
    w=randread-4k-qd$qd
    for p in "${paths[@]}"; do
      echo "bench: breakdown $w on $p"
      bd_counters "$p" "$w" "$qd"
      bd_syscalls "$p" "$w" "$qd"
      bd_sched "$p" "$w" "$qd"
      grep "^$p,$w," "$BD_CSV" | cut -d, -f3,4 | tr '\n' ' ' | fold -s -w 160
      echo
    done
  done
  [ -z "${VDUSE_BRIDGE_BENCH_IRQ_CPUS:-}" ] || bd_irq_variants
}

# The VDUSE device behind a path's disk (its vDPA device holds the virtio device holding the disk).
vduse_name_of() {
  local d=${dev[$1]:-} n
  [ -n "$d" ] || return 1
  for n in /sys/class/vduse/*; do
    n=${n##*/}
    compgen -G "/sys/bus/vdpa/devices/$n/virtio*/block/${d#/dev/}" >/dev/null && { echo "$n" && return 0; }
  done
  return 1
}
# VDUSE_BRIDGE_BENCH_IRQ_CPUS="0 1": the counters of 4k randread qd1 and qd32 again with every
# queue's interrupt callback pinned to that CPU (/sys/class/vduse/NAME/vqN/irq_cb_affinity), for
# the paths with a VDUSE device; the kernel's own affinity is put back afterwards.
bd_irq_variants() {
  local p name cpu qd f saved
  for p in "${paths[@]}"; do
    name=$(vduse_name_of "$p") || continue
    for cpu in $VDUSE_BRIDGE_BENCH_IRQ_CPUS; do
      saved=()
      for f in /sys/class/vduse/"$name"/vq*/irq_cb_affinity; do
        saved+=("$f=$(cat "$f")")
        printf '%x' $((1 << cpu)) >"$f" || fail "cannot write $f"
      done
      for qd in ${VDUSE_BRIDGE_BENCH_BREAKDOWN_QD:-1 32}; do
        echo "bench: breakdown randread-4k-qd$qd on $p with its interrupts on CPU $cpu"
        bd_counters "$p@cpu$cpu" "randread-4k-qd$qd" "$qd"
        grep "^$p@cpu$cpu,randread-4k-qd$qd," "$BD_CSV" | cut -d, -f3,4 | tr '\n' ' '
        echo
      done
      for f in "${saved[@]}"; do echo "${f#*=}" >"${f%%=*}"; done
    done
  done
}
