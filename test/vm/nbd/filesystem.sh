#!/usr/bin/env bash
# ext4 through the nbd backend (nbdkit memory on a unix socket): mkfs, mount, write files, unmount,
# drop caches, mount again, checksums match; then a new daemon on the same server still has the
# files (the data lives on the server, not in the daemon), and fsck is clean.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed (e2fsprogs)"

NAME=vbnbdfs0
sock=$work/nbd.sock
nbd_config "$work/fs.yaml" "$NAME" "$(nbd_unix_uri "$sock")" "queues: 2" \
  "backend.connections: 4" "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
require_nbd_backend "$work/fs.yaml"

nbdkit_start fs -U "$sock" memory 128M
echo "ok: nbdkit memory 128M on $sock (pid ${nbdkit_pids[fs]})"
start_daemon "$work/fs.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
echo "ok: $disk appeared"

mkfs.ext4 -q -F "$disk" || fail "mkfs.ext4 failed"
mkdir -p "$work/mnt"
mount "$disk" "$work/mnt" || fail "mount failed"
for i in 1 2 3 4 5; do head -c $((i * 700000)) /dev/urandom >"$work/mnt/file$i"; done
mkdir "$work/mnt/dir" && seq 1 20000 >"$work/mnt/dir/numbers"
(cd "$work/mnt" && sha256sum file* dir/numbers) >"$work/sums"
umount "$work/mnt" || fail "umount failed"
echo "ok: mkfs.ext4, mount, 6 files written, umount"

echo 3 >/proc/sys/vm/drop_caches
mount "$disk" "$work/mnt" || fail "second mount failed"
(cd "$work/mnt" && sha256sum -c --quiet "$work/sums") || fail "checksums differ after remount"
umount "$work/mnt" || fail "second umount failed"
echo "ok: files read back identical after umount, drop_caches, mount"
stop_daemon

start_daemon "$work/fs.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
mount "$disk" "$work/mnt" || fail "mount through a new daemon failed"
(cd "$work/mnt" && sha256sum -c --quiet "$work/sums") || fail "checksums differ through a new daemon"
umount "$work/mnt" || fail "umount through a new daemon failed"
fsck.ext4 -n -f "$disk" >"$work/fsck.txt" 2>&1 || { cat "$work/fsck.txt"; fail "fsck found errors"; }
echo "ok: a new daemon on the same server serves the same files; fsck clean"
stop_daemon
nbdkit_kill fs
