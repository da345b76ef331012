#!/usr/bin/env bash
# A host whose storage comes up after the daemon (issue 14, start-up and isolation).
#  1. Device A's NBD server does not exist yet (its socket is missing), device B is memory: the
#     daemon stays up and serves B at once; `status A` says waiting, with the error, and exits 3;
#     `list` names both. A's server appears 20 s later: A's disk appears within the retry
#     interval (30 s at most) and `status` exits 0. The service manager hears READY=1 once B
#     serves and A waits, with STATUS= naming A, and a new STATUS= once A serves too.
#  2. Device C's server never comes up, device E's server accepts and never answers (nbdkit
#     SIGSTOPped: its handshake bound is 30 s), device D is memory: D is served; `status` answers
#     within a second while E's connect hangs; SIGTERM ends the daemon within 1 s, exit 0.
#  3. A daemon with no device: `add FILE` returns once the device serves (its drop-in written),
#     adding it twice exits 1, a restart brings it back, `reload` of a broken drop-in exits 1
#     naming the problem and changes nothing, `reload` of a setting a running device cannot take
#     exits 1 naming the device, a reload adding a device whose server is missing
#     exits 3 naming it waiting while the others serve on, `remove` returns once the disk is gone.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/nbd.sh"
command -v nbdkit >/dev/null || skip "nbdkit not installed"

# ms_since T0: milliseconds since $EPOCHREALTIME was T0.
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
status_rc() { # NAME: the exit status of `vduse-bridge status NAME`
  local rc=0
  "$DAEMON" status "$1" >"$work/status.out" 2>&1 || rc=$?
  echo "$rc"
}
launch() { # CONFIG: the daemon in the background, without waiting for its devices
  daemon_runs=$((daemon_runs + 1))
  daemon_log=$work/daemon.$daemon_runs.log
  "$DAEMON" --config "$1" >"$daemon_log" 2>&1 &
  daemon_pid=$!
}

# --- 1. a server that appears 20 s after the daemon -----------------------------------------
sock=$work/late.sock
cat >"$work/late.yaml" <<EOF
devices:
  - name: vblatea0
    backend:
      type: nbd
      uri: "nbd+unix:///?socket=$sock"
  - name: vblateb0
    backend:
      type: memory
      size: 16M
EOF
# A stand-in for systemd's notification socket: each datagram a line of notify.log.
notify=$work/notify.sock
python3 - "$notify" "$work/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        out.write(s.recv(4096).decode(errors="replace").replace("\n", " ") + "\n")
PY
notify_pid=$!
on_cleanup kill "$notify_pid"
notify_bound() { [ -S "$notify" ]; }
wait_for 10 "the notification socket" notify_bound
t0=$SECONDS
NOTIFY_SOCKET=$notify launch "$work/late.yaml"
wait_for 30 "the memory device B to be served" disk_ready vblateb0
daemon_alive || fail "the daemon exited with A's server missing"
echo "ok: B served $((SECONDS - t0))s after start, with A's server missing"
waiting_logged() { grep -q "vblatea0: .*tried again in the background" "$daemon_log"; }
wait_for 10 "the log to say A is retried" waiting_logged
rc=$(status_rc vblatea0)
[ "$rc" = 3 ] || fail "status vblatea0 exited $rc with A waiting (expected 3): $(cat "$work/status.out")"
grep -q "waiting" "$work/status.out" || fail "status does not say A is waiting: $(cat "$work/status.out")"
grep -q "$sock" "$work/status.out" || grep -qi "no such file" "$work/status.out" ||
  fail "status does not give A's last error: $(cat "$work/status.out")"
echo "ok: status vblatea0 exit 3: $(grep -i waiting "$work/status.out" | head -n 1 | cut -c1-150)"
"$DAEMON" list >"$work/list.out" || true
for name in vblatea0 vblateb0; do
  grep -q "$name" "$work/list.out" || fail "list lacks $name: $(cat "$work/list.out")"
done
[ "$(status_rc vblateb0)" = 0 ] || fail "status vblateb0 is not 0 with B serving: $(cat "$work/status.out")"
ready_heard() { grep -q "READY=1" "$work/notify.log" 2>/dev/null; }
wait_for 10 "READY=1 on the notification socket" ready_heard
grep "READY=1" "$work/notify.log" | head -n 1 | grep -q "STATUS=serving 1 device(s); waiting for vblatea0" ||
  fail "READY=1 does not come with the waiting device named: $(cat "$work/notify.log")"
