#!/usr/bin/env bash
# A restart with another configuration must not touch the device: after a planned restart
# (SIGUSR1) the daemon is started with a different size, then different queues, then another
# backend: each time the device is not taken over (it waits, with an error naming what differs;
# the daemon stays up for its other devices), /dev/vdX stays (same size, data intact), also after
# that daemon's SIGTERM. The right configuration then resumes the device.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/restart.sh"

memory_config "$work/good.yaml" vbrecmis0 64M "queues: 2"
memory_config "$work/size.yaml" vbrecmis0 128M "queues: 2"
memory_config "$work/queues.yaml" vbrecmis0 64M "queues: 4"
start_daemon "$work/good.yaml" vbrecmis0
dname=$(disk_of vbrecmis0)
disk=/dev/$dname
head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=5 oflag=direct status=none || fail "write failed"
sectors=$(cat "/sys/block/$dname/size")
leave_daemon
[ -b "$disk" ] || fail "$disk went away after the planned restart"
echo "ok: planned restart left $disk attached"

# expect_refused CONFIG WHAT: the daemon stays up (its other devices would be served) but does not
# take the device over: it waits, and `status` (exit 3) and the log say why, naming WHAT; the
# device is untouched. SIGTERM then leaves it as it was, and the daemon exits 0.
expect_refused() {
  local config=$1 what=$2 rc=0
  daemon_runs=$((daemon_runs + 1))
  daemon_log=$work/daemon.$daemon_runs.log
  "$DAEMON" --config "$config" >"$daemon_log" 2>&1 &
  daemon_pid=$!
  refused_text=$what # wait_for has a local $what of its own
  said() { grep -q "$refused_text" "$daemon_log" || ! daemon_alive; }
  wait_for 60 "the daemon to refuse the device ($what)" said
  daemon_alive || { cat "$daemon_log"; fail "$what: the daemon exited instead of waiting"; }
  "$DAEMON" status vbrecmis0 >"$work/refused.status" 2>&1 || rc=$?
  [ "$rc" -eq 3 ] || { cat "$work/refused.status"; fail "$what: status exited $rc, expected 3 (waiting)"; }
  grep -q "waiting" "$work/refused.status" || { cat "$work/refused.status"; fail "$what: status does not say waiting"; }
  { [ -b "$disk" ] && [ "$(cat "/sys/block/$dname/size")" = "$sectors" ]; } || fail "$what: the device changed"
  stop_daemon
  [ -b "$disk" ] || fail "$what: SIGTERM of a daemon that never took the device over removed it"
  echo "ok: refused: $(grep -m1 "$what" "$daemon_log" | cut -c1-160)"
}
expect_refused "$work/size.yaml" "134217728" # the memory disk holds 64 MiB, the file says 128 MiB
expect_refused "$work/queues.yaml" "queues"
if command -v nbdkit >/dev/null; then
  nbdkit -U "$work/nbd.sock" -P "$work/nbdkit.pid" -f memory 64M &
  nbdkit_pid=$!
  wait_for 30 "nbdkit" test -s "$work/nbdkit.pid"
  cat >"$work/nbd.yaml" <<EOF2
devices:
  - name: vbrecmis0
    queues: 2
    backend:
      type: nbd
      uri: nbd+unix:///?socket=$work/nbd.sock
EOF2
  expect_refused "$work/nbd.yaml" "backend"
  kill "$nbdkit_pid"
  wait "$nbdkit_pid" 2>/dev/null || true
fi

restart_daemon "$work/good.yaml"
wait_for 30 "the queues to resume" resumed
cmp "$work/pattern" <(dd if="$disk" bs=1M skip=5 count=1 iflag=direct status=none) || fail "data changed"
echo "ok: the right configuration resumes $disk with its data"
stop_daemon
