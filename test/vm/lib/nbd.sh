# shellcheck shell=bash disable=SC2034 # its variables are read by the scripts that source it
# Helpers for real-kernel tests of the NBD backend (sourced, not run; it sources lib/daemon.sh).
#
#   source "$(dirname "$0")/../lib/daemon.sh"
#   source "$(dirname "$0")/../lib/nbd.sh"
#
# Provides:
#   nbd_config FILE NAME URI [LINE...]   a one-device nbd configuration ("backend.KEY: V" lines go
#                                        under backend:, other "KEY: V" lines on the device)
#   require_nbd_backend CONFIG           exit 77 when the daemon says the nbd backend is not available
#   nbd_backend_check CONFIG             the same test, as a status: 0 available, 77 not (reason in
#                                        $nbd_unavailable); fails on any other --check error
#   nbdkit_start ID ARGS...              nbdkit ARGS in the background (--exit-with-parent), ready
#                                        once its -P pid file exists; PID in ${nbdkit_pids[ID]}
#   nbdkit_start_tcp ID ARGS...          the same on a free 127.0.0.1 port, in ${nbdkit_ports[ID]}
#   nbdkit_kill ID [SIGNAL]              signal (default TERM) nbdkit ID by PID and reap it
#   nbd_unix_uri SOCK, nbd_tcp_uri PORT  URIs in libnbd's syntax
#   nbd_server_read URI OFFSET LENGTH OUT  read a range straight from the server (nbdcopy, no kernel)
#   knbd_attach SOCK                     connect a free /dev/nbdN to SOCK with nbd-client; sets knbd_dev
#   knbd_detach DEV                      nbd-client -d
#   on_cleanup CMD [ARG...]              (lib/cleanup.sh) run CMD at exit, before the daemon and
#                                        the servers stop
#   alive PID, wait_gone PID SECONDS, stop_daemon_bounded SECONDS   from lib/daemon.sh
#
# At exit, after the steps pushed later (the script's), $work/mnt* are unmounted, kernel NBD devices
# detached, the daemon stopped while its servers still run (a detach flushes through the backend),
# then every nbdkit; then lib/daemon.sh's steps run (they remove $work).
[ -z "${nbd_sh_sourced:-}" ] || return 0
nbd_sh_sourced=1
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh" # a no-op if the script sourced it
command -v nbdkit >/dev/null || skip "nbdkit not installed"

declare -A nbdkit_pids=() nbdkit_ports=()
knbd_devs=() nbd_unavailable=''

nbdkit_kill_all() {
  local id rc=0
  for id in "${!nbdkit_pids[@]}"; do nbdkit_kill "$id" TERM || rc=1; done
  return "$rc"
}
knbd_detach_all() {
  local dev rc=0
  for dev in "${knbd_devs[@]}"; do knbd_detach "$dev" || rc=1; done
  return "$rc"
}
# Pushed in reverse: they run from the bottom up.
on_cleanup nbdkit_kill_all
on_cleanup stop_daemon_bounded 120
on_cleanup knbd_detach_all
on_cleanup umount_work

nbd_unix_uri() { printf 'nbd+unix:///?socket=%s' "$1"; }
nbd_tcp_uri() { printf 'nbd://127.0.0.1:%s/' "$1"; }

# nbd_config FILE NAME URI [LINE...]: LINE is "backend.KEY: VALUE" for the backend map or
# "KEY: VALUE" for the device, e.g. "backend.reconnect-timeout: 60s" "queues: 2".
nbd_config() { device_config "$1" "$2" nbd "backend.uri: \"$3\"" "${@:4}"; }

# nbd_backend_check CONFIG: backend_check nbd CONFIG (lib/daemon.sh), the reason also in
# $nbd_unavailable.
nbd_backend_check() {
  local rc=0
  backend_check nbd "$1" || rc=$?
  nbd_unavailable=$backend_unavailable
  return "$rc"
}

# require_nbd_backend CONFIG: skips the script (exit 77) if the nbd backend is not built.
require_nbd_backend() { require_backend nbd "$1"; }

nbdkit_ready_or_dead() { [ -s "$work/nbdkit-$1.pid" ] || ! alive "${nbdkit_pids[$1]}"; }