echo "ok: READY=1 with B serving and A waiting: $(grep READY=1 "$work/notify.log" | head -n 1)"

sleep $((20 - (SECONDS - t0) > 0 ? 20 - (SECONDS - t0) : 0))
nbdkit_start late -U "$sock" memory 32M
t_server=$SECONDS
echo "ok: A's server started $((SECONDS - t0))s after the daemon"
wait_for 45 "A's disk once its server is up" disk_ready vblatea0
echo "ok: A's disk /dev/$(disk_of vblatea0) appeared $((SECONDS - t_server))s after its server"
dd if=/dev/urandom of="$work/pattern" bs=64k count=1 status=none
dd if="$work/pattern" of="/dev/$(disk_of vblatea0)" bs=64k oflag=direct status=none || fail "write to A failed"
cmp <(dd if="/dev/$(disk_of vblatea0)" bs=64k count=1 iflag=direct status=none) "$work/pattern" ||
  fail "A does not read back what was written"
rc=$(status_rc vblatea0)
[ "$rc" = 0 ] || fail "status vblatea0 exited $rc with A serving: $(cat "$work/status.out")"
echo "ok: A serves I/O, status exits 0"
grep -q "STATUS=serving 2 device(s)$" "$work/notify.log" ||
  fail "no STATUS= once both devices serve: $(cat "$work/notify.log")"
[ "$(grep -c READY=1 "$work/notify.log")" = 1 ] || fail "READY=1 was sent more than once: $(cat "$work/notify.log")"
echo "ok: STATUS= followed A: $(tail -n 1 "$work/notify.log")"
stop_daemon
nbdkit_kill late

# --- 2. one server never comes up, another accepts and never answers --------------------------
nbdkit_start_tcp stopped memory 32M
kill -STOP "${nbdkit_pids[stopped]}"
cat >"$work/stuck.yaml" <<EOF
devices:
  - name: vbneverc0
    backend:
      type: nbd
      uri: "nbd+unix:///?socket=$work/never.sock"
  - name: vbstucke0
    backend:
      type: nbd
      uri: "nbd://127.0.0.1:${nbdkit_ports[stopped]}/"
  - name: vbstuckd0
    backend:
      type: memory
      size: 16M
EOF
launch "$work/stuck.yaml"
wait_for 30 "the memory device D to be served" disk_ready vbstuckd0
echo "ok: D served; C's server is missing, E's is SIGSTOPped"
t=$EPOCHREALTIME
rc=$(status_rc vbstucke0)
took=$(ms_since "$t")
[ "$took" -lt 1000 ] || fail "status took ${took}ms while E's connect hangs (expected under 1 s)"
[ "$rc" = 3 ] || fail "status vbstucke0 exited $rc while E is not served (expected 3): $(cat "$work/status.out")"
echo "ok: status answered in ${took}ms (E: $(grep -Ei 'starting|waiting' "$work/status.out" | head -n 1 | cut -c1-100))"
t=$EPOCHREALTIME
kill -TERM "$daemon_pid"
wait_gone "$daemon_pid" 10 || fail "the daemon did not exit within 10 s of SIGTERM"
took=$(ms_since "$t")
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=''
[ "$rc" = 0 ] || fail "the daemon exited $rc after SIGTERM"
[ "$took" -lt 1000 ] || fail "the daemon took ${took}ms to exit after SIGTERM (expected under 1 s)"
echo "ok: SIGTERM: exit 0 after ${took}ms with E's connect hanging"
kill -CONT "${nbdkit_pids[stopped]}"
nbdkit_kill stopped

# --- 3. add, remove and reload wait for their result and say it in the exit status ------------
cat >"$work/main.yaml" <<EOF
devices: []
EOF
mkdir -p "$work/main.d"
launch "$work/main.yaml"
ready() { "$DAEMON" list >/dev/null 2>&1; }
wait_for 30 "the daemon with no device to answer" ready
cat >"$work/extra.yaml" <<EOF
devices:
  - name: vbaddf0
    backend:
      type: memory
      size: 16M
