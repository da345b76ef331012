# shellcheck shell=bash disable=SC2034 # its variables are read by the scripts that source it
# One interface to the nbd, iscsi and file backends, for the checks that are the same for each
# (test/vm/shared/*.sh, engine/file-backend.sh). Sourced, not run; set BACKEND first:
#
#   BACKEND=nbd   # or iscsi, file
#   source "$(dirname "$0")/../lib/backend.sh"   # sources lib/daemon.sh and lib/$BACKEND.sh
#
# Each backend library provides the same functions as ${BACKEND}_be_*; these call them:
#   be_server_start SIZE         the image $be_img (SIZE bytes, tmpfs) exported by a server or target
#                                on a private address ($be_where says which); file: just the image
#   be_server_kill [SIGNAL]      the server goes away (default SIGKILL); the image stays
#   be_server_restart            the server again, on the same address, with the same image
#   be_server_stop               stopped for good (the next be_server_start begins anew)
#   be_config FILE NAME [LINE...]  a one-device configuration for that export ("backend.KEY: V"
#                                lines go under backend:, other "KEY: V" lines on the device)
#   be_require CONFIG            exit 77 when this build of the daemon lacks the backend
#   be_resize SIZE                 the export becomes SIZE bytes (nbd: nbdkit restarted; iscsi: tgtd
#                                restarted, it reads a LUN's size when it makes the LUN; file: the
#                                image is truncated, the backend polls its size)
#   be_server_read_check         exit 77 when be_server_read's tool is missing
#   be_server_read OFFSET LENGTH OUT  the range as the server has it (nbd: read over NBD by nbdcopy,
#                                no kernel and no daemon in the path; iscsi, file: the image)
# and sets, per backend:
#   be_label, be_server          "nbd" / "nbdkit", "iscsi" / "tgtd", "file backend" / ''
#   be_img                       the image file
#   be_keys                      backend keys every check's configuration has (timeouts, connections)
#   be_fio_size, be_fio_runs     the fio verify matrix (fio_verify_runs in lib/daemon.sh)
#   be_restart_fio_seconds       how long fio runs in the server-restart check
#   be_reconnect_log_res         what the daemon log must show after a reconnect (extended regexes)
#   be_has_server, be_can_shrink, be_eio_after_timeout   what the backend can do (1 or 0): a server
#                                that can go away and come back; an export that can shrink; I/O
#                                failing with EIO once the server has been gone for reconnect-timeout
#
# Checks built on it (each prints an "ok:" line or fails):
#   pattern_make MiB                   $work/pattern: MiB of random data
#   check_disk DISK SIZE QUEUES LBS LABEL  size in bytes, hardware queues, logical block size
#   check_write_through DISK AT LABEL  $work/pattern written at AT MiB through DISK (O_DIRECT, then an
#                                      fsync of the disk) is what the server has there (be_server_read)
#                                      and reads back through DISK
#   ext4_fill DISK                     mkfs.ext4, 6 files and their checksums ($work/sums), umount
#   ext4_reread DISK WHAT              drop caches, mount, checksums match, umount
#   ext4_fsck DISK                     e2fsck -fn is clean
#   sectors_of DISK                    /sys/block/vdX/size
#   grow_check DISK MiB AT [OLD]       be_resize to MiB, the disk follows (no restart), $work/pattern
#                                      written at AT MiB is in the image, the one at OLD MiB (if
#                                      given) still reads back, the daemon logs "size changed"
[ -z "${backend_sh_sourced:-}" ] || return 0
backend_sh_sourced=1
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh" # a no-op if the script sourced it
case ${BACKEND:-} in
nbd | iscsi | file) ;;
*) fail "lib/backend.sh: BACKEND is '${BACKEND:-}', expected nbd, iscsi or file" ;;
esac
# shellcheck source=/dev/null # lib/nbd.sh, lib/iscsi.sh or lib/file.sh
source "$(dirname "${BASH_SOURCE[0]}")/$BACKEND.sh"

be_label='' be_server='' be_img='' be_where='' be_fio_size='' be_restart_fio_seconds=0
be_keys=() be_fio_runs=() be_reconnect_log_res=()
be_has_server=0 be_can_shrink=0 be_eio_after_timeout=0
"${BACKEND}_be_init"

be_server_start() { "${BACKEND}_be_server_start" "$@"; }
be_server_kill() { "${BACKEND}_be_server_kill" "$@"; }
be_server_restart() { "${BACKEND}_be_server_restart"; }
be_server_stop() { "${BACKEND}_be_server_stop"; }
be_config() { "${BACKEND}_be_config" "$@"; }
be_require() { "${BACKEND}_be_require" "$@"; }
be_resize() { "${BACKEND}_be_resize" "$@"; }
be_server_read_check() { "${BACKEND}_be_server_read_check"; }
be_server_read() { "${BACKEND}_be_server_read" "$@"; }

