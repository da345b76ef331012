#!/usr/bin/env bash
# iSCSI multipath on the real kernel: one tgtd LUN reached through two paths, each a TCP proxy in
# the guest (lib/tcp-proxy.py) that is killed (a path cut: its connections close) and started
# again (restored). A 2-queue device with portals: [path B] and path-policy failover runs fio
# (randwrite 4k, 2 jobs at iodepth 16, crc32c verify as it goes) while path A and path B are cut
# and restored one after the other, $CYCLES times. Checks: fio ends with no error and its
# verification passes; the longest I/O fio saw (its completion latency maximum) stays under
# MAX_PAUSE_MS (the failover is a resubmission, not a reconnect-timeout); the daemon logged each
# path going and coming back; status shows failovers on the paths that were cut.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v fio >/dev/null || skip "fio not installed"
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || skip "python3 not installed (the path proxies)"
PROXY=$(cd "$(dirname "$0")/../lib" && pwd)/tcp-proxy.py

CYCLES=${VDUSE_BRIDGE_MULTIPATH_CYCLES:-3}
OUTAGE_SECONDS=2
# Below the outage: a write held until its path came back (no failover) would take longer.
MAX_PAUSE_MS=${VDUSE_BRIDGE_MULTIPATH_MAX_PAUSE_MS:-1500}
NAME=vbmpath0

truncate -s $((256 << 20)) "$work/lun.img"
tgtd_start
tgt_lun_add 1 "$work/lun.img"

free_port() {
  local p
  while :; do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] || { echo "$p" && return 0; }
  done
}
declare -A proxy_pid proxy_port
proxy_listens() { [ -n "$(ss -Hltn "sport = :${proxy_port[$1]}" 2>/dev/null)" ]; }
proxy_start() {
  "$PYTHON" "$PROXY" "${proxy_port[$1]}" "$tgtd_port" >>"$work/proxy-$1.log" 2>&1 &
  proxy_pid[$1]=$!
  wait_for 30 "path $1's proxy to listen" proxy_listens "$1"
}
proxy_cut() {
  kill -KILL "${proxy_pid[$1]}" 2>/dev/null || true
  wait "${proxy_pid[$1]}" 2>/dev/null || true
  proxy_pid[$1]=''
}
proxies_stop() {
  local p
  for p in a b; do [ -z "${proxy_pid[$p]:-}" ] || proxy_cut "$p"; done
}
on_cleanup proxies_stop
proxy_port[a]=$(free_port)
proxy_port[b]=$(free_port)
[ "${proxy_port[a]}" != "${proxy_port[b]}" ] || proxy_port[b]=$((proxy_port[a] + 1))
proxy_start a
proxy_start b
echo "ok: tgtd on 127.0.0.1:$tgtd_port, path A 127.0.0.1:${proxy_port[a]}, path B 127.0.0.1:${proxy_port[b]}"

iscsi_config "$work/mp.yaml" "$NAME" "iscsi://127.0.0.1:${proxy_port[a]}/$TGT_IQN/1" \
  "backend.portals: [\"127.0.0.1:${proxy_port[b]}\"]" "backend.path-policy: failover" \
  "backend.reconnect-timeout: 60s" "queues: 2"