EOF
rc=0
"$DAEMON" add "$work/extra.yaml" >"$work/add.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "add exited $rc: $(cat "$work/add.out")"
disk_ready vbaddf0 || fail "add returned before the disk of vbaddf0 exists: $(cat "$work/add.out")"
[ -f "$work/main.d/vbaddf0.yaml" ] || fail "add wrote no drop-in file $work/main.d/vbaddf0.yaml"
echo "ok: add: vbaddf0 serves as /dev/$(disk_of vbaddf0) when add returns ($(tr '\n' ' ' <"$work/add.out" | cut -c1-120))"
rc=0
"$DAEMON" add "$work/extra.yaml" >"$work/add.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "adding vbaddf0 twice exited $rc (expected 1): $(cat "$work/add.out")"
echo "ok: add again: exit 1: $(head -n 1 "$work/add.out" | cut -c1-120)"
# A restart keeps it: the drop-in is part of the configuration.
stop_daemon
launch "$work/main.yaml"
wait_for 30 "vbaddf0 after a restart" disk_ready vbaddf0
echo "ok: vbaddf0 is back after a restart (from its drop-in)"
# A broken file: reload fails and changes nothing.
printf 'devices:\n  - name: vbbad0\n    queus: 2\n' >"$work/main.d/broken.yaml"
rc=0
"$DAEMON" reload >"$work/reload.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "reload of a broken drop-in exited $rc (expected 1): $(cat "$work/reload.out")"
grep -q "queues" "$work/reload.out" || fail "reload does not say what is wrong: $(cat "$work/reload.out")"
disk_ready vbaddf0 || fail "a failed reload took vbaddf0 away"
echo "ok: reload with a broken drop-in: exit 1, nothing changed ($(head -n 1 "$work/reload.out" | cut -c1-120))"
rm "$work/main.d/broken.yaml"
# A setting that cannot change under a running device: reload fails naming the device and
# what to do, and the device serves on unchanged.
cp "$work/main.d/vbaddf0.yaml" "$work/vbaddf0.yaml.kept"
sed -i 's/size: 16M/size: 32M/' "$work/main.d/vbaddf0.yaml"
rc=0
"$DAEMON" reload >"$work/reload.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "reload changing vbaddf0's size exited $rc (expected 1): $(cat "$work/reload.out")"
grep -q "vbaddf0: changed settings are not applied" "$work/reload.out" ||
  fail "reload does not say which settings it could not apply: $(cat "$work/reload.out")"
[ "$(blockdev --getsize64 "/dev/$(disk_of vbaddf0)")" = $((16 << 20)) ] || fail "vbaddf0 changed under a refused reload"
echo "ok: reload changing a running device's size: exit 1, $(grep -o 'vbaddf0: changed settings[^(]*' "$work/reload.out" | head -n 1)"
mv "$work/vbaddf0.yaml.kept" "$work/main.d/vbaddf0.yaml"
# A device whose server is not there, added by reload: it waits (reload says so, exit 3), and the
# device already served goes on.
cat >"$work/main.d/vbunreach0.yaml" <<EOF
devices:
  - name: vbunreach0
    backend:
      type: nbd
      uri: "nbd+unix:///?socket=$work/nobody.sock"
EOF
rc=0
"$DAEMON" reload >"$work/reload.out" 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "reload adding an unreachable device exited $rc (expected 3): $(cat "$work/reload.out")"
grep -q "vbunreach0: waiting" "$work/reload.out" || fail "reload does not say vbunreach0 waits: $(cat "$work/reload.out")"
disk_ready vbaddf0 || fail "reload with an unreachable device took vbaddf0 away"
dd if="/dev/$(disk_of vbaddf0)" of=/dev/null bs=64k count=4 iflag=direct status=none || fail "vbaddf0 stopped serving"
daemon_alive || fail "the daemon exited after a reload with an unreachable device"
echo "ok: reload with an unreachable device: exit 3, $(grep vbunreach0 "$work/reload.out" | head -n 1 | cut -c1-100); vbaddf0 serves on"
rc=0
"$DAEMON" remove vbunreach0 >"$work/remove.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "remove of the waiting vbunreach0 exited $rc: $(cat "$work/remove.out")"
rc=0
"$DAEMON" remove vbaddf0 >"$work/remove.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "remove exited $rc: $(cat "$work/remove.out")"
! disk_ready vbaddf0 || fail "remove returned with the disk of vbaddf0 still there"
[ ! -e "$work/main.d/vbaddf0.yaml" ] || fail "remove left the drop-in file"
echo "ok: remove: vbaddf0 gone when remove returns, its drop-in deleted"
stop_daemon
