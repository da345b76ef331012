#!/usr/bin/env bash
# fio with crc32c verification through the nbd backend, over a unix socket and then over TCP on
# 127.0.0.1: nbdkit memory 256M, a 2-queue device, random writes and mixed read/write, 4k and 64k
# blocks, iodepth 32. Any verify or I/O error fails the test. Each transport also checks that 1 MiB
# written through the disk is what the server holds (read back by nbdcopy, past kernel and daemon).
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"
command -v fio >/dev/null || skip "fio not installed"
command -v nbdcopy >/dev/null || skip "nbdcopy not installed (libnbd-bin)"

NAME=vbnbdfio0
SIZE=$((256 << 20))
sock=$work/nbd.sock
# The keys of the coming backend, so --check also says whether it accepts them.
backend_keys=("backend.connections: 4" "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s")
nbd_config "$work/unix.yaml" "$NAME" "$(nbd_unix_uri "$sock")" "queues: 2" "${backend_keys[@]}"
require_nbd_backend "$work/unix.yaml"
cd "$work" # fio writes verify state files into the current directory

# verify_over WHAT CONFIG URI: the whole check against the server behind URI.
verify_over() {
  local what=$1 config=$2 uri=$3 disk nq size rw bs errors
  start_daemon "$config" "$NAME"
  disk=/dev/$(disk_of "$NAME")
  size=$(blockdev --getsize64 "$disk")
  [ "$size" -eq "$SIZE" ] || fail "$what: $disk is $size bytes, the server exports $SIZE"
  nq=$(find /sys/block/"${disk#/dev/}"/mq -mindepth 1 -maxdepth 1 | wc -l)
  [ "$nq" -eq 2 ] || fail "$what: $disk has $nq hardware queues, expected 2"
  echo "ok: $what: $disk, $size bytes, 2 queues"

  fio_verify_matrix "$disk" "$what"

  # Past fio's ranges (0-48M, 64M-112M): what the disk wrote is what the server has.
  head -c 1M /dev/urandom >"$work/pattern"
  dd if="$work/pattern" of="$disk" bs=1M seek=200 oflag=direct status=none || fail "$what: dd write failed"
  sync "$disk"
  nbd_server_read "$uri" $((200 << 20)) $((1 << 20)) "$work/server" || fail "$what: reading the server with nbdcopy failed"
  cmp "$work/pattern" "$work/server" || fail "$what: the server holds other data than was written through $disk"
  echo "ok: $what: 1 MiB written through $disk is on the server (nbdcopy read it back)"
  stop_daemon
}

nbdkit_start unix -U "$sock" memory "$SIZE"
echo "ok: nbdkit memory on $sock (pid ${nbdkit_pids[unix]})"
verify_over "unix socket" "$work/unix.yaml" "$(nbd_unix_uri "$sock")"
nbdkit_kill unix

nbdkit_start_tcp tcp memory "$SIZE"
port=${nbdkit_ports[tcp]}
echo "ok: nbdkit memory on 127.0.0.1:$port (pid ${nbdkit_pids[tcp]})"
nbd_config "$work/tcp.yaml" "$NAME" "$(nbd_tcp_uri "$port")" "queues: 2" "${backend_keys[@]}"
verify_over "tcp 127.0.0.1:$port" "$work/tcp.yaml" "$(nbd_tcp_uri "$port")"
nbdkit_kill tcp
