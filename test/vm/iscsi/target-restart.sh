#!/usr/bin/env bash
# tgtd goes away under load and comes back: fio (randwrite, crc32c verify as it goes, time-bounded,
# 2 jobs at iodepth 16 on a 2-queue device) runs while tgtd is SIGKILLed, stays down ~3 s and is
# started again on the same port with the same target and LUN (the backing file on tmpfs keeps the
# data). I/O is held meanwhile; fio ends with no error and its verification passes; the daemon
# logs the lost sessions and the new logins; writes after the reconnect reach the backing file.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v fio >/dev/null || skip "fio not installed"

FIO_SECONDS=${VDUSE_BRIDGE_RESTART_FIO_SECONDS:-20}
OUTAGE_SECONDS=3
img=$work/lun1.img
tgtd_start
truncate -s 256M "$img"
tgt_lun_add 1 "$img"
echo "ok: tgtd (pid $tgtd_pid) on 127.0.0.1:$tgtd_port, LUN 1: 256 MiB on tmpfs"
iscsi_config "$work/c.yaml" vbiscsirst0 "$(iscsi_uri 1)" "queues: 2" \
  "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
require_iscsi_backend "$work/c.yaml"
cd "$work" # fio writes verify state files into the current directory

start_daemon "$work/c.yaml" vbiscsirst0
disk=/dev/$(disk_of vbiscsirst0)
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

tgtd_kill KILL
t_kill=$SECONDS
echo "ok: tgtd SIGKILLed with fio running"
sleep "$OUTAGE_SECONDS" # the outage itself, not a wait for readiness
held=$(in_flight)
alive "$fio_pid" || { cat "$work/fio.err" "$work/fio.txt"; fail "fio ended while the target was down"; }
daemon_alive || fail "the daemon died while the target was down"
[ "$held" -gt 0 ] || fail "no I/O in flight on $disk ${OUTAGE_SECONDS}s into the outage (expected it held)"
echo "ok: after ${OUTAGE_SECONDS}s without a target: $held requests held in flight, fio and daemon alive"
tgtd_start
echo "ok: tgtd started again on 127.0.0.1:$tgtd_port (pid $tgtd_pid) with the same target and LUN," \
  "$((SECONDS - t_kill))s after the kill"

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
grep -q "session lost" "$daemon_log" || fail "the daemon log shows no lost session"
grep -q "logged in again" "$daemon_log" || fail "the daemon log shows no new login"
echo "ok: daemon log: $(grep "session lost" "$daemon_log" | head -n 1 | cut -c1-160)"
echo "ok: daemon log: $(grep "logged in again" "$daemon_log" | tail -n 1 | cut -c1-160)"

head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=200 oflag=direct status=none || fail "dd write after the reconnect failed"
sync "$disk"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=200 count=1 status=none) || fail "the backing file does not hold what was written"
echo "ok: writes after the reconnect reach the backing file"
stop_daemon
