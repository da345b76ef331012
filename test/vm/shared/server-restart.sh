# shellcheck shell=bash
# The server-restart check, the same for every backend with a server (sourced by
# nbd/server-restart.sh and iscsi/target-restart.sh after they set BACKEND). The server goes away
# under load and comes back; it serves an image in tmpfs ($be_where), so the data outlives it.
#  1. reconnect-timeout: 60s, a 2-queue device. fio (randwrite 4k, 2 jobs at iodepth 16, crc32c
#     verify as it goes, time-bounded: $be_restart_fio_seconds s) runs while the server is
#     SIGKILLed, stays down ~3 s and is started again on the same address: I/O is held meanwhile
#     (requests in flight, fio and daemon alive), fio ends with no error and its verification
#     passes, the daemon logs the reconnect ($be_reconnect_log_res), writes after it reach the image.
#  2. (backends with be_eio_after_timeout) reconnect-timeout: 3s. The server is SIGKILLed and kept
#     down: reads and writes fail with EIO (bounded by `timeout`: they must not hang; the first one
#     only after being held), the daemon stays up and the disk stays; once the server is back the
#     disk reads the data written before the outage, and writes succeed.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "${BASH_SOURCE[0]}")/../lib/backend.sh"
command -v fio >/dev/null || skip "fio not installed"
[ "$be_has_server" = 1 ] || fail "shared/server-restart.sh: $be_label has no server to restart"

FIO_SECONDS=$be_restart_fio_seconds
OUTAGE_SECONDS=3
NAME=vb${BACKEND}rst0 SHORT_NAME=vb${BACKEND}rst1
be_server_start $((256 << 20))
echo "ok: $be_server: $be_where, 256 MiB"
be_config "$work/long.yaml" "$NAME" "queues: 2" "backend.reconnect-timeout: 60s" "${be_keys[@]}"
be_config "$work/short.yaml" "$SHORT_NAME" "queues: 2" "backend.reconnect-timeout: 3s" "${be_keys[@]}"
be_require "$work/long.yaml"
be_require "$work/short.yaml"
cd "$work" # fio writes verify state files into the current directory

# --- 1. outage shorter than reconnect-timeout ---------------------------------------------------
start_daemon "$work/long.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
dname=${disk#/dev/}
echo "ok: $disk with reconnect-timeout 60s"

fio_pid=''
fio_stop() {
  if alive "$fio_pid"; then
    kill -TERM "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
  fi
}
on_cleanup fio_stop
# verify_backlog: a time-based write job never reaches a verify phase, so verify as it goes.
timeout -k 10 $((FIO_SECONDS + 240)) fio --eta=never --name=restart --filename="$disk" --direct=1 \
  --ioengine=libaio --iodepth=16 --numjobs=2 --offset_increment=64M --size=48M --rw=randwrite --bs=4k \
  --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_backlog=256 --time_based --runtime="$FIO_SECONDS" \
  --group_reporting --output-format=terse --terse-version=3 --output="$work/fio.txt" 2>"$work/fio.err" &
fio_pid=$!
t_fio=$SECONDS

writes_done() { awk '{ print $5 }' "/sys/block/$dname/stat"; }
in_flight() { awk '{ print $1 + $2 }' "/sys/block/$dname/inflight"; }
# A few hundred writes show fio is under way; more would eat into its runtime on a slow, shared
# CI machine (2000 writes once took all of iSCSI's 20 s, so fio ended during the outage).
fio_busy() { [ "$(writes_done)" -ge 300 ] || ! alive "$fio_pid"; }
wait_for 60 "fio to complete 300 writes on $disk" fio_busy
alive "$fio_pid" || { cat "$work/fio.err" "$work/fio.txt"; fail "fio ended before the outage"; }
echo "ok: fio running ($(writes_done) writes done)"

be_server_kill KILL
t_kill=$SECONDS
echo "ok: $be_server SIGKILLed with fio running"
sleep "$OUTAGE_SECONDS" # the outage itself, not a wait for readiness
held=$(in_flight)
alive "$fio_pid" || {
  cat "$work/fio.err" "$work/fio.txt"
  fail "fio ended while the server was down (the kill came $((t_kill - t_fio))s into its ${FIO_SECONDS}s)"
}
daemon_alive || fail "the daemon died while the server was down"
[ "$held" -gt 0 ] || fail "no I/O in flight on $disk ${OUTAGE_SECONDS}s into the outage (expected it held)"
echo "ok: after ${OUTAGE_SECONDS}s without a server: $held requests held in flight, fio and daemon alive"
be_server_restart
echo "ok: $be_server started again on the same address, $((SECONDS - t_kill))s after the kill"

rc=0
wait "$fio_pid" || rc=$?
fio_pid=''
case $rc in 124 | 137) fail "fio did not finish within $((FIO_SECONDS + 240))s" ;; esac
[ "$rc" -eq 0 ] || { cat "$work/fio.err" "$work/fio.txt"; fail "fio failed (exit $rc)"; }
# Terse v3: field 5 error, 6 KiB read (the verify reads), 47 KiB written.
read -r errors read_kib write_kib < <(awk -F';' '$1 == 3 { print $5, $6, $47 }' "$work/fio.txt")
[ "${errors:-}" = 0 ] || { cat "$work/fio.txt"; fail "fio reported error '${errors:-none}'"; }
[ "${read_kib:-0}" -gt 0 ] || { cat "$work/fio.txt"; fail "fio verified nothing (no verify reads)"; }
echo "ok: fio randwrite verify=crc32c finished with no error: ${write_kib} KiB written, ${read_kib} KiB verified"
for re in "${be_reconnect_log_res[@]}"; do
  grep -Eiq "$re" "$daemon_log" || fail "the daemon log shows no reconnect (/$re/)"
  echo "ok: daemon log: $(grep -Ei "$re" "$daemon_log" | tail -n 1 | cut -c1-160)"
