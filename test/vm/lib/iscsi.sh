# shellcheck shell=bash disable=SC2034 # its variables are read by the scripts that source it
# Helpers for real-kernel tests of the iSCSI backend (sourced, not run; it sources lib/daemon.sh):
# tgtd, the user-space iSCSI target, runs inside the guest on 127.0.0.1 with LUNs backed by files in
# the guest's /tmp (tmpfs).
#
#   source "$(dirname "$0")/../lib/daemon.sh"
#   source "$(dirname "$0")/../lib/iscsi.sh"
#
# Provides:
#   iscsi_config FILE NAME URI [LINE...]  a one-device iscsi configuration ("backend.KEY: V" lines go
#                                         under backend:, other "KEY: V" lines on the device)
#   require_iscsi_backend CONFIG          exit 77 when the daemon says the iscsi backend is not available
#   iscsi_backend_check CONFIG            the same test as a status: 0 available, 77 not (reason in
#                                         $iscsi_unavailable); fails on any other --check error
#   tgtd_start                            tgtd on a free 127.0.0.1 port ($tgtd_port) with a private
#                                         control socket ($tgtd_control); ready once tgtadm answers
#                                         and the port listens; PID in $tgtd_pid
#   tgt_lun_add LUN FILE [BLOCKSIZE [PARAMS]]  target $TGT_IQN (tid 1, made on first use, open to
#                                         any initiator) gets LUN backed by FILE; remembered, so that
#                                         tgtd_start after tgtd_kill serves the same target and LUNs
#   tgtadm_ ARGS...                       tgtadm on tgtd's control socket with --lld iscsi
#   tgtd_kill [SIGNAL]                    signal tgtd (default KILL) by PID and reap it
#   tgtd_stop                             delete the target, ask tgtd to exit, SIGKILL if it does not
#   iscsi_uri LUN                         iscsi://127.0.0.1:$tgtd_port/$TGT_IQN/LUN
#   on_cleanup CMD [ARG...]               (lib/cleanup.sh) run CMD at exit, before the daemon and
#                                         tgtd stop
#   alive PID, wait_gone PID SECONDS, stop_daemon_bounded SECONDS   from lib/daemon.sh
#
# At exit, after the steps pushed later (the script's), $work/mnt* are unmounted, the daemon is
# stopped while tgtd still runs (a detach flushes through the backend), then tgtd; then
# lib/daemon.sh's steps run (they remove $work).
[ -z "${iscsi_sh_sourced:-}" ] || return 0
iscsi_sh_sourced=1
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh" # a no-op if the script sourced it
command -v tgtd >/dev/null || skip "tgtd not installed (Debian: tgt)"
command -v tgtadm >/dev/null || skip "tgtadm not installed (Debian: tgt)"

TGT_IQN=iqn.2026-11.org.vduse-bridge.vmtest:disk
tgtd_pid='' tgtd_port='' tgtd_control='' iscsi_unavailable=''
tgt_luns=()

# Pushed in reverse: they run from the bottom up.
on_cleanup tgtd_stop
on_cleanup stop_daemon_bounded 120
on_cleanup umount_work

iscsi_uri() { printf 'iscsi://127.0.0.1:%s/%s/%s' "$tgtd_port" "$TGT_IQN" "$1"; }

# iscsi_config FILE NAME URI [LINE...]: LINE is "backend.KEY: VALUE" for the backend map or
# "KEY: VALUE" for the device, e.g. "backend.reconnect-timeout: 60s" "queues: 2".
iscsi_config() {
  device_config "$1" "$2" iscsi "backend.uri: \"$3\"" \
    "backend.initiator-name: iqn.2026-11.org.vduse-bridge.vmtest:initiator" "${@:4}"
}

# iscsi_backend_check CONFIG: backend_check iscsi CONFIG (lib/daemon.sh), the reason also in
# $iscsi_unavailable.
iscsi_backend_check() {
  local rc=0
  backend_check iscsi "$1" || rc=$?
  iscsi_unavailable=$backend_unavailable
  return "$rc"
}

# require_iscsi_backend CONFIG: skips the script (exit 77) if the iscsi backend is not built.
require_iscsi_backend() { require_backend iscsi "$1"; }

