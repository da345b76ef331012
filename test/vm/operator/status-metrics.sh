#!/usr/bin/env bash
# Observability: while fio reads a known number of blocks, `vduse-bridge status` and the
# Prometheus endpoint (--metrics-listen on loopback) must show them: the read counter covers what
# fio did (plus the few reads the kernel makes when the disk appears), the latency histogram
# counts every read, the backend is up, and a second daemon is refused by the live control socket.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
command -v fio >/dev/null || skip "fio not installed"

port=$((20000 + RANDOM % 20000))
memory_config "$work/m.yaml" vbopstat0 64M "queues: 2"
daemon_runs=$((daemon_runs + 1))
daemon_log=$work/daemon.$daemon_runs.log
"$DAEMON" --config "$work/m.yaml" --metrics-listen "127.0.0.1:$port" >"$daemon_log" 2>&1 &
daemon_pid=$!
wait_for 60 "the daemon to serve" serving
wait_for 30 "the disk" disk_ready vbopstat0
disk=/dev/$(disk_of vbopstat0)

metric() { # NAME LABELS: the value of one sample from `vduse-bridge metrics`
  "$DAEMON" metrics | awk -v m="$1{$2}" 'index($0, m) == 1 { print $2 }'
}
before=$(metric vduse_bridge_requests_total 'device="vbopstat0",op="read"')
fio --eta=never --name=count --filename="$disk" --direct=1 --ioengine=libaio --iodepth=8 --rw=randread --bs=4k \
  --size=32M --number_ios=3000 --output-format=terse --terse-version=3 --output="$work/fio.txt" ||
  fail "fio failed"
ios=$(awk -F';' '$1 == 3 { print $6 / 4 }' "$work/fio.txt")
after=$(metric vduse_bridge_requests_total 'device="vbopstat0",op="read"')
delta=$((after - before))
echo "ok: fio read $ios blocks; the read counter went from $before to $after"
{ [ "$delta" -ge "$ios" ] && [ "$delta" -le $((ios + 50)) ]; } || fail "the counter moved by $delta, fio did $ios reads"
hist=$(metric vduse_bridge_request_duration_seconds_count 'device="vbopstat0",op="read"')
[ "${hist:-0}" -ge "$after" ] || fail "the read latency histogram counts ${hist:-none}, the counter $after"
[ "$(metric vduse_bridge_backend_up 'device="vbopstat0"')" = 1 ] || fail "backend_up is not 1"
echo "ok: latency histogram counts $hist reads; backend_up 1"

exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
http=$(cat <&3)
exec 3<&-
grep -q "^HTTP/1.[01] 200" <<<"$http" || fail "GET /metrics: $(head -n 1 <<<"$http")"
grep -q "^vduse_bridge_requests_total{device=\"vbopstat0\",op=\"read\"} " <<<"$http" || fail "no read counter over HTTP"
echo "ok: http://127.0.0.1:$port/metrics answers with the same counters"

"$DAEMON" status >"$work/status.txt" || fail "vduse-bridge status failed"
{ grep -q "vbopstat0" "$work/status.txt" && grep -q "connected" "$work/status.txt"; } ||
  { cat "$work/status.txt"; fail "status does not show the device and its backend"; }
echo "ok: vduse-bridge status:"
sed 's/^/    /' "$work/status.txt"

memory_config "$work/other.yaml" vbopstat1 16M
rc=0
timeout -k 5 30 "$DAEMON" --config "$work/other.yaml" >"$work/second.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a second daemon started next to the first"
grep -q "another vduse-bridge is running" "$work/second.log" || { cat "$work/second.log"; fail "unclear refusal"; }
[ ! -e /dev/vduse/vbopstat1 ] || fail "the refused daemon created its device"
echo "ok: a second daemon is refused: $(head -n 1 "$work/second.log" | cut -c1-100)..."
stop_daemon
