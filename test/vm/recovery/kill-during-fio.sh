#!/usr/bin/env bash
# The daemon dies under load and comes back: fio (randwrite 4k, iodepth 32, 2 jobs, crc32c verify
# as it goes) runs on a 2-queue disk while the daemon is SIGKILLed 10 times at random moments and
# started again after 0-2 s each time, then restarted 3 times the planned way (SIGUSR1). fio must
# end with no error and every block it wrote must verify; the disk stays the same /dev/vdX.
# Once with the memory backend and once with nbd (nbdkit memory stays up meanwhile).
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
have_nbdkit=0
if command -v nbdkit >/dev/null; then
  # Before lib/restart.sh: at exit fio stops first, then the daemon, then nbdkit.
  source "$(dirname "$0")/../lib/nbd.sh"
  have_nbdkit=1
fi
source "$(dirname "$0")/../lib/restart.sh"
command -v fio >/dev/null || skip "fio not installed"
KILLS=${VDUSE_BRIDGE_RESTART_KILLS:-10}

if [ "$have_nbdkit" = 1 ]; then
  nbdkit_log() { [ ! -s "$work/nbdkit-rec.log" ] || { echo "---- nbdkit log ----"; tail -n 20 "$work/nbdkit-rec.log"; }; }
  on_cleanup nbdkit_log
fi

# run_case LABEL CONFIG NAME
run_case() {
  local label=$1 config=$2 name=$3 disk i pause
  start_daemon "$config" "$name"
  disk=/dev/$(disk_of "$name")
  echo "ok: $label: $disk"
  fio_start "$disk" "$work/fio-$label"
  for ((i = 1; i <= KILLS; i++)); do
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", 1 + (r % 20) / 10 }')" # 1-3 s of service
    kill9_daemon
    pause=$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", (r % 21) / 10 }') # 0-2 s without a daemon
    restart_daemon "$config" "$pause"
    [ "/dev/$(disk_of "$name")" = "$disk" ] || fail "$label: the disk changed after restart $i"
    kill -0 "$fio_pid" 2>/dev/null || { cat "$work/fio-$label.err"; fail "$label: fio ended early (kill $i)"; }
  done
  echo "ok: $label: $KILLS SIGKILLs and restarts under fio; last restart: $(grep -m1 resumed "$daemon_log" || echo 'no queue was in use')"
  for ((i = 1; i <= 3; i++)); do
    sleep 1
    leave_daemon
    restart_daemon "$config" 0.5
  done
  echo "ok: $label: 3 planned restarts (SIGUSR1) under fio"
  sleep 2
  fio_check "$work/fio-$label"
  echo "ok: $label: longest I/O (the pause) across the restarts: ${fio_max_pause_ms} ms"
  stop_daemon
  [ ! -e "/run/vduse-bridge/$name.state" ] || fail "$label: the recovery state outlived the teardown"
}

memory_config "$work/mem.yaml" vbrecmem0 256M "queues: 2"
run_case memory "$work/mem.yaml" vbrecmem0
[ ! -e /dev/shm/vduse-bridge/vbrecmem0.mem ] || fail "the memory disk's contents outlived the teardown"
echo "ok: memory: contents file removed by the teardown"

if [ "$have_nbdkit" = 1 ]; then
  # --threads 1: nbdkit 1.32 can abort (raw_send_socket: sock >= 0) when a client dies while
  # another of its threads is still replying; one thread per connection avoids that race.
  nbdkit_start rec --threads 1 -U "$work/nbd.sock" memory 256M
  nbd_config "$work/nbd.yaml" vbrecnbd0 "$(nbd_unix_uri "$work/nbd.sock")" "queues: 2" "backend.connections: 2"
  run_case nbd "$work/nbd.yaml" vbrecnbd0
else
  echo "ok: nbd case skipped: nbdkit not installed"
fi
