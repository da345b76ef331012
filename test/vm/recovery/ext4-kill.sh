#!/usr/bin/env bash
# ext4 on a memory disk while the daemon is SIGKILLed 5 times: a write-heavy job (many files,
# each written and fsync'ed, plus an index of their checksums) runs throughout. After the last
# restart the job finishes, the file system is unmounted, `e2fsck -fn` finds nothing to fix, and
# every file matches its checksum after a remount.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/restart.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 not installed"
command -v e2fsck >/dev/null || skip "e2fsck not installed"

memory_config "$work/ext4.yaml" vbrecfs0 256M "queues: 2"
start_daemon "$work/ext4.yaml" vbrecfs0
disk=/dev/$(disk_of vbrecfs0)
mkfs.ext4 -q -F "$disk" || fail "mkfs.ext4 $disk failed"
mnt=$work/mnt
mkdir -p "$mnt"
mount "$disk" "$mnt" || fail "mount failed"
echo "ok: ext4 on $disk mounted at $mnt"

# writer: files of 4-64 KiB, each fsync'ed, its checksum appended to an index only afterwards.
writer() {
  local i n
  for ((i = 0; ; i++)); do
    [ -e "$work/stop" ] && break
    n=$(((RANDOM % 16 + 1) * 4))
    head -c "${n}K" /dev/urandom >"$mnt/f$i.tmp"
    sync "$mnt/f$i.tmp"  # fsync (coreutils sync FILE)
    mv "$mnt/f$i.tmp" "$mnt/f$i"
    (cd "$mnt" && sha256sum "f$i") >>"$work/index"
  done
}
writer &
writer_pid=$!
writer_stop() { # before the file system is unmounted (lib/daemon.sh's step)
  [ -n "$writer_pid" ] || return 0
  touch "$work/stop"
  wait_gone "$writer_pid" 60 || kill "$writer_pid" 2>/dev/null || true
  wait "$writer_pid" 2>/dev/null || true
}
on_cleanup writer_stop

for ((k = 1; k <= 5; k++)); do
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", 1 + (r % 20) / 10 }')"
  kill9_daemon
  restart_daemon "$work/ext4.yaml" "$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", (r % 21) / 10 }')"
  kill -0 "$writer_pid" 2>/dev/null || fail "the writer died after kill $k"
done
sleep 2
touch "$work/stop"
rc=0
wait "$writer_pid" || rc=$?
writer_pid='' # reaped: the cleanup step must not signal whoever gets the PID next
[ "$rc" -eq 0 ] || fail "the writer failed (an I/O error reached the file system?)"
files=$(wc -l <"$work/index")
[ "$files" -gt 10 ] || fail "only $files files were written"
echo "ok: 5 SIGKILLs and restarts while writing; $files files written and fsync'ed"
umount "$mnt" || fail "umount failed"
e2fsck -fn "$disk" >"$work/fsck.txt" 2>&1 || { cat "$work/fsck.txt"; fail "e2fsck -fn found problems"; }
echo "ok: e2fsck -fn: clean"
mount "$disk" "$mnt" || fail "remount failed"
(cd "$mnt" && sha256sum --quiet -c "$work/index") || fail "file checksums differ"
echo "ok: all $files files match their checksums"
umount "$mnt"
stop_daemon