require_iscsi_backend "$work/mp.yaml"
start_daemon "$work/mp.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
dname=${disk#/dev/}
echo "ok: $disk over two paths"
status_json() { "$DAEMON" status --json 2>/dev/null; }
paths_up() {
  status_json | "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin)["devices"][0]; sys.exit(0 if len(d["paths"]) == 2 and all(p["state"] == "up" for p in d["paths"]) else 1)'
}
wait_for 60 "both paths of every queue to log in" paths_up

cd "$work" # fio's verify state files
FIO_SECONDS=$((CYCLES * 4 * (OUTAGE_SECONDS + 2) + 10))
fio_pid=''
fio_stop() {
  if alive "$fio_pid"; then
    kill -TERM "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
  fi
}
on_cleanup fio_stop
timeout -k 10 $((FIO_SECONDS + 300)) fio --eta=never --name=multipath --filename="$disk" --direct=1 \
  --ioengine=libaio --iodepth=16 --numjobs=2 --offset_increment=64M --size=48M --rw=randwrite --bs=4k \
  --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_backlog=256 --time_based --runtime="$FIO_SECONDS" \
  --group_reporting --output-format=json --output="$work/fio.json" 2>"$work/fio.err" &
fio_pid=$!
writes_done() { awk '{ print $5 }' "/sys/block/$dname/stat"; }
fio_busy() { [ "$(writes_done)" -ge 300 ] || ! alive "$fio_pid"; }
wait_for 120 "fio to complete 300 writes on $disk" fio_busy

t0=$SECONDS
for cycle in $(seq 1 "$CYCLES"); do
  for p in a b; do
    alive "$fio_pid" || { cat "$work/fio.err"; fail "fio ended early (cycle $cycle, before cutting path $p)"; }
    before=$(writes_done)
    proxy_cut "$p"
    sleep "$OUTAGE_SECONDS"
    after=$(writes_done)
    [ "$after" -gt "$before" ] || fail "no write completed in ${OUTAGE_SECONDS}s with path $p cut (cycle $cycle)"
    proxy_start "$p"
    wait_for 60 "both paths to be up again after path $p came back (cycle $cycle)" paths_up
    echo "ok: cycle $cycle: path $p cut for ${OUTAGE_SECONDS}s, $((after - before)) writes meanwhile, back"
  done
done
echo "ok: $CYCLES cycles of cuts in $((SECONDS - t0))s"

rc=0
wait "$fio_pid" || rc=$?
fio_pid=''
case $rc in 124 | 137) fail "fio did not finish within $((FIO_SECONDS + 300))s" ;; esac
[ "$rc" -eq 0 ] || { cat "$work/fio.err"; fail "fio failed (exit $rc)"; }
read -r errors max_ms p99_ms < <("$PYTHON" -c '
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])  # fio may put notes before the JSON
jobs = j["jobs"]
errors = sum(job["error"] for job in jobs)
mx = max(job["write"]["clat_ns"]["max"] for job in jobs) / 1e6
p99 = max(job["write"]["clat_ns"]["percentile"].get("99.000000", 0) for job in jobs) / 1e6
print(errors, round(mx, 1), round(p99, 1))' "$work/fio.json")
[ -n "${errors:-}" ] || { head -c 2000 "$work/fio.json"; fail "fio's JSON output could not be read"; }
[ "$errors" = 0 ] || fail "fio reported $errors errors"
echo "ok: fio passed its verification; longest write ${max_ms} ms, p99 ${p99_ms} ms"
"$PYTHON" -c "import sys; sys.exit(0 if float('$max_ms') < $MAX_PAUSE_MS else 1)" ||
  fail "the longest write took ${max_ms} ms (more than ${MAX_PAUSE_MS} ms): a failover held I/O too long"

grep -q "path 0 (127.0.0.1:${proxy_port[a]}) is down" "$daemon_log" || fail "the daemon did not log path A going down"
grep -q "path 1 (127.0.0.1:${proxy_port[b]}) is down" "$daemon_log" || fail "the daemon did not log path B going down"
grep -q "path 0 (127.0.0.1:${proxy_port[a]}) is ready" "$daemon_log" || fail "the daemon did not log path A back"
failovers=$(status_json | "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin)["devices"][0]; print(" ".join(str(p["failovers"]) for p in d["paths"]))')
read -r fa fb <<<"$failovers"
[ "$fa" -gt 0 ] || fail "status shows no failover off path A"
echo "ok: failovers per path (status): A $fa, B $fb"
"$DAEMON" status | grep -q "Path 1: 127.0.0.1:${proxy_port[b]}: up" || fail "status text has no line for path B"
