#!/usr/bin/env bash
# A device the kernel breaks for good (a control message unanswered for control-timeout) is
# detected and recreated: with control-timeout 1s the daemon is stopped (SIGSTOP) while the driver
# is unbound (a reset: SET_STATUS 0), the kernel gives up on the message and marks the device
# broken; once the daemon runs again it reports that, deletes the device, creates it again and
# the disk comes back, usable, with the memory disk's data.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"

memory_config "$work/b.yaml" vbrecbrk0 32M "control-timeout: 1s"
start_daemon "$work/b.yaml" vbrecbrk0
disk=/dev/$(disk_of vbrecbrk0)
head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M oflag=direct status=none || fail "write failed"
echo "ok: $disk written"
[ "$(cat /sys/class/vduse/vbrecbrk0/msg_timeout)" = 1 ] || fail "msg_timeout is not the configured 1s"
echo "ok: msg_timeout set to control-timeout (1s) before attach"

kill -STOP "$daemon_pid"
drv=$(readlink -f /sys/bus/vdpa/devices/vbrecbrk0/driver)
timeout 30 sh -c "echo vbrecbrk0 > $drv/unbind" 2>/dev/null || true # the reset times out after 1s
kill -CONT "$daemon_pid"
echo "ok: driver unbound while the daemon was stopped"
recreated() { grep -q "created again after it broke" "$daemon_log" || ! daemon_alive; }
wait_for 60 "the daemon to recreate the broken device" recreated
daemon_alive || fail "the daemon died"
grep -q "the kernel broke the VDUSE device" "$daemon_log" || fail "the breakage was not reported"
echo "ok: $(grep -m1 'the kernel broke' "$daemon_log" | cut -c1-120)..."
wait_for 30 "the disk to come back" disk_ready vbrecbrk0
disk=/dev/$(disk_of vbrecbrk0)
cmp "$work/pattern" <(dd if="$disk" bs=1M count=1 iflag=direct status=none) || fail "the data did not survive"
echo "ok: the disk is back as $disk with its data"
stop_daemon