# nbdkit_spawn ID ARGS...: status 1 (and no PID recorded) if nbdkit exits before it is ready.
nbdkit_spawn() {
  local id=$1 pidfile=$work/nbdkit-$1.pid pid
  shift
  rm -f "$pidfile"
  echo "---- nbdkit $* ----" >>"$work/nbdkit-$id.log"
  nbdkit --exit-with-parent -P "$pidfile" "$@" >>"$work/nbdkit-$id.log" 2>&1 &
  pid=$!
  nbdkit_pids[$id]=$pid
  # nbdkit writes its pid file once it listens.
  wait_for 60 "nbdkit ($id) to write its pid file" nbdkit_ready_or_dead "$id"
  if ! alive "$pid"; then
    wait "$pid" 2>/dev/null || true
    unset "nbdkit_pids[$id]"
    return 1
  fi
  [ "$(cat "$pidfile")" = "$pid" ] || fail "nbdkit ($id) pid file says $(cat "$pidfile"), expected $pid"
}

nbdkit_start() {
  local id=$1
  nbdkit_spawn "$@" || fail "nbdkit ($id) exited during start-up: $(tail -n 5 "$work/nbdkit-$id.log")"
}

# nbdkit_start_tcp ID ARGS...: picks a port nobody listens on (ss), tries the next one if the bind
# still fails (lost a race), records it in ${nbdkit_ports[ID]}.
nbdkit_start_tcp() {
  local id=$1 port try
  shift
  for try in $(seq 1 20); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] || continue
    if nbdkit_spawn "$id" -i 127.0.0.1 -p "$port" "$@"; then
      nbdkit_ports[$id]=$port
      return 0
    fi
    echo "note: nbdkit ($id) could not start on port $port (try $try): $(tail -n 1 "$work/nbdkit-$id.log")"
  done
  fail "nbdkit ($id) did not start on any of 20 ports: $(tail -n 5 "$work/nbdkit-$id.log")"
}

# nbdkit_kill ID [SIGNAL]: signals nbdkit ID by PID and reaps it.
nbdkit_kill() {
  local id=$1 sig=${2:-TERM} pid=${nbdkit_pids[$1]:-}
  [ -n "$pid" ] || return 0
  # The group's stderr also takes bash's "Killed" job notice: the signal is intended.
  {
    kill "-$sig" "$pid" || true
    wait_gone "$pid" 30 || kill -KILL "$pid" || true
    wait "$pid" || true
  } 2>/dev/null
  unset "nbdkit_pids[$id]"
}

# nbd_server_read URI OFFSET LENGTH OUT: the range as the server has it, read by nbdcopy through
# an nbdkit nbd-plugin client with the offset filter (no kernel, no vduse-bridge in the path).
nbd_server_read() {
  nbdcopy -- [ nbdkit --exit-with-parent --filter=offset nbd uri="$1" offset="$2" range="$3" ] "$4"
}

