#!/usr/bin/env bash
# A real VMM on a vduse-bridge disk: QEMU (>= 8, from bookworm-backports, fetched into the harness cache
# by test/vm/fetch-qemu) boots a nested guest on the disk's /dev/vhost-vdpa-N
# (vhost-vdpa-device-pci, SeaBIOS, shared memfd memory), the disk served by the nbd backend from
# nbdkit (file plugin, image in this guest's tmpfs). One VMM session, then a second VMM:
#   1. data the outer side put on the NBD server reads back in the nested guest, and data the nested
#      guest writes is on the server (sha256 on both sides)
#   2. fio verify (crc32c, randwrite, 4k/64k, iodepth 16, 4 MiB) in the nested guest: no error
#   4. memory hotplug through QMP (memory-backend-memfd share=on + pc-dimm) under fio verify
#   5. the daemon SIGKILLed and restarted (same config and state) under fio verify
#   3a. the nested guest reboots with fio's writes in flight; the disk works after it
#   3b. nbdkit stopped, the nested guest's writes (pattern P1) held, the VM reset (QMP system_reset),
#       nbdkit started again: the new boot writes P2, and the server ends with P2; P1 must not reach
#       the server once the reset was complete (stale writes of the old driver)
#   6. the VMM SIGKILLed with writes in flight; a new VMM (new boot) on the same device reads back
#      what was acknowledged, and sees what the server has
# VDUSE_BRIDGE_VMM_STEPS=core (what scripts/check runs, two nested boots, ~8-15 min) runs steps 1, 4
# (under a dd writer that verifies what it wrote, not fio: fio's first start alone costs 1-3 min in
# the nested guest) and 3b; =all (the default; ctest's slow.vmm-full) runs every step.
# Steps print their time; a failed check of one step is reported and the later steps still run
# where they can; the script fails if any did.
#
# VDUSE_BRIDGE_VMM_DEVICE=qsd serves the disk with qemu-storage-daemon's vduse-blk export (the
# reference) instead of vduse-bridge; =qemu gives the VMM the NBD export itself (its own NBD client and
# virtio-blk-pci: no VDUSE, no vDPA; a check of the harness). Step 5 is skipped for both.
# shellcheck source-path=SCRIPTDIR/../lib
source "$(dirname "$0")/../lib/daemon.sh"
source "$(dirname "$0")/../lib/nbd.sh"
source "$(dirname "$0")/../lib/restart.sh"
source "$(dirname "$0")/../lib/vmm.sh"
command -v nbdcopy >/dev/null || skip "nbdcopy not installed (Debian: libnbd-bin)"
command -v fio >/dev/null || skip "fio not installed"
DEVICE=${VDUSE_BRIDGE_VMM_DEVICE:-vduse-bridge}
NAME=vbvmm0
SIZE_MIB=64
MIB=1048576
STEPS=${VDUSE_BRIDGE_VMM_STEPS:-all}
case $STEPS in all | core) ;; *) fail "VDUSE_BRIDGE_VMM_STEPS must be all or core, not '$STEPS'" ;; esac
full() { [ "$STEPS" = all ]; } # the steps only the full run has
BOOT_LIMIT=1300 # seconds for one nested boot: 100-250 s on an idle 2-core machine, 508 s next to the other VM groups once, and over 900 s twice in CI runs of this session (670 s to the nested /init) while the other groups and the integration tests ran beside it

