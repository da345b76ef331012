#!/usr/bin/env bash
# fio with crc32c verification over a 2-queue memory device: random writes and mixed
# read/write, 4k and 64k blocks, iodepth 32. Any verify error or I/O error fails the test.
source "$(dirname "$0")/../lib/daemon.sh"
command -v fio >/dev/null || skip "fio not installed"

memory_config "$work/c.yaml" vbfio0 256M "queues: 2"
start_daemon "$work/c.yaml" vbfio0
disk=/dev/$(disk_of vbfio0)
queues=(/sys/block/"${disk#/dev/}"/mq/*)
nq=${#queues[@]}
[ "$nq" -eq 2 ] || fail "the disk has $nq hardware queues, expected 2"
echo "ok: $disk has 2 queues"

fio_verify_matrix "$disk" "$disk"
stop_daemon
