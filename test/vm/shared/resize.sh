# shellcheck shell=bash
# The resize check, the same for every backend with a server (sourced by nbd/resize.sh and
# iscsi/resize.sh after they set BACKEND): the export changes size under a live 2-queue disk, grown
# from 64 to 96 MiB, then shrunk to 32 MiB, each time with the server restarted on a resized image
# (be_resize). The daemon reconnects, sees the new size, updates the capacity (VDUSE_DEV_SET_CONFIG +
# config interrupt) and the kernel's disk follows: /sys/block/vdX/size changes, the new space is
# writable and in the image, the old data is intact, the daemon logs the change, reads past a
# shrunk end fail, and the daemon stays up.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "${BASH_SOURCE[0]}")/../lib/backend.sh"
[ "$be_has_server" = 1 ] || fail "shared/resize.sh: $be_label has no server to restart"
[ "$be_can_shrink" = 1 ] || fail "shared/resize.sh: $be_label cannot shrink"

NAME=vb${BACKEND}sz0
be_server_start $((64 << 20))
be_config "$work/resize.yaml" "$NAME" "queues: 2" "backend.reconnect-timeout: 60s" "${be_keys[@]}"
be_require "$work/resize.yaml"
start_daemon "$work/resize.yaml" "$NAME"
disk=/dev/$(disk_of "$NAME")
sectors_are "$disk" $((64 << 11)) || fail "$disk has $(sectors_of "$disk") sectors, expected $((64 << 11))"
pattern_make 1
dd if="$work/pattern" of="$disk" bs=1M seek=10 oflag=direct status=none || fail "write before the resize failed"
echo "ok: $disk is 64 MiB ($be_where), 1 MiB written at 10 MiB"

# --- grow --------------------------------------------------------------------------------------
grow_check "$disk" 96 90 10

# --- shrink ------------------------------------------------------------------------------------
be_resize $((32 << 20))
wait_for 60 "$disk to shrink to 32 MiB" sectors_are "$disk" $((32 << 11))
echo "ok: $disk shrank to 32 MiB"
if timeout -k 5 30 dd if="$disk" of=/dev/null bs=4k count=1 skip=$((40 << 8)) iflag=direct status=none 2>/dev/null; then
  fail "a read past the new end succeeded"
fi
cmp "$work/pattern" <(dd if="$disk" bs=1M skip=10 count=1 iflag=direct status=none) ||
  fail "data inside the shrunk disk changed"
echo "ok: reads past the new end fail, data inside is intact"
daemon_alive || fail "the daemon died"
stop_daemon
be_server_stop