group_t0=$(now_s)
declare -a failures=() timings=()
step_t0=0 step_name=''
step() { # NAME: starts timing a step (ends the previous one)
  step_end
  step_name=$1 step_t0=$(now_s)
  echo "---- $1"
}
step_end() {
  [ -n "$step_name" ] || return 0
  timings+=("$(elapsed "$step_t0")s $step_name")
  echo "time: $step_name: $(elapsed "$step_t0")s"
  step_name=''
}
bad() { # a failed check: reported now and at the end, the script goes on
  echo "FAIL: [$step_name] $*" >&2
  failures+=("[$step_name] $*")
}
report() {
  local t
  step_end
  echo "---- timings (total $(elapsed "$group_t0")s)"
  for t in "${timings[@]}"; do echo "time: $t"; done
  if [ -n "${VM_OUT:-}" ] && [ -d "$VM_OUT" ]; then cp "$work"/daemon.*.log "$VM_OUT/" 2>/dev/null || true; fi
}
on_cleanup report

cd "$work"
vmm_prepare

# --- the NBD server and the device ----------------------------------------------------------------
sock=$work/nbd.sock
uri=$(nbd_unix_uri "$sock")
img=$work/disk.img
truncate -s "${SIZE_MIB}M" "$img"
start_server() {
  rm -f "$sock"
  # --threads 1: nbdkit 1.32 can abort when a client dies mid-reply (the daemon is SIGKILLed below).
  nbdkit_start srv --threads 1 -U "$sock" file file="$img"
}
start_server

# server_sha OFFSET_MIB LEN_MIB: sha256 of that range as the NBD server has it.
server_sha() {
  nbd_server_read "$uri" $(($1 * MIB)) $(($2 * MIB)) "$work/range.bin" || fail "reading the server's range $1+$2 MiB failed"
  sha256sum "$work/range.bin" | cut -d' ' -f1
}
# pattern WORD: 1 MiB of "WORD\n" repeated (busybox yes | head does the same in the nested guest).
pattern_sha() { { yes "$1" || true; } | head -c $MIB | sha256sum | cut -d" " -f1; }

qsd_pid=''
qsd_stop() {
  vmm_cleanup # the VMMs first: vdpa dev del waits for the vhost-vdpa fd to be closed
  vdpa dev del "$NAME" 2>/dev/null || true
  [ -z "$qsd_pid" ] || { kill "$qsd_pid" 2>/dev/null && wait "$qsd_pid" 2>/dev/null; } || true
}
vhost=- vm_disk=()
if [ "$DEVICE" = qemu ]; then
  vm_disk=(-blockdev "driver=nbd,node-name=d0,server.type=unix,server.path=$sock,reconnect-delay=600"
    -device "virtio-blk-pci,drive=d0,serial=$NAME")
elif [ "$DEVICE" = qsd ]; then
  QSD=$(command -v qemu-storage-daemon) || skip "qemu-storage-daemon not found"
  on_cleanup qsd_stop
  # reconnect-delay: requests are held this long while the server is away (like reconnect-timeout).
  "$QSD" --blockdev "driver=nbd,node-name=disk0,server.type=unix,server.path=$sock,reconnect-delay=600" \
    --export "type=vduse-blk,id=exp0,node-name=disk0,name=$NAME,writable=on,serial=$NAME" >"$work/qsd.log" 2>&1 &
  qsd_pid=$!
  wait_for 30 "/dev/vduse/$NAME" test -e "/dev/vduse/$NAME"
  vdpa dev add name "$NAME" mgmtdev vduse || fail "vdpa dev add failed"
  drv=$(basename "$(readlink -f "/sys/bus/vdpa/devices/$NAME/driver")")
  echo "$NAME" >"/sys/bus/vdpa/drivers/$drv/unbind"
  echo vhost_vdpa >"/sys/bus/vdpa/devices/$NAME/driver_override"
  echo "$NAME" >/sys/bus/vdpa/drivers/vhost_vdpa/bind
else
  [ -d /sys/bus/vdpa/drivers/vhost_vdpa ] || fail "vhost_vdpa is not loaded"
  nbd_config "$work/vmm.yaml" "$NAME" "$uri" "queues: 1" "serial: \"$NAME\"" "attach: vhost-vdpa" \
    "backend.reconnect-timeout: 600s"
  require_nbd_backend "$work/vmm.yaml"
  start_daemon "$work/vmm.yaml"
