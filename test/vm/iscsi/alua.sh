#!/usr/bin/env bash
# ALUA against a real ALUA target: the kernel's own (LIO) in the guest, one fileio LUN exported
# through two target portal groups, each with its own portal on loopback and its own ALUA target
# port group (pg_a, pg_b), whose states the test sets through configfs as an array's controller
# failover would. A 2-queue device with portals: discover (SendTargets on A must find B),
# path-policy round-robin (so that only ALUA keeps I/O off a path) and fencing: persistent-reservation (LIO's reservations) runs fio
# (randwrite 4k with crc32c verify) through four phases:
#   1. A active/optimized, B active/non-optimized: I/O goes to A only.
#   2. A standby (its in-flight commands refused with NOT READY 04/0B go to B), then B
#      active/optimized: I/O goes to B only.
#   3. both standby: I/O is held, not failed; A active/optimized again: it resumes on A.
#   4. B active/optimized too: both carry I/O (round-robin within the best rank).
# Per-port command counts come from LIO's own statistics. Checks: each phase's paths, status
# showing each path's ALUA state, fio ending with no error and its verification passing, the
# longest write below MAX_PAUSE_MS.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v fio >/dev/null || skip "fio not installed"
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || skip "python3 not installed"
if [ ! -d /sys/module/iscsi_target_mod ] || [ ! -d /sys/module/target_core_file ]; then
  skip "LIO (iscsi_target_mod, target_core_file) is not loaded in this kernel"
fi
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config ||
  fail "cannot mount configfs"
CFS=/sys/kernel/config/target
[ -d "$CFS/iscsi" ] || mkdir "$CFS/iscsi" 2>/dev/null || fail "no $CFS/iscsi (iscsi_target_mod)"

NAME=vbalua0
IQN=iqn.2026-12.org.vduse-bridge.vmtest:alua
DEV=$CFS/core/fileio_7/alua_lun
TGT=$CFS/iscsi/$IQN
PORT_A=3270
PORT_B=3271
HOLD_SECONDS=3
# Phase 3 holds I/O for HOLD_SECONDS, then the standby poll (1 s) and a round trip: a write
# failed over at once stays far below this, one held for ever never finishes.
MAX_PAUSE_MS=${VDUSE_BRIDGE_ALUA_MAX_PAUSE_MS:-$(((HOLD_SECONDS + 8) * 1000))}

lio_teardown() {
  local t
  for t in 1 2; do
    [ -d "$TGT/tpgt_$t" ] || continue
    echo 0 >"$TGT/tpgt_$t/enable" 2>/dev/null || true
    rmdir "$TGT/tpgt_$t/np/"* 2>/dev/null || true
    rm -f "$TGT/tpgt_$t/lun/lun_0/"*_lun 2>/dev/null || true
    rmdir "$TGT/tpgt_$t/lun/lun_0" "$TGT/tpgt_$t" 2>/dev/null || true
  done
  rmdir "$TGT" 2>/dev/null || true
  rmdir "$DEV/alua/pg_a" "$DEV/alua/pg_b" "$DEV" "${DEV%/*}" 2>/dev/null || true
}
on_cleanup lio_teardown
w() { echo "$2" >"$1" || fail "configfs: cannot write '$2' to $1"; }

truncate -s $((256 << 20)) "$work/lun.img"
# LIO writes its persistent-reservation state under db_root/pr at every PERSISTENT RESERVE OUT
# (APTPL or not), and fails the command when it cannot: the default /var/target is read-only here.
# It writes from a kernel thread, whose root is the initramfs, not this chroot: a directory on
# devtmpfs has the same path in both.
LIO_DB=/dev/vduse-bridge-lio-db
mkdir -p "$LIO_DB/pr"
on_cleanup rm -rf "$LIO_DB"
echo "$LIO_DB" >"$CFS/dbroot" 2>/dev/null ||
  [ "$(cat "$CFS/dbroot")" = "$LIO_DB" ] || fail "configfs: cannot set LIO's db_root to $LIO_DB"
