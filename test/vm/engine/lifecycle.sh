#!/usr/bin/env bash
# SIGTERM tears everything down (no /dev/vduse/NAME, no vDPA device left) and a second start with
# the same configuration works; --check validates; a bad file names file, line and key.
source "$(dirname "$0")/../lib/daemon.sh"

memory_config "$work/g.yaml" vblife0 16M "queues: 2"
"$DAEMON" --config "$work/g.yaml" --check || fail "--check rejected a valid file"
start_daemon "$work/g.yaml" vblife0
[ -c /dev/vduse/vblife0 ] || fail "/dev/vduse/vblife0 missing while serving"
stop_daemon
[ ! -e /dev/vduse/vblife0 ] || fail "/dev/vduse/vblife0 still exists after SIGTERM"
[ ! -e /sys/bus/vdpa/devices/vblife0 ] || fail "vDPA device vblife0 still exists after SIGTERM"
echo "ok: SIGTERM removed the vDPA and VDUSE devices"

start_daemon "$work/g.yaml" vblife0
echo hello | dd of="/dev/$(disk_of vblife0)" bs=512 conv=sync oflag=direct status=none || fail "write after restart"
stop_daemon
echo "ok: a second start with the same configuration works"

printf 'devices:\n  - name: bad\n    backend:\n      type: memory\n      size: 12X\n' >"$work/bad.yaml"
if "$DAEMON" --config "$work/bad.yaml" --check 2>"$work/err"; then fail "--check accepted a bad file"; fi
grep -q "bad.yaml:5:" "$work/err" && grep -q "size" "$work/err" || fail "error does not name file:line and key: $(cat "$work/err")"
echo "ok: bad configuration rejected: $(cat "$work/err")"
