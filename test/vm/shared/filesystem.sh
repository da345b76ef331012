# shellcheck shell=bash
# The ext4 check, the same for every backend (sourced by nbd/filesystem.sh and iscsi/filesystem.sh
# after they set BACKEND): a 128 MiB export ($be_where), a 2-queue device: mkfs, mount, 6 files
# written with their checksums, unmount; drop caches, mount again, checksums match; then a new
# daemon (new connections or sessions) on the same server still has the files (the data lives on
# the server, not in the daemon), and e2fsck -fn is clean.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "${BASH_SOURCE[0]}")/../lib/backend.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed (e2fsprogs)"

NAME=vb${BACKEND}fs0
be_server_start $((128 << 20))
echo "ok: $be_label: $be_where, 128 MiB"
be_config "$work/fs.yaml" "$NAME" "queues: 2" "backend.reconnect-timeout: 60s" "${be_keys[@]}"
be_require "$work/fs.yaml"

start_daemon "$work/fs.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
echo "ok: $disk appeared"
ext4_fill "$disk"
ext4_reread "$disk" "after umount, drop_caches, mount"
stop_daemon

start_daemon "$work/fs.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
ext4_reread "$disk" "through a new daemon on the same server"
ext4_fsck "$disk"
stop_daemon
be_server_stop