tgtadm_() { tgtadm -C "$tgtd_control" --lld iscsi "$@"; }

# tgt_make_target: target tid 1 with every LUN in $tgt_luns ("LUN FILE BLOCKSIZE PARAMS").
tgt_make_target() {
  local entry lun file bs params
  tgtadm_ --mode target --op new --tid 1 --targetname "$TGT_IQN" >>"$work/tgtadm.log" 2>&1 ||
    fail "tgtadm: cannot create the target: $(tail -n 3 "$work/tgtadm.log")"
  tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL >>"$work/tgtadm.log" 2>&1 ||
    fail "tgtadm: cannot open the target to initiators: $(tail -n 3 "$work/tgtadm.log")"
  for entry in "${tgt_luns[@]}"; do
    read -r lun file bs params <<<"$entry"
    tgt_lun_new "$lun" "$file" "$bs" "$params"
  done
}

tgt_lun_new() {
  local lun=$1 file=$2 bs=$3 params=${4:-}
  tgtadm_ --mode logicalunit --op new --tid 1 --lun "$lun" --backing-store "$file" --blocksize "$bs" \
    >>"$work/tgtadm.log" 2>&1 || fail "tgtadm: cannot add LUN $lun ($file): $(tail -n 3 "$work/tgtadm.log")"
  if [ -n "$params" ]; then
    tgtadm_ --mode logicalunit --op update --tid 1 --lun "$lun" --params "$params" >>"$work/tgtadm.log" 2>&1 ||
      fail "tgtadm: cannot set $params on LUN $lun: $(tail -n 3 "$work/tgtadm.log")"
  fi
}

