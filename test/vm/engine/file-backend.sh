#!/usr/bin/env bash
# The file backend (io_uring) on the real kernel: a 256 MiB image in the guest's tmpfs on 2
# queues (fio crc32c verify, data checked in the image itself, discard punching the image, ext4 +
# e2fsck, the image grown under the live disk), then a loop device served the same way (O_DIRECT
# on a block device, data checked on the loop device's backing file).
source "$(dirname "$0")/../lib/daemon.sh"
command -v fio >/dev/null || skip "fio not installed"

file_config() { # FILE NAME PATH [DEVICE LINE or backend.KEY: VALUE...]
  local file=$1 name=$2 path=$3 line
  shift 3
  {
    echo "devices:"
    echo "  - name: $name"
    for line in "$@"; do [[ $line == backend.* ]] || echo "    $line"; done
    echo "    backend:"
    echo "      type: file"
    echo "      path: $path"
    echo "      resize-poll-interval: 500ms"
    for line in "$@"; do [[ $line != backend.* ]] || echo "      ${line#backend.}"; done
  } >"$file"
}
blocks_of() { stat -c %b "$1"; }

# --- a regular file ------------------------------------------------------------------------------
img=$work/disk.img
truncate -s 256M "$img"
file_config "$work/file.yaml" vbfile0 "$img" "queues: 2"
start_daemon "$work/file.yaml" vbfile0
dname=$(disk_of vbfile0)
disk=/dev/$dname
[ "$(cat "/sys/block/$dname/size")" -eq $((256 << 11)) ] || fail "$disk has $(cat "/sys/block/$dname/size") sectors, expected $((256 << 11))"
echo "ok: $disk serves $img: $(grep -m1 'file: ' "$daemon_log" | sed 's/.*file: //')"

fio_verify_matrix "$disk" "file backend"

head -c 4M /dev/urandom >"$work/pattern"
dd if="$work/pattern" of="$disk" bs=1M seek=200 oflag=direct conv=fsync status=none || fail "writing 4 MiB failed"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=200 count=4 status=none) || fail "the image does not hold what was written"
echo "ok: 4 MiB written at 200 MiB are in the image file"

before=$(blocks_of "$img")
blkdiscard -o $((200 << 20)) -l $((4 << 20)) "$disk" || fail "blkdiscard failed"
after=$(blocks_of "$img")
[ "$after" -lt "$before" ] || fail "discard did not punch the image ($before -> $after 512-byte blocks)"
[ "$(dd if="$disk" bs=1M skip=200 count=4 iflag=direct status=none | tr -d '\0' | wc -c)" -eq 0 ] ||
  fail "the discarded range does not read back as zeros"
echo "ok: discard punched the image ($before -> $after blocks) and reads back zeros"

mkfs.ext4 -q -F "$disk" || fail "mkfs.ext4 failed"
mkdir -p "$work/mnt"
mount "$disk" "$work/mnt" || fail "mount failed"
cp "$work/pattern" "$work/mnt/p" && sync
umount "$work/mnt" || fail "umount failed"
e2fsck -fn "$disk" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "e2fsck found errors"; }
mount "$disk" "$work/mnt" || fail "the second mount failed"
cmp "$work/pattern" "$work/mnt/p" || fail "the file on ext4 does not read back"
umount "$work/mnt" || fail "the second umount failed"
echo "ok: ext4 on the file backend: e2fsck clean, data read back after a remount"

truncate -s 320M "$img"
grown() { [ "$(cat "/sys/block/$dname/size")" -eq $((320 << 11)) ]; }
wait_for 30 "$disk to grow to 320 MiB with its image" grown
dd if="$work/pattern" of="$disk" bs=1M seek=300 oflag=direct conv=fsync status=none || fail "writing the new space failed"
cmp "$work/pattern" <(dd if="$img" bs=1M skip=300 count=4 status=none) || fail "the new space does not hold the write"
echo "ok: the image grew to 320 MiB and the disk followed; the new space is writable"
stop_daemon

# --- a loop device -------------------------------------------------------------------------------
command -v losetup >/dev/null || skip "losetup not installed"
backing=$work/loop.img
truncate -s 128M "$backing"
loopdev=$(losetup -f --show "$backing") || skip "no loop device (losetup -f failed)"
on_cleanup losetup -d "$loopdev"
file_config "$work/loop.yaml" vbfile1 "$loopdev" "backend.direct: on"
start_daemon "$work/loop.yaml" vbfile1 # direct: on refuses to start without O_DIRECT
ldisk=/dev/$(disk_of vbfile1)
dd if="$work/pattern" of="$ldisk" bs=1M seek=64 oflag=direct conv=fsync status=none || fail "writing through $loopdev failed"
cmp "$work/pattern" <(dd if="$backing" bs=1M skip=64 count=4 status=none) || fail "the loop device's file does not hold the write"
fio --eta=never --name=loop --filename="$ldisk" --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite \
  --bs=4k --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output="$work/fio-loop.txt" ||
  { cat "$work/fio-loop.txt"; fail "fio verify through $loopdev failed"; }
echo "ok: $ldisk serves $loopdev with O_DIRECT: data on its backing file, fio verify clean"
stop_daemon