fi
if [ "$DEVICE" != qemu ]; then
  vhost=$(compgen -G "/sys/bus/vdpa/devices/$NAME/vhost-vdpa-*" | sed -n 1p) || true
  [ -n "$vhost" ] || fail "no vhost-vdpa device under /sys/bus/vdpa/devices/$NAME"
  vhost=/dev/${vhost##*/}
  wait_for 10 "$vhost" test -c "$vhost"
fi
echo "ok: $DEVICE serves $NAME (${SIZE_MIB} MiB, nbd to nbdkit file) as $vhost"

# Layout (MiB): 0-4 written by the outer side, 4-8 by the nested guest (1), 8-12 fio (2), 16-24 fio
# under hotplug (4), 24-32 fio under the daemon restart (5), 32-40 fio across the reboot (3a), 40 the
# reset patterns (3b), 44-48 acknowledged before the VMM is killed, 48-56 in flight then (6).
# Step 1 moves DATA_MIB each way (every byte costs under nested TCG: 1 MiB in the core run).
if full; then DATA_MIB=4; else DATA_MIB=1; fi
head -c $((DATA_MIB * MIB)) /dev/urandom >"$work/a.bin"
nbdcopy -- "$work/a.bin" [ nbdkit --exit-with-parent --filter=offset nbd uri="$uri" offset=0 range=$((DATA_MIB * MIB)) ] ||
  fail "writing $DATA_MIB MiB to the NBD server failed"
a_sha=$(sha256sum "$work/a.bin" | cut -d' ' -f1)
[ "$(server_sha 0 "$DATA_MIB")" = "$a_sha" ] || fail "the server does not have the $DATA_MIB MiB just written to it"
echo "ok: $DATA_MIB MiB of random data put on the NBD server at 0 (sha256 ${a_sha:0:16}...)"

# --- boot ----------------------------------------------------------------------------------------
step "boot 1 (VMM start to the nested agent)"
vmm_start vm1 "$vhost" "${vm_disk[@]}"
vmm_wait_boot vm1 1 "$BOOT_LIMIT"
echo "ok: the nested guest booted through SeaBIOS in ${vmm_boot_s}s (SeaBIOS started $(vmm_bios_starts vm1)x)"
# Disk-side helpers for the nested guest, prepended to the commands that use the disk.
N="d=\$(disk_by_serial $NAME); dn=\${d#/dev/}"
out=$(vmm_exec vm1 300 "$N; echo \$d \$(cat /sys/block/\$dn/size)") || vmm_fail vm1 "no disk in the nested guest: $out"
read -r ndisk nsectors <<<"$out"
[ "$nsectors" = $((SIZE_MIB * 2048)) ] || bad "the nested guest's $ndisk has $nsectors sectors, expected $((SIZE_MIB * 2048))"
echo "ok: the nested guest has the disk as $ndisk ($nsectors sectors, serial $NAME)"

# --- 1. data both ways ---------------------------------------------------------------------------
step "1 data both ways"
out=$(vmm_exec vm1 600 "$N; dd if=\$d bs=1M count=$DATA_MIB iflag=direct 2>/dev/null | sha256sum") || bad "reading in the nested guest failed: $out"
if [ "${out%% *}" = "$a_sha" ]; then echo "ok: the nested guest reads the $DATA_MIB MiB the outer side put on the server"; else bad "the nested guest read ${out%% *}, the server has $a_sha"; fi
out=$(vmm_exec vm1 600 "$N; head -c $((DATA_MIB * MIB)) /dev/urandom >/tmp/b; dd if=/tmp/b of=\$d bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null; sha256sum /tmp/b") ||
  bad "writing in the nested guest failed: $out"
b_sha=$(server_sha 4 "$DATA_MIB")
if [ "${out%% *}" = "$b_sha" ]; then echo "ok: the $DATA_MIB MiB the nested guest wrote at 4 MiB are on the server"; else bad "the nested guest wrote ${out%% *}, the server has $b_sha"; fi

# --- 2. fio verify -------------------------------------------------------------------------------
# fio runs from the outer guest's root (9p); its files are in the nested guest's /host/tmp (nested-lib).
FIO="--eta=never --filename=\$d --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bssplit=4k/30:64k/70 --verify=crc32c --verify_fatal=1 --do_verify=1 --output-format=terse --terse-version=3"
# fio's first start in a boot takes 1-3 minutes (its loader and ~60 libraries, translated by two
# levels of TCG; reading them ahead over 9p did not help), later ones ~15 s: one fio per step.
# fio_result NAME LABEL: checks fio NAME's terse v3 report (5 error, 6 read KiB, 47 write KiB).
fio_result() {
  local out errors read_kib write_kib read_ms write_ms
  out=$(vmm_exec vm1 180 "cat /host/tmp/$1 2>/dev/null; tail -n 5 /host/tmp/$1.err 2>/dev/null; echo rc=\$(cat /host/tmp/$1.rc 2>/dev/null)") || true
  # (9 and 50: read and write runtime in ms)
  read -r errors read_kib write_kib read_ms write_ms < <(awk -F';' '$1 == 3 { print $5, $6, $47, $9, $50 }' <<<"$out")
  if [ "${errors:-}" = 0 ] && [ "${read_kib:-0}" -gt 0 ]; then
    echo "ok: $2: fio randwrite 4k/64k iodepth 16 verify=crc32c: no error, ${write_kib} KiB written," \
      "${read_kib} KiB verified (fio's own I/O time: $((write_ms / 1000))s writing, $((read_ms / 1000))s verifying)"
  else
    echo "$out"
    bad "$2: fio reported error '${errors:-none}', ${read_kib:-0} KiB verified"
  fi
}
if full; then
  step "2 fio verify"
  vmm_exec vm1 1200 "$N; fio_fg fio2 $FIO --name=verify --offset=8M --size=4M" || bad "fio could not run in the nested guest"
  fio_result fio2 "fio verify on 4 MiB"
fi

# A time-based fio in the background of the nested guest (verifying as it goes), running once it
# has written something; stopped by fio_bg_stop.
fio_bg_start() { # NAME OFFSET_MIB
  vmm_exec vm1 900 "$N; w0=\$(awk '{ print \$5 }' /sys/block/\$dn/stat)
    fio_bg $1 $FIO --name=$1 --offset=${2}M --size=8M --verify_backlog=32 --time_based --runtime=1800
    i=0; while [ \$i -lt 1200 ]; do w=\$(awk '{ print \$5 }' /sys/block/\$dn/stat); [ \$w -gt \$((w0 + 50)) ] && break; [ -e /host/tmp/$1.rc ] && break; sleep 0.5; i=\$((i + 1)); done
    [ ! -e /host/tmp/$1.rc ] || { cat /host/tmp/$1.err; echo fio exited: \$(cat /host/tmp/$1.rc); exit 1; }
    echo \"fio $1 running, \$((w - w0)) writes done\"" || bad "fio $1 did not start in the nested guest"
}
fio_bg_running() { vmm_exec vm1 180 "kill -0 \$(cat /host/tmp/$1.pid) && [ ! -e /host/tmp/$1.rc ]" >/dev/null; }
fio_bg_stop() { # NAME LABEL: SIGINT (fio completes what is in flight and reports), then the report
  vmm_exec vm1 600 "kill -INT \$(cat /host/tmp/$1.pid) 2>/dev/null || true
    i=0; while [ ! -e /host/tmp/$1.rc ] && [ \$i -lt 1000 ]; do sleep 0.5; i=\$((i + 1)); done; cat /host/tmp/$1.rc" >/dev/null ||
    bad "$2: fio did not stop"
  fio_result "$1" "$2"
}

# --- 4. memory hotplug under fio -----------------------------------------------------------------
# The core run's load across the hotplug: rounds of 256 KiB written in 64 KiB O_DIRECT writes at
# 16 MiB, each read back and compared; a round that reads back other bytes is counted in /tmp/dd4.bad.
dd_bg_start() {
  vmm_exec vm1 300 "$N; rm -f /tmp/dd4.*; echo 0 >/tmp/dd4.bad; echo 0 >/tmp/dd4.rounds
    ( r=0; while [ ! -e /tmp/dd4.stop ]; do
        yes dd4-round-\$r | head -c 262144 >/tmp/dd4.in
        dd if=/tmp/dd4.in of=\$d bs=64k seek=256 oflag=direct conv=fsync 2>/dev/null || echo \$((\$(cat /tmp/dd4.bad) + 1)) >/tmp/dd4.bad
        [ \"\$(dd if=\$d bs=64k skip=256 count=4 iflag=direct 2>/dev/null | sha256sum)\" = \"\$(sha256sum </tmp/dd4.in)\" ] ||
          echo \$((\$(cat /tmp/dd4.bad) + 1)) >/tmp/dd4.bad
        r=\$((r + 1)); echo \$r >/tmp/dd4.rounds
      done; touch /tmp/dd4.done ) </dev/null >/dev/null 2>&1 &
    i=0; while [ \$(cat /tmp/dd4.rounds) -lt 1 ] && [ \$i -lt 600 ]; do sleep 0.5; i=\$((i + 1)); done
    echo rounds \$(cat /tmp/dd4.rounds)" || bad "the dd writer did not start in the nested guest"
}
dd_bg_stop() { # prints ROUNDS BAD once the writer has finished its round
  vmm_exec vm1 600 "touch /tmp/dd4.stop; i=0; while [ ! -e /tmp/dd4.done ] && [ \$i -lt 1000 ]; do sleep 0.5; i=\$((i + 1)); done
    echo \$(cat /tmp/dd4.rounds) \$(cat /tmp/dd4.bad)"
}
if full; then step "4 memory hotplug under fio"; else step "4 memory hotplug under a verifying dd writer"; fi
mem_kib() { vmm_exec vm1 180 "awk '/^MemTotal:/ { print \$2 }' /proc/meminfo"; }
if full; then fio_bg_start fio4 16; else dd_bg_start; fi
m0=$(mem_kib)
vmm_qmp vm1 '{"execute":"object-add","arguments":{"qom-type":"memory-backend-memfd","id":"mem1","size":268435456,"share":true}}' >/dev/null ||
  bad "QMP object-add memory-backend-memfd failed"
vmm_qmp vm1 '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm1","memdev":"mem1"}}' >/dev/null ||
  bad "QMP device_add pc-dimm failed"
deadline=$((SECONDS + 120))
while m1=$(mem_kib) && [ "$m1" -le $((m0 + 200000)) ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 2; done
if [ "$m1" -gt $((m0 + 200000)) ]; then echo "ok: 256 MiB DIMM plugged: the nested guest's MemTotal went from $m0 to $m1 KiB"; else bad "the nested guest's MemTotal stayed at $m1 KiB (was $m0) after the DIMM plug"; fi
sleep 5 # the I/O goes on in the new memory map
if full; then
  fio_bg_running fio4 || bad "fio stopped after the DIMM plug"
  fio_bg_stop fio4 "fio across the memory hotplug"
else
  r0=$(vmm_exec vm1 180 "cat /tmp/dd4.rounds") || r0=0
  sleep 5
  read -r rounds ddbad < <(dd_bg_stop) || true
  if [ "${ddbad:-x}" = 0 ] && [ "${rounds:-0}" -gt "${r0:-0}" ]; then
    echo "ok: $rounds rounds of 256 KiB written and read back identical across the DIMM plug ($((rounds - r0)) after it)"
  else
    bad "the dd writer across the DIMM plug: ${rounds:-?} rounds (${r0:-?} before the last 5 s), ${ddbad:-?} bad"
  fi
fi

if full; then
  # --- 5. the daemon SIGKILLed under fio -----------------------------------------------------------
  step "5 daemon SIGKILL and restart under fio"
  if [ "$DEVICE" != vduse-bridge ]; then
    echo "note: skipped with $DEVICE (no daemon to restart)"
  else
    fio_bg_start fio5 24
    kill9_daemon
    echo "ok: the daemon SIGKILLed with fio running in the nested guest"
    restart_daemon "$work/vmm.yaml" 1
    echo "ok: the daemon started again (same config and state): $(grep -m1 -E 'resumed|serving' "$daemon_log" || true)"
    sleep 8 # fio goes on through the new daemon
    fio_bg_running fio5 || bad "fio stopped after the daemon restart"
    fio_bg_stop fio5 "fio across the daemon SIGKILL"
  fi

  # --- 3a. reboot with I/O in flight ---------------------------------------------------------------
  step "3a reboot with writes in flight"
  fio_bg_start fio3a 32
  vmm_send vm1 "$N; cat /sys/block/\$dn/inflight >/dev/console; reboot -f"
  vmm_wait_boot vm1 2 "$BOOT_LIMIT"
  echo "ok: the nested guest rebooted with fio's writes in flight, up again in ${vmm_boot_s}s"
  c_sha=$(pattern_sha after-reboot-3a)
  out=$(vmm_exec vm1 600 "$N; yes after-reboot-3a | head -c 1048576 >/tmp/c; dd if=/tmp/c of=\$d bs=64k seek=512 oflag=direct conv=fsync 2>/dev/null; dd if=\$d bs=64k skip=512 count=16 iflag=direct 2>/dev/null | sha256sum") ||
    bad "write + read after the reboot failed: $out"
  [ "${out%% *}" = "$c_sha" ] || bad "after the reboot the nested guest read back ${out%% *}, wrote $c_sha"
  sleep 2
  s=$(server_sha 32 1)
  if [ "$s" = "$c_sha" ] && [ "${out%% *}" = "$c_sha" ]; then echo "ok: after the reboot 1 MiB written at 32 MiB reads back and is on the server"; else bad "after the reboot the server has $s at 32 MiB, the new boot wrote $c_sha"; fi
fi

# --- 3b. reset while the server is down ----------------------------------------------------------
step "3b reset with writes held (server down)"
p0=$(pattern_sha p0-before-the-outage)
p1=$(pattern_sha p1-stale-held-across-reset)
p2=$(pattern_sha p2-written-after-reset)
vmm_exec vm1 600 "$N; yes p0-before-the-outage | head -c 1048576 >/tmp/p0; dd if=/tmp/p0 of=\$d bs=64k seek=640 oflag=direct conv=fsync 2>/dev/null" ||
  bad "writing P0 failed"
[ "$(server_sha 40 1)" = "$p0" ] || bad "the server does not have P0 at 40 MiB"
nbdkit_kill srv TERM
echo "ok: P0 at 40 MiB on the server; nbdkit stopped"
out=$(vmm_exec vm1 300 "$N; yes p1-stale-held-across-reset | head -c 1048576 >/tmp/p1
  i=0; while [ \$i -lt 16 ]; do setsid dd if=/tmp/p1 of=\$d bs=64k skip=\$i seek=\$((640 + i)) count=1 oflag=direct </dev/null >/dev/null 2>&1 & i=\$((i + 1)); done
  i=0; while [ \$i -lt 120 ]; do set -- \$(cat /sys/block/\$dn/inflight); [ \$2 -ge 16 ] && break; sleep 0.5; i=\$((i + 1)); done
  echo \$2") || bad "starting the P1 writes failed: $out"
[ "${out:-0}" -ge 16 ] || bad "only '${out}' writes in flight in the nested guest, expected the 16 P1 writes held"
echo "ok: 16 writes of P1 held in flight in the nested guest ($out in flight)"
bios0=$(vmm_bios_starts vm1) boots0=$(vmm_boots vm1)
# The reply may only come once the VMM has reset its devices, which the device may hold back.
vmm_qmp_send vm1 '{"execute":"system_reset"}'
# The firmware starts once the VMM has reset the device, i.e. once the device acknowledged the reset.
deadline=$((SECONDS + 30))
while [ "$(vmm_bios_starts vm1)" -le "$bios0" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
if [ "$(vmm_bios_starts vm1)" -gt "$bios0" ]; then
  reset_done=1
  echo "ok: the VM was reset (SeaBIOS started again) while the server was down"
else
  reset_done=0
  echo "note: the reset did not complete within 30s while the server was down (the device holds it)"
fi
sleep 2
start_server
echo "ok: nbdkit started again"
vmm_qmp_reply vm1 120 system_reset >/dev/null || bad "QMP system_reset failed"
if full; then
  vmm_wait_boot vm1 $((boots0 + 1)) "$BOOT_LIMIT"
  echo "ok: the nested guest booted again in ${vmm_boot_s}s"
else
  # The core run stops at the new driver: the firmware, once it has set the device up again (its
  # capacity read, its queue live) and handed over to the kernel. Anything stale still queued in the
  # daemon would reach the server meanwhile.
  bios_handovers() { grep -c '^Booting from ROM' "${vmm_dirs[vm1]}/bios.log" 2>/dev/null || true; }
  deadline=$((SECONDS + 300))
  while [ "$(bios_handovers)" -le "$bios0" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
  [ "$(bios_handovers)" -gt "$bios0" ] || bad "SeaBIOS did not get through the disk after the reset within 300 s"
  awk -v runs="$bios0" '/^BUILD: /{ n++ } n > runs && /s=131072/{ found = 1 } END { exit !found }' "${vmm_dirs[vm1]}/bios.log" ||
    bad "SeaBIOS did not find the disk (131072 sectors) after the reset"
  echo "ok: after the reset SeaBIOS set the disk up again (131072 sectors) and started the kernel"
  sleep 5
fi
s=$(server_sha 40 1)
case $s in
"$p0") echo "ok: the server still has P0 at 40 MiB: the P1 writes held across the reset were dropped" ;;
"$p1")
  if [ "$reset_done" = 1 ]; then
    bad "the P1 writes held before the reset reached the server after the reset had completed (stale writes of the old driver)"
  else
    echo "ok: P1 reached the server before the reset completed (the device drained its writes first)"
  fi
  ;;
*) bad "40 MiB on the server is neither P0 nor P1 after the reset: $s (mixed or foreign data)" ;;
esac
if full; then
  out=$(vmm_exec vm1 600 "$N; yes p2-written-after-reset | head -c 1048576 >/tmp/p2; dd if=/tmp/p2 of=\$d bs=64k seek=640 oflag=direct conv=fsync 2>/dev/null; dd if=\$d bs=64k skip=640 count=16 iflag=direct 2>/dev/null | sha256sum") ||
    bad "writing P2 after the reset failed: $out"
  [ "${out%% *}" = "$p2" ] || bad "the new boot read back ${out%% *} after writing P2 ($p2)"
  sleep 5 # anything stale still queued would land now
  s=$(server_sha 40 1)
  out=$(vmm_exec vm1 300 "$N; dd if=\$d bs=64k skip=640 count=16 iflag=direct 2>/dev/null | sha256sum")
  if [ "$s" = "$p2" ] && [ "${out%% *}" = "$p2" ]; then
    echo "ok: P2, written by the new boot, is what the server and the nested guest have at 40 MiB"
  else
    bad "after the new boot wrote P2 ($p2) the server has $s and the nested guest reads ${out%% *} (P1 is $p1)"
  fi
fi

if full; then
  # --- 6. the VMM SIGKILLed with writes in flight --------------------------------------------------
  step "6 VMM SIGKILL with writes in flight"
  out=$(vmm_exec vm1 600 "$N; head -c 4194304 /dev/urandom >/tmp/k; dd if=/tmp/k of=\$d bs=1M seek=44 oflag=direct conv=fsync 2>/dev/null; sha256sum /tmp/k") ||
    bad "writing the data to keep failed: $out"
  k_sha=${out%% *}
  # Eight writers of 1 MiB each in 4 KiB O_DIRECT writes (2048 writes: minutes under nested TCG), one
  # process each: a loop of short dd runs forking all the time starved the nested guest's single vCPU.
  out=$(vmm_exec vm1 600 "$N; head -c 1048576 /dev/urandom >/tmp/f6
    i=0; while [ \$i -lt 8 ]; do setsid dd if=/tmp/f6 of=\$d bs=4k seek=\$((12288 + 256 * i)) count=256 oflag=direct </dev/null >/dev/null 2>&1 & i=\$((i + 1)); done
    i=0; while [ \$i -lt 300 ]; do read -r r w </sys/block/\$dn/inflight; [ \$w -ge 1 ] && break; sleep 0.1; i=\$((i + 1)); done; echo \$w") ||
    bad "starting the writes failed: $out"
  [ "${out:-0}" -ge 1 ] || bad "no write in flight in the nested guest before the VMM kill"
  echo "ok: 4 MiB acknowledged at 44 MiB (sha256 ${k_sha:0:16}...), ${out} writes in flight at 48 MiB"
  vmm_kill vm1 KILL
  echo "ok: the VMM SIGKILLed"
  if [ "$DEVICE" = vduse-bridge ]; then daemon_alive || bad "the daemon died with the VMM"; fi
  step "6 new VMM: boot and read back"
  vmm_start vm2 "$vhost" "${vm_disk[@]}"
  vmm_wait_boot vm2 1 "$BOOT_LIMIT"
  echo "ok: a new VMM on $vhost booted in ${vmm_boot_s}s"
  out=$(vmm_exec vm2 600 "$N; for r in 0:4 4:4 44:4 48:8; do dd if=\$d bs=1M skip=\${r%:*} count=\${r#*:} iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; done; dd if=\$d bs=64k skip=512 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; dd if=\$d bs=64k skip=640 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1") ||
    bad "reading back in the new VMM failed: $out"
  mapfile -t got <<<"$out"
  want=("$a_sha" "$b_sha" "$k_sha" "$(server_sha 48 8)" "$c_sha" "$p2")
  what=("the outer side's data at 0" "the nested guest's data at 4 MiB" "the data acknowledged before the kill at 44 MiB"
    "the range in flight at the kill (48-56 MiB), as the server has it" "the data written after the reboot at 32 MiB" "P2 at 40 MiB")
  for i in "${!want[@]}"; do
    if [ "${got[$i]:-}" = "${want[$i]}" ]; then echo "ok: the new VMM reads ${what[$i]}"; else bad "the new VMM reads ${got[$i]:-nothing} for ${what[$i]}, expected ${want[$i]}"; fi
  done
  vmm_kill vm2 KILL
else
  vmm_kill vm1 KILL
fi
step_end

if [ "$DEVICE" = vduse-bridge ]; then
  daemon_alive || bad "the daemon is not running at the end"
  grep -iE 'error|warn' "$daemon_log" | tail -n 20 || true
fi
if [ ${#failures[@]} -gt 0 ]; then
  echo "---- ${#failures[@]} failed check(s):"
  printf '  %s\n' "${failures[@]}"
  fail "${#failures[@]} check(s) failed (see above)"
fi
echo "ok: all steps passed"