mkdir -p "$DEV" || fail "configfs: cannot make a fileio device"
w "$DEV/control" "fd_dev_name=$work/lun.img,fd_dev_size=$((256 << 20))"
w "$DEV/wwn/vpd_unit_serial" "vduse-bridge-alua-0001"
w "$DEV/enable" 1
mkdir "$DEV/alua/pg_a" "$DEV/alua/pg_b" || fail "configfs: cannot make the ALUA groups"
w "$DEV/alua/pg_a/tg_pt_gp_id" 10
w "$DEV/alua/pg_b/tg_pt_gp_id" 20
port_of() { if [ "$1" = 1 ]; then echo $PORT_A; else echo $PORT_B; fi; }
for t in 1 2; do
  mkdir -p "$TGT/tpgt_$t/lun/lun_0" || fail "configfs: cannot make tpgt_$t"
  ln -s "$DEV" "$TGT/tpgt_$t/lun/lun_0/alua_lun" || fail "configfs: cannot map the LUN in tpgt_$t"
  mkdir "$TGT/tpgt_$t/np/127.0.0.1:$(port_of $t)" || fail "configfs: cannot listen on port $(port_of $t)"
  w "$TGT/tpgt_$t/attrib/authentication" 0
  w "$TGT/tpgt_$t/attrib/generate_node_acls" 1
  w "$TGT/tpgt_$t/attrib/cache_dynamic_acls" 1
  w "$TGT/tpgt_$t/attrib/demo_mode_write_protect" 0
  w "$TGT/tpgt_$t/enable" 1
done
w "$TGT/tpgt_1/lun/lun_0/alua_tg_pt_gp" pg_a
w "$TGT/tpgt_2/lun/lun_0/alua_tg_pt_gp" pg_b
# 0 active/optimized, 1 active/non-optimized, 2 standby
set_state() { w "$DEV/alua/pg_$1/alua_access_state" "$2"; }
set_state a 0
set_state b 1
echo "ok: LIO target $IQN: path A 127.0.0.1:$PORT_A (pg_a), path B 127.0.0.1:$PORT_B (pg_b)"

iscsi_config "$work/alua.yaml" "$NAME" "iscsi://127.0.0.1:$PORT_A/$IQN/0" \
  "backend.portals: discover" "backend.path-policy: round-robin" \
  "backend.fencing: persistent-reservation" "backend.reconnect-timeout: 60s" "queues: 2"
require_iscsi_backend "$work/alua.yaml"
start_daemon "$work/alua.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
echo "ok: $disk over two ALUA paths"

status_json() { "$DAEMON" status --json 2>/dev/null; }
# alua_is A-STATE B-STATE: status shows these ALUA states and both paths up.
alua_is() {
  status_json >"$work/status.json"
  "$PYTHON" -c '
import json, sys
p = json.load(sys.stdin)["devices"][0]["paths"]
sys.exit(0 if len(p) == 2 and all(x["state"] == "up" for x in p) and [x["alua"] for x in p] == sys.argv[1:] else 1)' \
    "$@" <"$work/status.json"
}
# wait_alua WHAT A-STATE B-STATE: alua_is within 30 s, or fails showing the last status.
wait_alua() {
  local what=$1
  shift
  local deadline=$((SECONDS + 30))
  until alua_is "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$work/status.json"; fail "status did not show $what within 30s"; }
    sleep 0.05
  done
}
wait_for 60 "both paths up, A active/optimized and B active/non-optimized" alua_is active/optimized active/non-optimized
echo "ok: status shows path A active/optimized, path B active/non-optimized"

