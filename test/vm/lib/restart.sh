# shellcheck shell=bash
# Helpers for daemon-restart tests (sourced, not run; it sources lib/daemon.sh).
#
#   restart_daemon CONFIG [PAUSE]   start the daemon again on a device that exists (no wait for a
#                                   new disk: the old one stays); PAUSE seconds before (default 0)
#   kill9_daemon                    SIGKILL the daemon and reap it
#   leave_daemon                    SIGUSR1 (planned restart): it must exit 0 and leave the disk
#   resumed                         the current daemon log says its queues resumed
#   fio_start DISK OUT              fio randwrite 4k with crc32c verify-as-you-go in the background,
#                                   iodepth 32, 2 jobs, until fio_check; pid in $fio_pid
#   fio_check OUT                   stops it (SIGINT: fio finishes the I/O in flight and reports);
#                                   fails unless it ended with 0 errors and verified data
#
# At exit a fio still running is stopped (SIGTERM, SIGKILL after 30 s) and reaped, before the daemon
# stops.
[ -z "${restart_sh_sourced:-}" ] || return 0
restart_sh_sourced=1
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh" # a no-op if the script sourced it

restart_daemon() {
  local config=$1 pause=${2:-0}
  [ "$pause" = 0 ] || sleep "$pause" # the outage itself, not a wait for readiness
  daemon_runs=$((daemon_runs + 1))
  daemon_log=$work/daemon.$daemon_runs.log
  "$DAEMON" --config "$config" >"$daemon_log" 2>&1 &
  daemon_pid=$!
  wait_for 60 "the restarted daemon to serve" serving
  daemon_alive || fail "the restarted daemon exited during start-up"
}

kill9_daemon() {
  kill -KILL "$daemon_pid"
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=''
}

leave_daemon() {
  local rc=0
  kill -USR1 "$daemon_pid"
  wait "$daemon_pid" || rc=$?
  daemon_pid=''
  [ "$rc" -eq 0 ] || fail "the daemon exited with status $rc after SIGUSR1"
}

resumed() { grep -q "resumed" "$daemon_log"; }

fio_pid=''
fio_kill() {
  alive "$fio_pid" || { fio_pid='' && return 0; }
  # SIGTERM: fio stops its job processes too.
  kill -TERM "$fio_pid" 2>/dev/null || true
  wait_gone "$fio_pid" 30 || kill -KILL "$fio_pid" 2>/dev/null || true
  wait "$fio_pid" 2>/dev/null || true
  fio_pid=''
}
on_cleanup fio_kill
fio_start() {
  local disk=$1 out=$2 seconds=600 # an upper bound: fio_check stops it
  (
    cd "$work" || exit 1
    exec fio --eta=never --name=restart --filename="$disk" --direct=1 --ioengine=libaio --iodepth=32 \
      --numjobs=2 --offset_increment=64M --size=48M --rw=randwrite --bs=4k --verify=crc32c --verify_fatal=1 \
      --do_verify=1 --verify_backlog=128 --time_based --runtime="$seconds" --group_reporting \
      --output-format=terse --terse-version=3 --output="$out.txt"
  ) 2>"$out.err" &
  fio_pid=$!
}

fio_check() {
  local out=$1 rc=0 errors read_kib write_kib max_lat_us
  kill -INT "$fio_pid" 2>/dev/null || true
  wait "$fio_pid" || rc=$?
  fio_pid=''
  # An interrupted fio exits 128 after a complete report; anything else is a failure.
  [ "$rc" -eq 0 ] || [ "$rc" -eq 128 ] || { cat "$out.err" "$out.txt"; fail "fio failed (exit $rc)"; }
  [ -s "$out.txt" ] || { cat "$out.err"; fail "fio wrote no report"; }
  # Terse v3: 5 error, 6 read KiB (the verify reads), 47 write KiB, 39 / 80 read / write total
  # latency max (usec): the longest pause fio saw is the larger.
  read -r errors read_kib write_kib max_lat_us < <(awk -F';' '$1 == 3 { print $5, $6, $47, ($39 > $80 ? $39 : $80) }' "$out.txt")
  [ "${errors:-}" = 0 ] || { cat "$out.txt"; fail "fio reported error '${errors:-none}'"; }
  [ "${read_kib:-0}" -gt 0 ] || { cat "$out.txt"; fail "fio verified nothing (no verify reads)"; }
  fio_max_pause_ms=$(awk -v u="${max_lat_us:-0}" 'BEGIN { printf "%.0f", u / 1000 }')
  echo "ok: fio randwrite verify=crc32c: no error, ${write_kib} KiB written, ${read_kib} KiB verified," \
    "longest I/O ${fio_max_pause_ms} ms"
}
