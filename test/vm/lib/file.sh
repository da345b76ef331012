# shellcheck shell=bash disable=SC2034 # its variables are read by the scripts that source it
# Helpers for real-kernel tests of the file backend (sourced, not run; it sources lib/daemon.sh).
#
# Provides:
#   file_config FILE NAME PATH [LINE...]  a one-device file configuration with resize-poll-interval
#                                         500ms ("backend.KEY: V" lines go under backend:, other
#                                         "KEY: V" lines on the device)
#   file_be_*                             the backend interface of lib/backend.sh: the image
#                                         $work/file.img is the export; there is no server to kill
[ -z "${file_sh_sourced:-}" ] || return 0
file_sh_sourced=1
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh" # a no-op if the script sourced it

file_config() { device_config "$1" "$2" file "backend.path: $3" "backend.resize-poll-interval: 500ms" "${@:4}"; }

# --- the backend interface of lib/backend.sh (file_be_*; see there) -------------------------------
file_be_init() {
  be_label="file backend" be_server=''
  be_img=$work/file.img
  be_keys=()
  be_fio_size=48M be_fio_runs=("randwrite 4k" "randwrite 64k" "randrw 4k" "randrw 64k")
  be_restart_fio_seconds=0 be_reconnect_log_res=()
  # No server that could go away; the backend polls the image's size (resize-poll-interval), and
  # shrinking is not tested.
  be_has_server=0 be_can_shrink=0 be_eio_after_timeout=0
}
file_be_server_start() {
  rm -f "$be_img"
  truncate -s "$1" "$be_img"
  be_where="$be_img ($(stat -f -c %T "$be_img"))"
}
file_be_server_kill() { fail "the file backend has no server to kill"; }
file_be_server_restart() { fail "the file backend has no server to restart"; }
file_be_server_stop() { :; }
file_be_config() {
  local file=$1 name=$2
  shift 2
  file_config "$file" "$name" "$be_img" "$@"
}
file_be_require() { :; }
file_be_resize() { truncate -s "$1" "$be_img"; }
file_be_server_read_check() { :; }
file_be_server_read() { dd if="$be_img" of="$3" bs=64k skip="$1" count="$2" iflag=skip_bytes,count_bytes status=none; }
