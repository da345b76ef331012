#!/usr/bin/env bash
# Smoke test and reference point: a VDUSE block device served by QEMU's own qemu-storage-daemon
# (vduse-blk export over an NBD client to nbdkit's memory plugin) works in this guest end to end:
# attach with `vdpa dev add`, the virtio_vdpa disk appears, has the right size, and 1 MiB written with
# O_DIRECT reads back identical. If this fails, the kernel/harness is broken, not vduse-bridge.
# Runs inside the real-kernel VM only: test/vm/run-vm test/vm/smoke/vduse-reference.sh
set -euo pipefail
# Only the cleanup stack: this script must not depend on the daemon (lib/daemon.sh needs its binary).
source "$(dirname "$0")/../lib/cleanup.sh"

NAME=vmref0
SIZE_MIB=64

skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[ "${IN_VM:-0}" = 1 ] || skip "not inside the test VM (run it with test/vm/run-vm)"
QSD=$(command -v qemu-storage-daemon) || skip "qemu-storage-daemon not found (Debian: qemu-system-common)"
command -v nbdkit >/dev/null || skip "nbdkit not found"
command -v vdpa >/dev/null || skip "vdpa (iproute2) not found"
[ -c /dev/vduse/control ] || fail "/dev/vduse/control missing: the vduse module is not loaded"

work=$(mktemp -d)
on_cleanup rm -rf "$work"
# stop_pid PID: SIGTERM and reap (a cleanup step).
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds; fail after SECONDS (TCG is slow, be generous).
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.05
  done
}
alive() { kill -0 "$1" 2>/dev/null; }
ready_or_dead() { # PID FILE: the file exists, or the process is gone (checked by the caller)
  [ -e "$2" ] || ! alive "$1"
}

sock=$work/nbd.sock
nbdkit --exit-with-parent -U "$sock" -P "$work/nbdkit.pid" memory "${SIZE_MIB}M" &
nbdkit_pid=$!
on_cleanup stop_pid "$nbdkit_pid"
# nbdkit writes the pid file only once the socket is listening.
wait_for 30 "nbdkit's pid file" ready_or_dead "$nbdkit_pid" "$work/nbdkit.pid"
alive "$nbdkit_pid" || fail "nbdkit exited during startup"
[ -S "$sock" ] || fail "nbdkit is running but $sock is not a socket"
echo "ok: nbdkit memory ${SIZE_MIB}M on $sock (pid $nbdkit_pid)"

"$QSD" \
  --blockdev "driver=nbd,node-name=disk0,server.type=unix,server.path=$sock" \
  --export "type=vduse-blk,id=exp0,node-name=disk0,name=$NAME,writable=on" &
qsd_pid=$!
on_cleanup stop_pid "$qsd_pid"
wait_for 30 "/dev/vduse/$NAME" ready_or_dead "$qsd_pid" "/dev/vduse/$NAME"
alive "$qsd_pid" || fail "qemu-storage-daemon exited during startup"
echo "ok: $QSD created /dev/vduse/$NAME (pid $qsd_pid)"

vdpa dev add name "$NAME" mgmtdev vduse || fail "vdpa dev add name $NAME mgmtdev vduse failed"
# Detach while qemu-storage-daemon still serves the device, or the kernel waits on it.
on_cleanup vdpa dev del "$NAME"
echo "ok: vdpa dev add name $NAME mgmtdev vduse"

# virtio_vdpa must drive the device to get a disk; run-vm loads it before vhost_vdpa so it binds first.
dev_sys=/sys/bus/vdpa/devices/$NAME
driver=$(basename "$(readlink -f "$dev_sys/driver")")
[ "$driver" = virtio_vdpa ] || fail "$NAME is bound to '$driver', expected virtio_vdpa"

block_dir() { compgen -G "$dev_sys/virtio*/block/*" >/dev/null; }
wait_for 30 "a block device under $dev_sys/virtio*/block" block_dir
bdir=$(compgen -G "$dev_sys/virtio*/block/*" | head -n1)
disk=/dev/${bdir##*/}
wait_for 10 "$disk" test -b "$disk"
echo "ok: $NAME is $disk"

sectors=$(cat "$bdir/size")
[ "$sectors" -eq $((SIZE_MIB * 2048)) ] || fail "$disk has $sectors sectors, expected $((SIZE_MIB * 2048)) (${SIZE_MIB} MiB)"
echo "ok: $disk is ${SIZE_MIB} MiB ($sectors sectors)"

head -c 1M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M count=1 oflag=direct status=none || fail "O_DIRECT write to $disk failed"
dd if="$disk" of="$work/readback" bs=1M count=1 iflag=direct status=none || fail "O_DIRECT read from $disk failed"
cmp "$work/pattern" "$work/readback" || fail "data read back from $disk differs from what was written"
echo "ok: 1 MiB written with O_DIRECT to $disk reads back identical"