# knbd_attach SOCK: connects the first free /dev/nbdN to the unix socket SOCK with nbd-client
# (netlink) and waits for its size; sets knbd_dev. Status 1 with a reason in $knbd_error on failure.
knbd_dev='' knbd_error=''
knbd_size() { [ "$(cat "/sys/block/$1/size" 2>/dev/null || echo 0)" -gt 0 ]; }
knbd_attach() {
  local sock=$1 d n out
  knbd_dev='' knbd_error=''
  command -v nbd-client >/dev/null || { knbd_error="nbd-client not installed (Debian: nbd-client)" && return 1; }
  [ -e /sys/module/nbd ] || { knbd_error="the nbd kernel module is not loaded" && return 1; }
  for d in /sys/block/nbd*; do
    [ -e "$d" ] || continue
    n=${d##*/}
    if [ -e "$d/pid" ] || knbd_size "$n"; then continue; fi
    if ! out=$(nbd-client -unix "$sock" "/dev/$n" 2>&1); then
      knbd_error="nbd-client -unix $sock /dev/$n failed: ${out//$'\n'/ }"
      return 1
    fi
    knbd_devs+=("/dev/$n")
    wait_for 30 "/dev/$n to get its size" knbd_size "$n"
    knbd_dev=/dev/$n
    return 0
  done
  knbd_error="no free /dev/nbdN"
  return 1
}
knbd_detach() {
  local dev=$1 i
  nbd-client -d "$dev" >/dev/null 2>&1 || return 1
  for i in "${!knbd_devs[@]}"; do [ "${knbd_devs[$i]}" != "$dev" ] || unset "knbd_devs[$i]"; done
}

# --- the backend interface of lib/backend.sh (nbd_be_*; see there) --------------------------------
# One nbdkit (id "be") serving the image $work/nbd.img with its file plugin (the data outlives
# nbdkit), on the unix socket $work/nbd.sock or, with nbd_be_transport=tcp, a free 127.0.0.1 port
# that a restart keeps. Variables only set when a check asks, since bench/suite.sh sources both
# this and lib/iscsi.sh.
# nbd_be_plugin=memory serves nbdkit's memory plugin instead (no image file, no syscall per
# request: fio verify is about twice as fast under TCG), for checks that neither restart nor resize
# the server (its data goes with it).
nbd_be_transport=unix nbd_be_uri='' nbd_be_port='' nbd_be_plugin=${nbd_be_plugin:-file} nbd_be_size=''
nbd_be_init() {
  be_label=nbd be_server=nbdkit
  be_img=$work/nbd.img
  be_keys=("backend.connections: 4" "backend.request-timeout: 30s")
  be_fio_size=48M be_fio_runs=("randwrite 4k" "randwrite 64k" "randrw 4k" "randrw 64k")
  be_restart_fio_seconds=${VDUSE_BRIDGE_RESTART_FIO_SECONDS:-25}
  be_reconnect_log_res=("${VDUSE_BRIDGE_RECONNECT_LOG_RE:-reconnect}")
  be_has_server=1 be_can_shrink=1 be_eio_after_timeout=1
}
nbd_be_spawn() {
  local plugin=(file file="$be_img")
  [ "$nbd_be_plugin" != memory ] || plugin=(memory "$nbd_be_size")
  if [ "$nbd_be_transport" = tcp ]; then
    if [ -z "$nbd_be_port" ]; then
      nbdkit_start_tcp be "${plugin[@]}"
      nbd_be_port=${nbdkit_ports[be]}
    else
      nbdkit_start be -i 127.0.0.1 -p "$nbd_be_port" "${plugin[@]}"
    fi
    nbd_be_uri=$(nbd_tcp_uri "$nbd_be_port")
  else
    rm -f "$work/nbd.sock" # a SIGKILLed nbdkit leaves its socket behind
    nbdkit_start be -U "$work/nbd.sock" "${plugin[@]}"
    nbd_be_uri=$(nbd_unix_uri "$work/nbd.sock")
  fi
}
nbd_be_server_start() {
  nbd_be_size=$1
  rm -f "$be_img"
  [ "$nbd_be_plugin" = memory ] || truncate -s "$1" "$be_img"
  nbd_be_port=''
  nbd_be_spawn
  be_where="$nbd_be_uri (nbdkit $nbd_be_plugin plugin, pid ${nbdkit_pids[be]})"
}
nbd_be_server_kill() { nbdkit_kill be "${1:-KILL}" && rm -f "$work/nbd.sock"; }
nbd_be_server_restart() {
  [ "$nbd_be_plugin" != memory ] || fail "nbd_be_plugin=memory: a restarted server would have lost the data"
  nbd_be_spawn
}
nbd_be_server_stop() {
  nbdkit_kill be TERM
  rm -f "$work/nbd.sock"
}
nbd_be_config() {
  local file=$1 name=$2
  shift 2
  nbd_config "$file" "$name" "$nbd_be_uri" "$@"
}
nbd_be_require() { require_nbd_backend "$1"; }
nbd_be_resize() { # SIZE: nbdkit reads the image's size when a client connects
  [ "$nbd_be_plugin" != memory ] || fail "nbd_be_plugin=memory cannot resize"
  nbdkit_kill be TERM
  truncate -s "$1" "$be_img"
  nbd_be_spawn
}
nbd_be_server_read_check() { command -v nbdcopy >/dev/null || skip "nbdcopy not installed (libnbd-bin)"; }
nbd_be_server_read() { nbd_server_read "$nbd_be_uri" "$@"; }