cmds() { cat "$TGT/tpgt_$1/lun/lun_0/statistics/scsi_tgt_port/in_cmds"; }
dname=${disk#/dev/}
writes_done() { awk '{ print $5 }' "/sys/block/$dname/stat"; }
# phase NAME SECONDS: the commands each port received, and the writes done, over SECONDS.
phase() {
  local a0 b0 w0
  a0=$(cmds 1) b0=$(cmds 2) w0=$(writes_done)
  sleep "$2"
  da=$(($(cmds 1) - a0)) db=$(($(cmds 2) - b0)) dw=$(($(writes_done) - w0))
  echo "ok: $1: ${2}s, port A $da commands, port B $db commands, $dw writes"
}

cd "$work" # fio's verify state files
FIO_SECONDS=60
fio_pid=''
fio_stop() {
  if alive "$fio_pid"; then
    kill -TERM "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
  fi
}
on_cleanup fio_stop
timeout -k 10 $((FIO_SECONDS + 300)) fio --eta=never --name=alua --filename="$disk" --direct=1 \
  --ioengine=libaio --iodepth=16 --numjobs=2 --offset_increment=64M --size=48M --rw=randwrite --bs=4k \
  --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_backlog=256 --time_based --runtime="$FIO_SECONDS" \
  --group_reporting --output-format=json --output="$work/fio.json" 2>"$work/fio.err" &
fio_pid=$!
fio_busy() { [ "$(writes_done)" -ge 300 ] || ! alive "$fio_pid"; }
wait_for 120 "fio to complete 300 writes on $disk" fio_busy
alive "$fio_pid" || { cat "$work/fio.err"; fail "fio ended early"; }

# A non-optimized path carries nothing while an optimized one is there (the RTPG polls, one per
# queue every 5 s, are all B may see).
phase "phase 1 (A optimized, B non-optimized)" 4
[ "$da" -gt 100 ] || fail "phase 1: port A received only $da commands"
[ "$db" -le 10 ] || fail "phase 1: port B (non-optimized) received $db commands while A was optimized"

set_state a 2
sleep 1
set_state b 0
wait_alua "A standby, B active/optimized" standby active/optimized
phase "phase 2 (A standby, B optimized)" 4
[ "$db" -gt 100 ] || fail "phase 2: port B received only $db commands"
# The standby port hears the RTPG polls (one per queue each second), nothing else.
[ "$da" -le 20 ] || fail "phase 2: port A (standby) received $da commands"

set_state b 2
wait_alua "both standby" standby standby
phase "phase 3 (both standby: I/O held)" "$HOLD_SECONDS"
alive "$fio_pid" || { cat "$work/fio.err"; fail "fio ended while no path took I/O"; }
[ "$dw" -le 40 ] || fail "phase 3: $dw writes completed with both ports in standby"
set_state a 0
wait_alua "A active/optimized again" active/optimized standby
phase "phase 3 (A optimized again)" 3
[ "$da" -gt 50 ] || fail "phase 3: I/O did not resume on port A ($da commands)"

set_state b 0
wait_alua "both active/optimized" active/optimized active/optimized
phase "phase 4 (both optimized, round-robin)" 4
if [ "$da" -le 50 ] || [ "$db" -le 50 ]; then
  fail "phase 4: round-robin did not use both ports (A $da, B $db)"
fi

rc=0
wait "$fio_pid" || rc=$?
fio_pid=''
case $rc in 124 | 137) fail "fio did not finish within $((FIO_SECONDS + 300))s" ;; esac
[ "$rc" -eq 0 ] || { cat "$work/fio.err"; fail "fio failed (exit $rc)"; }
read -r errors max_ms < <("$PYTHON" -c '
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])
print(sum(job["error"] for job in j["jobs"]), round(max(job["write"]["clat_ns"]["max"] for job in j["jobs"]) / 1e6, 1))' \
  "$work/fio.json")
[ "${errors:-x}" = 0 ] || fail "fio reported ${errors:-unreadable} errors"
echo "ok: fio passed its verification; longest write ${max_ms} ms (phase 3 held I/O for ${HOLD_SECONDS}s)"
"$PYTHON" -c "import sys; sys.exit(0 if float('$max_ms') < $MAX_PAUSE_MS else 1)" ||
  fail "the longest write took ${max_ms} ms (more than ${MAX_PAUSE_MS} ms)"
grep -q "ALUA state standby, it was active/optimized" "$daemon_log" || fail "the daemon did not log path A going standby"
"$DAEMON" status | grep -q "Path 1: 127.0.0.1:$PORT_B: up .*ALUA active/optimized" ||
  fail "status text does not show path B's ALUA state"
