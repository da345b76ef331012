#!/usr/bin/env bash
# ext4 on a memory device: mkfs, mount, write files, unmount, mount again, checksums match.
source "$(dirname "$0")/../lib/daemon.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed (e2fsprogs)"

memory_config "$work/d.yaml" vbfs0 128M
start_daemon "$work/d.yaml" vbfs0
disk=/dev/$(disk_of vbfs0)
mkfs.ext4 -q -F "$disk" || fail "mkfs.ext4 failed"
mkdir -p "$work/mnt"
mount "$disk" "$work/mnt" || fail "mount failed"
for i in 1 2 3 4 5; do head -c $((i * 700000)) /dev/urandom >"$work/mnt/file$i"; done
mkdir "$work/mnt/dir" && seq 1 20000 >"$work/mnt/dir/numbers"
(cd "$work/mnt" && sha256sum file* dir/numbers) >"$work/sums"
umount "$work/mnt" || fail "umount failed"
echo 3 >/proc/sys/vm/drop_caches
mount "$disk" "$work/mnt" || fail "second mount failed"
(cd "$work/mnt" && sha256sum -c --quiet "$work/sums") || fail "checksums differ after remount"
umount "$work/mnt"
fsck.ext4 -n -f "$disk" >/dev/null 2>&1 || fail "fsck found errors"
echo "ok: ext4 files survive umount/mount, fsck clean"
stop_daemon