pattern_make() { head -c $(($1 << 20)) /dev/urandom >"$work/pattern"; }

check_disk() {
  local disk=$1 want=$2 queues=$3 lbs=$4 label=$5 dname=${1#/dev/} size nq got
  size=$(blockdev --getsize64 "$disk")
  [ "$size" -eq "$want" ] || fail "$label: $disk is $size bytes, the export has $want"
  nq=$(find "/sys/block/$dname/mq" -mindepth 1 -maxdepth 1 | wc -l)
  [ "$nq" -eq "$queues" ] || fail "$label: $disk has $nq hardware queues, expected $queues"
  got=$(cat "/sys/block/$dname/queue/logical_block_size")
  [ "$got" -eq "$lbs" ] || fail "$label: $disk has $got-byte logical blocks, the export $lbs"
  echo "ok: $label: $disk: $size bytes, $nq queues, $got-byte blocks"
}

check_write_through() {
  local disk=$1 at=$2 label=$3 mib
  mib=$(($(stat -c %s "$work/pattern") >> 20))
  dd if="$work/pattern" of="$disk" bs=1M seek="$at" oflag=direct status=none || fail "$label: dd write at $at MiB failed"
  sync "$disk"
  be_server_read $((at << 20)) $((mib << 20)) "$work/server" || fail "$label: reading the server's copy failed"
  cmp "$work/pattern" "$work/server" || fail "$label: the server holds other data at $at MiB than was written through $disk"
  dd if="$disk" of="$work/back" bs=1M skip="$at" count="$mib" iflag=direct status=none || fail "$label: dd read failed"
  cmp "$work/pattern" "$work/back" || fail "$label: read back through $disk differs"
  echo "ok: $label: $mib MiB written at $at MiB through $disk are on the server and read back identical"
}

ext4_fill() {
  local disk=$1 i
  command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed (e2fsprogs)"
  mkfs.ext4 -q -F "$disk" || fail "mkfs.ext4 failed"
  mkdir -p "$work/mnt"
  mount "$disk" "$work/mnt" || fail "mount failed"
  for i in 1 2 3 4 5; do head -c $((i * 700000)) /dev/urandom >"$work/mnt/file$i"; done
  mkdir "$work/mnt/dir" && seq 1 20000 >"$work/mnt/dir/numbers"
  (cd "$work/mnt" && sha256sum file* dir/numbers) >"$work/sums"
  umount "$work/mnt" || fail "umount failed"
  echo "ok: mkfs.ext4, mount, 6 files written, umount"
}

ext4_reread() {
  local disk=$1 what=$2
  echo 3 >/proc/sys/vm/drop_caches
  mount "$disk" "$work/mnt" || fail "mount $what failed"
  (cd "$work/mnt" && sha256sum -c --quiet "$work/sums") || fail "checksums differ $what"
  umount "$work/mnt" || fail "umount $what failed"
  echo "ok: files read back identical $what"
}

ext4_fsck() {
  e2fsck -fn "$1" >"$work/fsck.txt" 2>&1 || { cat "$work/fsck.txt"; fail "e2fsck -fn found errors"; }
  echo "ok: e2fsck -fn clean"
}

sectors_of() { cat "/sys/block/${1#/dev/}/size"; }
sectors_are() { [ "$(sectors_of "$1")" -eq "$2" ]; }

grow_check() {
  local disk=$1 mib=$2 at=$3 old=${4:-} n
  n=$(($(stat -c %s "$work/pattern") >> 20))
  be_resize $((mib << 20))
  wait_for 60 "$disk to grow to $mib MiB with the export" sectors_are "$disk" $((mib << 11))
  echo "ok: $disk grew to $mib MiB ($(sectors_of "$disk") sectors) without a restart"
  dd if="$work/pattern" of="$disk" bs=1M seek="$at" oflag=direct conv=fsync status=none || fail "write to the new space failed"
  cmp "$work/pattern" <(dd if="$be_img" bs=1M skip="$at" count="$n" status=none) || fail "the new space does not hold the write"
  if [ -n "$old" ]; then
    cmp "$work/pattern" <(dd if="$disk" bs=1M skip="$old" count="$n" iflag=direct status=none) ||
      fail "data written before the resize changed"
  fi
  echo "ok: the new space is writable${old:+ and the old data intact}"
  grep -Eiq "size changed" "$daemon_log" || fail "the daemon log does not mention the resize"
  echo "ok: daemon log: $(grep -Ei "size changed" "$daemon_log" | tail -n 1 | cut -c1-200)"
}
