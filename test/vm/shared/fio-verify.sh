# shellcheck shell=bash
# The fio verify check, the same for every backend (sourced by nbd/fio-verify.sh and
# iscsi/fio-verify.sh after they set BACKEND). A 256 MiB export ($be_where), a 2-queue device:
# the disk has the export's size, 2 hardware queues and 512-byte blocks; fio with crc32c
# verification runs the backend's matrix ($be_fio_runs: random writes and mixed read/write,
# iodepth 32, two jobs in disjoint ranges), any verify or I/O error fails; then 1 MiB written past
# fio's ranges (at 200 MiB) is what the server holds (be_server_read) and reads back through the
# disk. fio_verify_run [LABEL] runs it all again, e.g. on another transport.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "${BASH_SOURCE[0]}")/../lib/backend.sh"
command -v fio >/dev/null || skip "fio not installed"
be_server_read_check

FIO_SIZE=$((256 << 20))
fio_verify_run() {
  local label=${1:-$be_label} name=vb${BACKEND}fio0 disk
  be_server_start "$FIO_SIZE"
  echo "ok: $label: $be_where, 256 MiB"
  be_config "$work/fio.yaml" "$name" "queues: 2" "backend.reconnect-timeout: 60s" "${be_keys[@]}"
  be_require "$work/fio.yaml"
  start_daemon "$work/fio.yaml" "$name"
  disk=/dev/$(disk_of "$name")
  check_disk "$disk" "$FIO_SIZE" 2 512 "$label"
  fio_verify_runs "$disk" "$label" "$be_fio_size" "${be_fio_runs[@]}"
  # Past fio's ranges (0 and 64 MiB on, $be_fio_size each).
  pattern_make 1
  check_write_through "$disk" 200 "$label"
  stop_daemon
  be_server_stop
}
fio_verify_run "$be_label"