done

pattern_make 1
dd if="$work/pattern" of="$disk" bs=1M seek=200 oflag=direct status=none || fail "dd write after the reconnect failed"
sync "$disk"
cmp "$work/pattern" <(dd if="$be_img" bs=1M skip=200 count=1 status=none) || fail "the image does not hold what was written"
echo "ok: writes after the reconnect reach the image"
stop_daemon

# --- 2. outage longer than reconnect-timeout ----------------------------------------------------
# RESTART_PAST_TIMEOUT=0 (set by the entry script) leaves this part out.
if [ "$be_eio_after_timeout" != 1 ] || [ "${RESTART_PAST_TIMEOUT:-1}" = 0 ]; then
  echo "note: $be_label: I/O past reconnect-timeout is not checked here"
  be_server_stop
  return 0
fi
t_short=$SECONDS
start_daemon "$work/short.yaml" "$SHORT_NAME"
disk=/dev/$(disk_of "$SHORT_NAME")
echo "ok: $disk with reconnect-timeout 3s"
dd if="$work/pattern" of="$disk" bs=1M oflag=direct status=none || fail "dd write before the outage failed"
dd if="$disk" of="$work/back" bs=1M count=1 iflag=direct status=none || fail "dd read before the outage failed"
cmp "$work/pattern" "$work/back" || fail "read back before the outage differs"
be_server_kill KILL
echo "ok: $be_server SIGKILLed, kept down"

# expect_eio WHAT MIN-SECONDS DD-ARGS...: dd must fail with EIO, not before MIN-SECONDS (held
# until reconnect-timeout) and within 60 s.
expect_eio() {
  local what=$1 min=$2 rc=0 t0=$EPOCHREALTIME took
  shift 2
  timeout -k 5 60 dd "$@" status=none 2>"$work/dd.err" || rc=$?
  took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  case $rc in 124 | 137) fail "$what hung: no answer after 60s with reconnect-timeout 3s" ;; esac
  [ "$rc" -ne 0 ] || fail "$what succeeded with the server down past reconnect-timeout"
  grep -q "Input/output error" "$work/dd.err" || fail "$what failed, but not with EIO: $(cat "$work/dd.err")"
  awk -v t="$took" -v m="$min" 'BEGIN { exit !(t >= m) }' ||
    fail "$what failed after ${took}s: not held for reconnect-timeout (3s) first"
  echo "ok: $what: EIO after ${took}s"
}
# The first read starts right after the kill: held until reconnect-timeout runs out (some slack
# for when the daemon noticed), then EIO. Later I/O fails at once or after another hold.
expect_eio "a read issued right after the kill" 1.5 if="$disk" of=/dev/null bs=4k count=1 skip=10 iflag=direct
expect_eio "a later read" 0 if="$disk" of=/dev/null bs=4k count=1 skip=20 iflag=direct
expect_eio "a later write" 0 if="$work/pattern" of="$disk" bs=4k count=1 seek=30 oflag=direct
daemon_alive || fail "the daemon exited after failing I/O"
disk_ready "$SHORT_NAME" || fail "$disk went away after the failed I/O"
echo "ok: the daemon is alive and $disk still there"

be_server_restart
echo "ok: $be_server started again"
reads_again() {
  if timeout -k 5 30 dd if="$disk" of="$work/back" bs=1M count=1 iflag=direct status=none 2>/dev/null; then
    cmp -s "$work/pattern" "$work/back" || fail "reads work again but return other data than was written"
    return 0
  fi
  sleep 0.5 # each failed try is a kernel I/O error message: not too many of them
  return 1
}
wait_for 120 "reads through $disk to succeed again" reads_again
echo "ok: reads succeed again and return the data written before the outage"
dd if="$work/pattern" of="$disk" bs=4k count=1 seek=30 oflag=direct status=none || fail "a write after the server returned failed"
echo "ok: writes succeed again (the outage past reconnect-timeout took $((SECONDS - t_short))s)"
stop_daemon
be_server_stop
