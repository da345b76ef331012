#!/usr/bin/env bash
# The file backend (io_uring) on the real kernel: a 256 MiB image in the guest's tmpfs on 2
# queues (fio crc32c verify, data checked in the image itself, discard punching the image, ext4 +
# e2fsck, the image grown under the live disk), then a loop device served the same way (O_DIRECT
# on a block device, data checked on the loop device's backing file).
# The steps it shares with the nbd and iscsi groups (disk geometry, the fio verify matrix, data
# written through the disk checked in the image, ext4, growth) are lib/backend.sh's, run on one
# daemon here so that the group takes no longer than it did.
# shellcheck source-path=SCRIPTDIR/../lib
BACKEND="file"
source "$(dirname "$0")/../lib/backend.sh"
command -v fio >/dev/null || skip "fio not installed"
blocks_of() { stat -c %b "$1"; }

# --- a regular file ------------------------------------------------------------------------------
be_server_start $((256 << 20))
img=$be_img
be_config "$work/file.yaml" vbfile0 "queues: 2"
start_daemon "$work/file.yaml" vbfile0
disk=/dev/$(disk_of vbfile0)
check_disk "$disk" $((256 << 20)) 2 512 "$be_label"
echo "ok: $disk serves $be_where: $(grep -m1 'file: ' "$daemon_log" | sed 's/.*file: //')"

fio_verify_runs "$disk" "$be_label" "$be_fio_size" "${be_fio_runs[@]}"

pattern_make 4
check_write_through "$disk" 200 "$be_label"

before=$(blocks_of "$img")
blkdiscard -o $((200 << 20)) -l $((4 << 20)) "$disk" || fail "blkdiscard failed"
after=$(blocks_of "$img")
[ "$after" -lt "$before" ] || fail "discard did not punch the image ($before -> $after 512-byte blocks)"
[ "$(dd if="$disk" bs=1M skip=200 count=4 iflag=direct status=none | tr -d '\0' | wc -c)" -eq 0 ] ||
  fail "the discarded range does not read back as zeros"
echo "ok: discard punched the image ($before -> $after blocks) and reads back zeros"

ext4_fill "$disk"
ext4_fsck "$disk"
ext4_reread "$disk" "after umount, drop_caches, mount"

grow_check "$disk" 320 300
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