# tgt_lun_add LUN FILE [BLOCKSIZE [PARAMS]]: PARAMS as for tgtadm --params, e.g. thin_provisioning=1.
tgt_lun_add() {
  local lun=$1 file=$2 bs=${3:-512} params=${4:-}
  [ -n "$tgtd_pid" ] || fail "tgt_lun_add before tgtd_start"
  if [ ${#tgt_luns[@]} -eq 0 ]; then
    tgt_luns+=("$lun $file $bs $params")
    tgt_make_target
  else
    tgt_luns+=("$lun $file $bs $params")
    tgt_lun_new "$lun" "$file" "$bs" "$params"
  fi
}

tgtd_answers() { tgtadm -C "$tgtd_control" --mode sys --op show >/dev/null 2>&1 || ! alive "$tgtd_pid"; }
tgtd_listens() { [ -n "$(ss -Hltn "sport = :$tgtd_port" 2>/dev/null)" ]; }

# tgtd_spawn: status 1 if tgtd exits or does not listen on $tgtd_port (taken meanwhile).
tgtd_spawn() {
  local sock=/run/tgtd/socket.$tgtd_control
  rm -f "$sock" "$sock.lock" # left by a SIGKILLed tgtd
  echo "---- tgtd -f -C $tgtd_control --iscsi portal=127.0.0.1:$tgtd_port ----" >>"$work/tgtd.log"
  # Only the loopback portal; -f: stays our child, so the PID is tgtd's.
  tgtd -f -C "$tgtd_control" --iscsi "portal=127.0.0.1:$tgtd_port" >>"$work/tgtd.log" 2>&1 &
  tgtd_pid=$!
  wait_for 60 "tgtd to answer on its control socket" tgtd_answers
  if alive "$tgtd_pid"; then
    local deadline=$((SECONDS + 10))
    until tgtd_listens; do
      [ "$SECONDS" -lt "$deadline" ] || break
      sleep 0.05
    done
    tgtd_listens && return 0
    tgtd_kill KILL
    return 1
  fi
  wait "$tgtd_pid" 2>/dev/null || true
  tgtd_pid=''
  return 1
}

# tgtd_start: the first time picks a control socket and a free port; later (after tgtd_kill) starts
# tgtd again on the same port with the same target and LUNs.
tgtd_start() {
  local try
  mkdir -p /run/tgtd # its control socket lives there; the guest's /run is a fresh tmpfs
  if [ -z "$tgtd_control" ]; then
    tgtd_control=$((1000 + $$ % 30000))
    while [ -e "/run/tgtd/socket.$tgtd_control" ]; do tgtd_control=$((tgtd_control + 1)); done
  fi
  if [ -n "$tgtd_port" ]; then
    tgtd_spawn || fail "tgtd did not start again on 127.0.0.1:$tgtd_port: $(tail -n 5 "$work/tgtd.log")"
  else
    for try in $(seq 1 20); do
      tgtd_port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
      [ -z "$(ss -Hltn "sport = :$tgtd_port" 2>/dev/null)" ] || continue
      tgtd_spawn && break
      echo "note: tgtd could not start on port $tgtd_port (try $try): $(tail -n 1 "$work/tgtd.log")"
      tgtd_port=''
    done
    [ -n "$tgtd_port" ] || fail "tgtd did not start on any of 20 ports: $(tail -n 5 "$work/tgtd.log")"
  fi
  if [ ${#tgt_luns[@]} -gt 0 ]; then tgt_make_target; fi
}

tgtd_kill() {
  local sig=${1:-KILL}
  [ -n "$tgtd_pid" ] || return 0
  {
    kill "-$sig" "$tgtd_pid" || true
    wait_gone "$tgtd_pid" 30 || kill -KILL "$tgtd_pid" || true
    wait "$tgtd_pid" || true
  } 2>/dev/null
  tgtd_pid=''
}

# tgtd_stop: tgtd ignores SIGTERM and will not exit while it has targets: delete the target, ask it
# to exit, and SIGKILL it by PID if it is still there after 5 s.
tgtd_stop() {
  alive "$tgtd_pid" || { tgtd_pid='' && return 0; }
  tgtadm_ --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
  tgtadm -C "$tgtd_control" --mode sys --op delete >/dev/null 2>&1 || true
  wait_gone "$tgtd_pid" 5 || kill -KILL "$tgtd_pid" 2>/dev/null || true
  wait "$tgtd_pid" 2>/dev/null || true
  tgtd_pid=''
}

# --- the backend interface of lib/backend.sh (iscsi_be_*; see there) ------------------------------
# tgtd with LUN 1 backed by $work/iscsi.img (iscsi_be_block_size bytes per block, default 512);
# tgtd reads a LUN's size when the LUN is made, so growing restarts it. Variables only set when a
# check asks, since bench/suite.sh sources both this and lib/nbd.sh.
iscsi_be_block_size=512
iscsi_be_init() {
  be_label=iscsi be_server=tgtd
  be_img=$work/iscsi.img
  be_keys=("backend.request-timeout: 30s")
  be_fio_size=32M be_fio_runs=("randwrite 4k" "randwrite 64k" "randrw 16k")
  be_restart_fio_seconds=${VDUSE_BRIDGE_RESTART_FIO_SECONDS:-20}
  be_reconnect_log_res=("session lost" "logged in again")
  be_has_server=1 be_can_shrink=1 be_eio_after_timeout=1
}
iscsi_be_server_start() {
  rm -f "$be_img"
  truncate -s "$1" "$be_img"
  tgtd_start
  tgt_lun_add 1 "$be_img" "$iscsi_be_block_size"
  be_where="$(iscsi_uri 1) (tgtd pid $tgtd_pid, LUN 1 on $(stat -f -c %T "$be_img"), $iscsi_be_block_size-byte blocks)"
}
iscsi_be_server_kill() { tgtd_kill "${1:-KILL}"; }
iscsi_be_server_restart() { tgtd_start; } # the same port, target and LUNs
iscsi_be_server_stop() { # the next iscsi_be_server_start picks a new port and makes the target anew
  tgtd_stop
  tgt_luns=() tgtd_port=''
}
iscsi_be_config() {
  local file=$1 name=$2
  shift 2
  iscsi_config "$file" "$name" "$(iscsi_uri 1)" "$@"
}
iscsi_be_require() { require_iscsi_backend "$1"; }
iscsi_be_resize() {
  tgtd_kill KILL
  truncate -s "$1" "$be_img"
  tgtd_start
}
iscsi_be_server_read_check() { :; }
# The backing file: what tgtd stored (no initiator in the path but tgtd's own writes).
iscsi_be_server_read() { dd if="$be_img" of="$3" bs=64k skip="$1" count="$2" iflag=skip_bytes,count_bytes status=none; }
