#!/usr/bin/env bash
# The NBD server goes away under load and comes back: nbdkit's file plugin serves an image in tmpfs
# (so the data outlives nbdkit) on a unix socket.
#  1. reconnect-timeout: 60s. fio (randwrite, crc32c verify as it goes, time-bounded) runs while
#     nbdkit is SIGKILLed, stays down ~3 s and is started again on the same socket: I/O is held
#     meanwhile, fio ends with no error and its verification passes, the daemon logs a reconnect.
#  2. reconnect-timeout: 3s. nbdkit is SIGKILLed and kept down: reads and writes fail with EIO
#     (bounded by `timeout`: they must not hang), the daemon stays up, and once nbdkit is back the
#     disk reads the data written before the outage.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"
command -v fio >/dev/null || skip "fio not installed"

FIO_SECONDS=${VDUSE_BRIDGE_RESTART_FIO_SECONDS:-25}
OUTAGE_SECONDS=3
# What the daemon's log must contain after a reconnect (case-insensitive extended regex).
RECONNECT_LOG_RE=${VDUSE_BRIDGE_RECONNECT_LOG_RE:-reconnect}
sock=$work/nbd.sock
uri=$(nbd_unix_uri "$sock")
img=$work/disk.img # the guest's /tmp is tmpfs
nbd_config "$work/long.yaml" vbnbdrst0 "$uri" "queues: 2" \
  "backend.connections: 4" "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
nbd_config "$work/short.yaml" vbnbdrst1 "$uri" "queues: 2" \
  "backend.connections: 4" "backend.reconnect-timeout: 3s" "backend.request-timeout: 30s"
require_nbd_backend "$work/long.yaml"
require_nbd_backend "$work/short.yaml"
cd "$work" # fio writes verify state files into the current directory

truncate -s 256M "$img"
# start_server: nbdkit file plugin on $sock; a SIGKILLed nbdkit leaves its socket behind.
start_server() {
  rm -f "$sock"
  nbdkit_start srv -U "$sock" file file="$img"
}
start_server
echo "ok: nbdkit file $img ($(stat -f -c %T "$img")) on $sock (pid ${nbdkit_pids[srv]})"

# --- 1. outage shorter than reconnect-timeout ---------------------------------------------------
start_daemon "$work/long.yaml" vbnbdrst0
disk=/dev/$(disk_of vbnbdrst0)
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

writes_done() { awk '{ print $5 }' "/sys/block/$dname/stat"; }
in_flight() { awk '{ print $1 + $2 }' "/sys/block/$dname/inflight"; }
fio_busy() { [ "$(writes_done)" -ge 2000 ] || ! alive "$fio_pid"; }
wait_for 60 "fio to complete 2000 writes on $disk" fio_busy
alive "$fio_pid" || { cat "$work/fio.err" "$work/fio.txt"; fail "fio ended before the outage"; }
echo "ok: fio running ($(writes_done) writes done)"

nbdkit_kill srv KILL
t_kill=$SECONDS
echo "ok: nbdkit SIGKILLed with fio running"
sleep "$OUTAGE_SECONDS" # the outage itself, not a wait for readiness
held=$(in_flight)
alive "$fio_pid" || { cat "$work/fio.err" "$work/fio.txt"; fail "fio ended while the server was down"; }
daemon_alive || fail "the daemon died while the server was down"
[ "$held" -gt 0 ] || fail "no I/O in flight on $disk ${OUTAGE_SECONDS}s into the outage (expected it held)"
echo "ok: after ${OUTAGE_SECONDS}s without a server: $held requests held in flight, fio and daemon alive"
start_server
echo "ok: nbdkit started again on $sock (pid ${nbdkit_pids[srv]}), $((SECONDS - t_kill))s after the kill"

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
grep -Eiq "$RECONNECT_LOG_RE" "$daemon_log" || fail "the daemon log shows no reconnect (/$RECONNECT_LOG_RE/)"
echo "ok: daemon log: $(grep -Ei "$RECONNECT_LOG_RE" "$daemon_log" | tail -n 1)"

head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=200 oflag=direct status=none || fail "dd write after the reconnect failed"
sync "$disk"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=200 count=1 status=none) || fail "the image does not hold what was written"
echo "ok: writes after the reconnect reach the image"
stop_daemon

# --- 2. outage longer than reconnect-timeout ----------------------------------------------------
start_daemon "$work/short.yaml" vbnbdrst1
disk=/dev/$(disk_of vbnbdrst1)
echo "ok: $disk with reconnect-timeout 3s"
dd if="$work/pattern" of="$disk" bs=1M oflag=direct status=none || fail "dd write before the outage failed"
dd if="$disk" of="$work/back" bs=1M count=1 iflag=direct status=none || fail "dd read before the outage failed"
cmp "$work/pattern" "$work/back" || fail "read back before the outage differs"
nbdkit_kill srv KILL
rm -f "$sock"
echo "ok: nbdkit SIGKILLed, kept down"

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
disk_ready vbnbdrst1 || fail "$disk went away after the failed I/O"
echo "ok: the daemon is alive and $disk still there"

start_server
echo "ok: nbdkit started again (pid ${nbdkit_pids[srv]})"
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
echo "ok: writes succeed again"
stop_daemon
nbdkit_kill srv
