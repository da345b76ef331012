#!/usr/bin/env bash
# ext4 through the iscsi backend (tgtd in the guest, LUN on tmpfs): mkfs, mount, write files,
# checksums, unmount, drop caches, mount again, checksums match; then a new daemon (new iSCSI
# sessions) still has the files, and e2fsck -fn is clean.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/iscsi.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed (e2fsprogs)"

NAME=vbiscsifs0
img=$work/lun1.img
tgtd_start
truncate -s 128M "$img"
tgt_lun_add 1 "$img"
echo "ok: tgtd (pid $tgtd_pid) on 127.0.0.1:$tgtd_port, LUN 1: 128 MiB on tmpfs"
iscsi_config "$work/fs.yaml" "$NAME" "$(iscsi_uri 1)" "queues: 2" "backend.reconnect-timeout: 60s"
require_iscsi_backend "$work/fs.yaml"

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
e2fsck -fn "$disk" >"$work/fsck.txt" 2>&1 || { cat "$work/fsck.txt"; fail "e2fsck -fn found errors"; }
echo "ok: a new daemon (new sessions) serves the same files; e2fsck -fn clean"
stop_daemon
