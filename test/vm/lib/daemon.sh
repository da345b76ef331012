# shellcheck shell=bash
# Shared helpers for real-kernel tests of the vduse-bridge daemon (sourced, not run; sourcing it
# again is a no-op). Provides: fail, skip, wait_for, start_daemon CONFIG, stop_daemon, disk_of NAME,
# alive PID, wait_gone PID SECONDS, stop_daemon_bounded SECONDS, the scratch directory $work, and
# on_cleanup (lib/cleanup.sh). At exit, after the steps pushed later (by the other libraries and the
# script), $work/mnt* are unmounted, the daemon is stopped by PID (never by name; SIGKILL if it has
# not exited 120 s after SIGTERM) and $work is removed.
[ -z "${daemon_sh_sourced:-}" ] || return 0
daemon_sh_sourced=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cleanup.sh"

fail() {
  echo "FAIL: $*" >&2
  [ -z "${daemon_log:-}" ] || { echo "---- daemon log ----" >&2; tail -n 40 "$daemon_log" >&2 || true; }
  exit 1
}
skip() {
  echo "SKIP: $*"
  exit 77
}

[ "${IN_VM:-0}" = 1 ] || [ -c /dev/vduse/control ] || skip "no VDUSE here (run it with test/vm/run-vm)"
[ -c /dev/vduse/control ] || fail "/dev/vduse/control missing: the vduse module is not loaded"
BUILD_DIR=${VDUSE_BRIDGE_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/build}
DAEMON=$BUILD_DIR/src/vduse-bridge
[ -x "$DAEMON" ] || fail "no daemon binary at $DAEMON (build first, or set VDUSE_BRIDGE_BUILD_DIR)"

