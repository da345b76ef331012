#!/usr/bin/env bash
# Live reconfiguration: SIGHUP makes the daemon read its file again. While fio (randrw 4k, crc32c
# verify as it goes) runs on a device that stays in the file, a second device is removed and a
# third added; then a file with a syntax error is loaded, which must change nothing. fio ends with
# no error, the device under it is never disturbed (its longest I/O is printed and must stay
# under VDUSE_BRIDGE_RELOAD_MAX_MS, default 1000 ms under TCG), and a second daemon on the same
# configuration is refused.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/restart.sh"
command -v fio >/dev/null || skip "fio not installed"
MAX_MS=${VDUSE_BRIDGE_RELOAD_MAX_MS:-1000}

conf=$work/vduse-bridge.yaml
write_config() { # NAME:SIZE...
  local d
  echo "devices:" >"$conf"
  for d in "$@"; do
    printf '  - name: %s\n    backend:\n      type: memory\n      size: %s\n' "${d%%:*}" "${d#*:}" >>"$conf"
  done
}
write_config vbopkeep0:256M vbopgone0:32M
start_daemon "$conf" vbopkeep0 vbopgone0
keep=/dev/$(disk_of vbopkeep0)
echo "ok: $keep and /dev/$(disk_of vbopgone0) served"
fio_start "$keep" "$work/fio"
sleep 3

write_config vbopkeep0:256M vbopnew0:48M
kill -HUP "$daemon_pid"
wait_for 60 "the new device's disk" disk_ready vbopnew0
gone() { ! disk_ready vbopgone0 && [ ! -e /dev/vduse/vbopgone0 ]; }
wait_for 60 "the removed device to go away" gone
[ "/dev/$(disk_of vbopkeep0)" = "$keep" ] || fail "the kept device changed"
[ "$(cat "/sys/block/$(disk_of vbopnew0)/size")" -eq $((48 << 11)) ] || fail "the new disk has the wrong size"
echo "ok: SIGHUP: vbopgone0 removed, vbopnew0 added as /dev/$(disk_of vbopnew0), $keep untouched"

cp "$conf" "$work/good.yaml"
printf 'devices:\n  - name: [broken\n' >"$conf"
kill -HUP "$daemon_pid"
wait_for 30 "the bad file to be reported" grep -q "nothing changed" "$daemon_log"
{ disk_ready vbopnew0 && disk_ready vbopkeep0; } || fail "a bad file changed the devices"
echo "ok: a bad file: $(grep -m1 'nothing changed' "$daemon_log" | cut -c1-110)..."
cp "$work/good.yaml" "$conf"

rc=0
timeout -k 5 60 "$DAEMON" --config "$conf" >"$work/second.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a second daemon on the same configuration started"
{ [ -b "$keep" ] && daemon_alive; } || fail "the second daemon disturbed the first"
echo "ok: a second daemon is refused: $(grep -m1 -i 'error' "$work/second.log" | cut -c1-110)..."

sleep 2
fio_check "$work/fio"
[ "$fio_max_pause_ms" -lt "$MAX_MS" ] || fail "the longest I/O on $keep took ${fio_max_pause_ms} ms (limit $MAX_MS)"
echo "ok: $keep: longest I/O ${fio_max_pause_ms} ms across the reloads"
stop_daemon
