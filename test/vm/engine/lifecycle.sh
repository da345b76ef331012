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
{ grep -q "bad.yaml:5:" "$work/err" && grep -q "size" "$work/err"; } || fail "error does not name file:line and key: $(cat "$work/err")"
echo "ok: bad configuration rejected: $(cat "$work/err")"

# attach: vhost-vdpa gives a /dev/vhost-vdpa-N for a VMM instead of a host disk.
if [ -d /sys/bus/vdpa/drivers/vhost_vdpa ]; then
  memory_config "$work/h.yaml" vblife1 16M "attach: vhost-vdpa"
  start_daemon "$work/h.yaml"
  drv=$(basename "$(readlink /sys/bus/vdpa/devices/vblife1/driver)")
  [ "$drv" = vhost_vdpa ] || fail "bound to '$drv', expected vhost_vdpa"
  vhost=$(basename /sys/bus/vdpa/devices/vblife1/vhost-vdpa-*)
  [ -c "/dev/$vhost" ] || fail "/dev/$vhost missing"
  ! disk_of vblife1 >/dev/null || fail "a host disk appeared for a vhost-vdpa device"
  stop_daemon
  [ ! -e /sys/bus/vdpa/devices/vblife1 ] || fail "vDPA device vblife1 still exists after SIGTERM"
  echo "ok: attach: vhost-vdpa gives /dev/$vhost and no host disk"
else
  echo "note: vhost_vdpa not loaded; vhost-vdpa attach not checked"
fi

# attach: none creates and serves the device but leaves it off the bus.
memory_config "$work/i.yaml" vblife2 16M "attach: none"
start_daemon "$work/i.yaml"
[ -c /dev/vduse/vblife2 ] || fail "/dev/vduse/vblife2 missing"
[ ! -e /sys/bus/vdpa/devices/vblife2 ] || fail "attach: none attached the device anyway"
vdpa dev add name vblife2 mgmtdev vduse || fail "operator attach failed"
wait_for 30 "the disk of vblife2" disk_ready vblife2
echo data | dd of="/dev/$(disk_of vblife2)" bs=512 conv=sync oflag=direct status=none || fail "write to operator-attached disk"
vdpa dev del vblife2
stop_daemon
echo "ok: attach: none leaves attaching to the operator, and the device serves once attached"