work=$(mktemp -d)
# --one-file-system: a file system still mounted under $work (umount failed) keeps its files.
on_cleanup rm -rf --one-file-system "$work"
daemon_pid='' daemon_log='' daemon_runs=0

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# wait_gone PID SECONDS: polls until PID has exited; status 1 if it is still there after SECONDS.
wait_gone() {
  local deadline=$((SECONDS + $2))
  while alive "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# stop_daemon_bounded SECONDS: SIGTERM, then SIGKILL if it has not exited after SECONDS (a detach
# can wait for I/O held while a backend's server is away). No status check: for clean-up paths.
stop_daemon_bounded() {
  alive "$daemon_pid" || { daemon_pid='' && return 0; }
  kill -TERM "$daemon_pid" 2>/dev/null || true
  if ! wait_gone "$daemon_pid" "$1"; then
    echo "warning: the daemon (pid $daemon_pid) did not exit ${1}s after SIGTERM; killing it" >&2
    kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=''
}

# umount_work: unmounts every file system mounted on $work/mnt* (lazily if it is busy).
umount_work() {
  local m rc=0
  for m in "$work"/mnt*; do
    if [ -d "$m" ] && mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" || rc=1; fi
  done
  return "$rc"
}

on_cleanup stop_daemon_bounded 120
on_cleanup umount_work # before the daemon goes: the disk flushes through it

# wait_for SECONDS WHAT CMD...: poll until CMD succeeds (TCG is slow: be generous, never sleep fixed).
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    # return too: in a cleanup step fail does not exit (lib/cleanup.sh), and the loop must end.
    [ "$SECONDS" -lt "$deadline" ] || { fail "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 0.05
  done
}

# disk_of NAME: prints vdX once the virtio-vdpa disk of vDPA device NAME exists.
disk_of() {
  local d
  for d in /sys/bus/vdpa/devices/"$1"/virtio*/block/*; do
    [ -e "$d" ] && { basename "$d"; return 0; }
  done
  return 1
}
disk_ready() { local d; d=$(disk_of "$1") && [ -b "/dev/$d" ]; }
daemon_alive() { kill -0 "$daemon_pid" 2>/dev/null; }
serving() { grep -q "serving" "$daemon_log" 2>/dev/null || ! daemon_alive; }

# start_daemon CONFIG [NAME...]: starts the daemon and waits until it serves every device and each
# NAME's disk node exists.
start_daemon() {
  local config=$1 name
  shift
  # A log per run, so that waiting for "serving" never sees an earlier run's line.
  daemon_runs=$((daemon_runs + 1))
  daemon_log=$work/daemon.$daemon_runs.log
  "$DAEMON" --config "$config" >"$daemon_log" 2>&1 &
  daemon_pid=$!
  wait_for 60 "the daemon to serve its devices" serving
  daemon_alive || fail "the daemon exited during start-up"
  for name in "$@"; do
    wait_for 30 "the disk of $name" disk_ready "$name"
  done
}

# stop_daemon: SIGTERM, and the exit status must be 0.
stop_daemon() {
  local rc=0
  kill -TERM "$daemon_pid"
  wait "$daemon_pid" || rc=$?
  daemon_pid=''
  [ "$rc" -eq 0 ] || fail "the daemon exited with status $rc after SIGTERM"
}

# device_config FILE NAME TYPE [LINE...]: a one-device configuration with a backend of TYPE; LINE
# is "backend.KEY: VALUE" for the backend map or "KEY: VALUE" for the device, e.g.
# "backend.reconnect-timeout: 60s" "queues: 2". Every backend library's *_config writes through it.
device_config() {
  local file=$1 name=$2 type=$3 line
  shift 3
  {
    echo "devices:"
    echo "  - name: $name"
    echo "    backend:"
    echo "      type: $type"
    for line in "$@"; do [[ $line != backend.* ]] || echo "      ${line#backend.}"; done
    for line in "$@"; do [[ $line == backend.* ]] || echo "    $line"; done
  } >"$file"
}

# memory_config FILE NAME SIZE [extra device keys as "key: value" lines...]
memory_config() { device_config "$1" "$2" memory "backend.size: $3" "${@:4}"; }

# backend_check TYPE CONFIG: 0 if --check accepts CONFIG; 77, with the daemon's words in
# $backend_unavailable, if it says backend TYPE is not in this build; any other rejection fails.
backend_unavailable=''
backend_check() {
  local type=$1 config=$2 out rc=0
  out=$("$DAEMON" --config "$config" --check 2>&1) || rc=$?
  [ "$rc" -ne 0 ] || return 0
  out=${out//$'\n'/ }
  case $out in
  *"not available"*)
    # The daemon's words without the file:line:column and key that precede them.
    [[ $out != *"backend type "* ]] || out="backend type ${out##*backend type }"
    backend_unavailable="the $type backend is not available in this build of vduse-bridge (--check: $out)"
    return 77
    ;;
  esac
  fail "vduse-bridge --check rejected $config (exit $rc): $out"
}

# require_backend TYPE CONFIG: skips the script (exit 77) if backend TYPE is not built.
require_backend() {
  local rc=0
  backend_check "$1" "$2" || rc=$?
  [ "$rc" -eq 0 ] || skip "$backend_unavailable"
}

# fio_verify_runs DISK LABEL SIZE RUN...: fio with crc32c verification, one run per RUN ("RW BS",
# e.g. "randwrite 4k" or "randrw 16k"), iodepth 32, two jobs of SIZE each in disjoint ranges (0 and
# 64M on). Any I/O or verify error fails the test. Runs in $work (fio leaves verify state files there).
fio_verify_runs() {
  local disk=$1 label=$2 size=$3 run rw bs errors read_kib write_kib out
  shift 3
  command -v fio >/dev/null || skip "fio not installed"
  (
    cd "$work"
    for run in "$@"; do
      read -r rw bs <<<"$run"
      out=$work/fio-$rw-$bs
      fio --eta=never --name="verify-$rw-$bs" --filename="$disk" --direct=1 --ioengine=libaio --iodepth=32 \
        --numjobs=2 --offset_increment=64M --size="$size" --rw="$rw" --bs="$bs" \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting --output-format=terse \
        --terse-version=3 --output="$out.txt" 2>"$out.err" ||
        { cat "$out.err" "$out.txt"; fail "$label: fio $rw $bs failed"; }
      # Terse v3: field 5 error, 6 KiB read (including the verify reads), 47 KiB written.
      read -r errors read_kib write_kib < <(awk -F';' '$1 == 3 { print $5, $6, $47 }' "$out.txt")
      [ "${errors:-}" = 0 ] || { cat "$out.txt"; fail "$label: fio $rw $bs reported error '${errors:-none}'"; }
      echo "ok: $label: fio $rw bs=$bs iodepth=32 numjobs=2 size=$size verify=crc32c:" \
        "${write_kib} KiB written, ${read_kib} KiB read"
    done
  ) || exit 1
}

# fio_verify_matrix DISK LABEL: fio_verify_runs with random writes and mixed read/write, 4k and 64k
# blocks, 48M per job (ranges 0-48M, 64M-112M).
fio_verify_matrix() {
  fio_verify_runs "$1" "$2" 48M "randwrite 4k" "randwrite 64k" "randrw 4k" "randrw 64k"
}
