#!/usr/bin/env bash
# One slow device must not stall another (issue 12, item 9). Device A's NBD server goes away and
# its name stops resolving (a resolver that never answers: every reconnect blocks A's queue
# thread in getaddrinfo for ~20 s). The driver of A is then reset, whose answer waits for A's
# queue; meanwhile device B (memory, control-timeout 5 s) is reset and probed again, and
# `vduse-bridge status` is asked. B's control messages must be answered at once (before, one
# control loop served every device: B's waited behind A's and the kernel broke B), and status
# must answer within 5 s (a loaded TCG guest may need a second or two; the stall is ~20 s).
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
command -v nbdkit >/dev/null || skip "nbdkit not installed"
[ -x /usr/bin/python3 ] || skip "python3 (Debian's) not installed"

# The name of A's server lives in a hosts file of our own, bound over /etc/hosts; DNS goes to a
# black hole on the guest's loopback.
cp /etc/hosts "$work/hosts"
echo "127.0.0.1 vbnbdhost" >>"$work/hosts"
printf 'nameserver 127.0.0.1\noptions timeout:5 attempts:2\n' >"$work/resolv.conf"
mount --bind "$work/hosts" /etc/hosts
mount --bind "$work/resolv.conf" /etc/resolv.conf
/usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    s.recvfrom(4096)
' &
dns_pid=$!
port=10809
nbdkit -f -i 127.0.0.1 -p "$port" -P "$work/nbdkit.pid" memory 64M &
nbd_pid=$!
# On the way out (also after a failure), A's name resolves again at once, so that A's queue and
# the daemon can stop (lib/daemon.sh's step, which runs after this one, SIGTERMs the daemon and
# waits for it).
stop_helpers() {
  kill "$dns_pid" ${nbd_pid:+"$nbd_pid"} 2>/dev/null || true
  wait "$dns_pid" ${nbd_pid:+"$nbd_pid"} 2>/dev/null || true
  grep -q vbnbdhost "$work/hosts" || echo "127.0.0.1 vbnbdhost" >>"$work/hosts"
  umount /etc/resolv.conf 2>/dev/null || true
  [ -z "${unbind_pid:-}" ] || wait "$unbind_pid" 2>/dev/null || true
  umount /etc/hosts
}
on_cleanup stop_helpers
wait_for 30 "nbdkit" test -s "$work/nbdkit.pid"

cat >"$work/config.yaml" <<EOF2
devices:
  - name: vbisoa0
    backend:
      type: nbd
      uri: nbd://vbnbdhost:$port/
  - name: vbisob0
    control-timeout: 5s
    backend:
      type: memory
      size: 32M
EOF2
start_daemon "$work/config.yaml" vbisoa0 vbisob0
echo "ok: A (nbd://vbnbdhost) and B (memory, control-timeout 5 s) served"

# A's server goes, and its name no longer resolves.
grep -v vbnbdhost "$work/hosts" >"$work/hosts.new" && cat "$work/hosts.new" >"$work/hosts"
kill -KILL "$nbd_pid"
wait "$nbd_pid" 2>/dev/null || true
nbd_pid=''
t0=$SECONDS
getent hosts vbnbdhost >/dev/null && fail "vbnbdhost still resolves"
[ $((SECONDS - t0)) -ge 4 ] || fail "resolving vbnbdhost failed at once: the resolver does not stall ($(ls -l /etc/resolv.conf))"
echo "ok: A's server killed and its name gone (resolving it takes $((SECONDS - t0)) s)"
# status exits 3 while a device is unhealthy: the text is what counts here.
reconnecting() {
  local out
  out=$(timeout 5 "$DAEMON" status 2>/dev/null) || true
  grep -q reconnecting <<<"$out"
}
wait_for 60 "A to reconnect" reconnecting
echo "ok: A reconnecting"
sleep 1 # A's queue thread is now in getaddrinfo most of the time

# A's driver goes away (a reset whose answer needs A's queue), in the background: it may wait.
a_dev=$(compgen -G "/sys/bus/vdpa/devices/vbisoa0/virtio*" | head -n1) || fail "A has no virtio device"
basename "$a_dev" >/sys/bus/virtio/drivers/virtio_blk/unbind &
unbind_pid=$!
sleep 0.5

# B is reset and probed again: every one of its messages must be answered within its 5 s.
b_dev=$(compgen -G "/sys/bus/vdpa/devices/vbisob0/virtio*" | head -n1) || fail "B has no virtio device"
b_dev=${b_dev##*/}
t0=$(date +%s%N)
echo "$b_dev" >/sys/bus/virtio/drivers/virtio_blk/unbind || fail "B's reset failed"
echo "$b_dev" >/sys/bus/virtio/drivers/virtio_blk/bind ||
  fail "B could not be probed again: its control messages were not answered in time (the kernel broke it)"
wait_for 30 "B's disk" disk_ready vbisob0
b_ms=$((($(date +%s%N) - t0) / 1000000))
kill -0 "$unbind_pid" 2>/dev/null || fail "A's reset was answered already: A's queue was not stalled, nothing is proven"
grep -q "vbisob0: the kernel broke the VDUSE device" "$daemon_log" && fail "B was broken while A was stalled"
dd if=/dev/zero of="/dev/$(disk_of vbisob0)" bs=64k count=16 oflag=direct status=none || fail "B's I/O failed"
echo "ok: B reset and probed again in ${b_ms} ms while A's queue was stalled; B's I/O works"

t0=$(date +%s%N)
rc=0
timeout 10 "$DAEMON" status >"$work/status.txt" || rc=$?
[ "$rc" = 3 ] || fail "status exited $rc with A reconnecting (expected 3: unhealthy; 124: no answer)"
s_ms=$((($(date +%s%N) - t0) / 1000000))
[ "$s_ms" -lt 5000 ] || fail "status took ${s_ms} ms while A was stalled"
grep -q vbisob0 "$work/status.txt" || fail "status does not show B"
echo "ok: status answered in ${s_ms} ms"

# A's server and name come back: A's reset completes and the daemon stops cleanly.
echo "127.0.0.1 vbnbdhost" >>"$work/hosts"
nbdkit -f -i 127.0.0.1 -p "$port" memory 64M &
nbd_pid=$!
wait "$unbind_pid" || true
stop_daemon
echo "ok: A recovered after its server came back, the daemon stopped cleanly"
