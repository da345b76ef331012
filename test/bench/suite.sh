#!/usr/bin/env bash
# The benchmark suite, run inside the test VM (one boot) by scripts/bench:
#   test/vm/run-vm --icount --mem 3072 --timeout N test/bench/suite.sh
# Not a pass/fail test: it measures, in the same boot and interleaved round by round, workload by
# workload and path by path (the order rotates each round),
#   memory: vduse-bridge memory backend        | qemu-storage-daemon vduse-blk over null-co
#   nbd:    vduse-bridge nbd backend           | qsd vduse-blk over driver=nbd | kernel nbd-client
#           | fio's libnbd engine (the userspace ceiling), all on one `nbdkit memory` unix socket
#   iscsi:  vduse-bridge iscsi backend         | qsd vduse-blk over driver=iscsi | the kernel's
#           initiator (open-iscsi, iscsi_tcp), all on one tgtd LUN (tmpfs)
#   file:   vduse-bridge file backend (O_DIRECT, io_uring) | qsd vduse-blk over driver=file
#           (aio=io_uring, cache.direct=on) | a loop device (losetup --direct-io=on), all on one
#           256 MiB file on ext4 on a brd ramdisk (see file_store below for why not tmpfs)
#   scaling: vduse-bridge memory with 1, 2, 4 queues (4k randread qd32, numjobs = queues)
# plus daemon CPU time per I/O (/proc/PID/stat utime+stime around each run over the completed I/Os
# of /sys/block/DEV/stat), VmRSS, and the time to create and attach 32 memory devices.
# Raw results go to $VM_OUT (read by test/bench/report.py on the host):
#   runs.csv     one line per fio run; the fio JSON output in runs/
#   facts.csv    key,value (RSS, attach times, settings)
#   skipped.tsv  path<TAB>reason for each path that could not be measured
# Settings: VDUSE_BRIDGE_BENCH_SECONDS (default 3), VDUSE_BRIDGE_BENCH_RAMP (fio ramp_time, default
# 1s), VDUSE_BRIDGE_BENCH_ROUNDS (default 3), VDUSE_BRIDGE_BENCH_BACKENDS (default "memory nbd iscsi
# file": the backends whose paths are measured; the queue-scaling runs come with memory).
# shellcheck source-path=SCRIPTDIR/../vm/lib
HERE=$(cd "$(dirname "$0")" && pwd)
LIB=$HERE/../vm/lib
source "$LIB/daemon.sh"
command -v fio >/dev/null || skip "fio not installed"
if [ -z "${VM_OUT:-}" ] || [ ! -d "$VM_OUT" ]; then fail "VM_OUT is not set (run through test/vm/run-vm)"; fi

declare -A missing=()
# The nbd and iscsi helpers skip the whole script when their server is missing; here that only
# leaves their paths out.
BACKENDS=${VDUSE_BRIDGE_BENCH_BACKENDS:-memory nbd iscsi file}
for b in $BACKENDS; do
  case $b in memory | nbd | iscsi | file) ;; *) fail "VDUSE_BRIDGE_BENCH_BACKENDS: unknown backend '$b'" ;; esac
done
want() { [[ " $BACKENDS " == *" $1 "* ]]; }
have_nbd=0 have_iscsi=0
if ! want nbd; then
  :
elif command -v nbdkit >/dev/null; then
  source "$LIB/nbd.sh"
  have_nbd=1
else
  for p in vb-nbd qsd-nbd knbd fio-libnbd; do missing[$p]="nbdkit not installed (Debian: nbdkit)"; done
fi
if ! want iscsi; then
  :
elif command -v tgtd >/dev/null && command -v tgtadm >/dev/null; then
  source "$LIB/iscsi.sh"
  have_iscsi=1
else
  for p in vb-iscsi qsd-iscsi kiscsi; do missing[$p]="tgtd/tgtadm not installed (Debian: tgt)"; done
fi

RUNTIME=${VDUSE_BRIDGE_BENCH_SECONDS:-3}
RAMP=${VDUSE_BRIDGE_BENCH_RAMP:-1s}
ROUNDS=${VDUSE_BRIDGE_BENCH_ROUNDS:-3}
for v in RUNTIME ROUNDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || fail "$v must be a positive integer, got '${!v}'"
done
REGION=256M # every workload runs over the first 256 MiB of a disk, written once beforehand
cd "$work"  # fio may leave state files in the current directory
OUT=$VM_OUT
mkdir -p "$OUT/runs"
: >"$OUT/skipped.tsv"
echo "key,value" >"$OUT/facts.csv"
fact() { echo "$1,$2" >>"$OUT/facts.csv"; }
fact runtime_s "$RUNTIME"
fact ramp "$RAMP"
fact rounds "$ROUNDS"
fact kernel "$(uname -r)"
fact clk_tck "$(getconf CLK_TCK)"
fact backends "$BACKENDS"
fact fio "$(fio --version)"
CLK=$(getconf CLK_TCK)

# --- process bookkeeping: every daemon we start, stopped by PID at exit ---------------------------
# (before the servers: lib/nbd.sh's and lib/iscsi.sh's steps run after this one)
declare -A vb_pid=() vb_log=() qsd_pid=() qsd_dev=()
suite_stop_all() {
  local id
  for id in "${!qsd_pid[@]}"; do
    vdpa dev del "${qsd_dev[$id]}" 2>/dev/null || true
    if alive "${qsd_pid[$id]}"; then kill -TERM "${qsd_pid[$id]}" 2>/dev/null || true; fi
    wait "${qsd_pid[$id]}" 2>/dev/null || true
    unset "qsd_pid[$id]"
  done
  for id in "${!vb_pid[@]}"; do
    if alive "${vb_pid[$id]}"; then
      kill -TERM "${vb_pid[$id]}" 2>/dev/null || true
      wait_gone "${vb_pid[$id]}" 120 || kill -KILL "${vb_pid[$id]}" 2>/dev/null || true
    fi
    wait "${vb_pid[$id]}" 2>/dev/null || true
    unset "vb_pid[$id]"
  done
  # The file store's loop device; the store itself ($work/mnt-file) is unmounted by lib/daemon.sh.
  if [ -n "${loop_dev:-}" ]; then losetup -d "$loop_dev" 2>/dev/null || true; fi
  loop_dev=''
}
loop_dev=''
on_cleanup suite_stop_all

usec() { printf '%s' "${EPOCHREALTIME/./}"; }
vb_serving() { grep -q "serving" "${vb_log[$1]}" 2>/dev/null || ! alive "${vb_pid[$1]}"; }
# vb_start ID CONFIG: one daemon per ID, each with its own control socket and state directory.
# Sets vb_start_us to the microseconds from the start to "serving" in its log.
vb_start() {
  local id=$1 config=$2 t0
  vb_log[$id]=$work/vb-$id.log
  t0=$(usec)
  "$DAEMON" --config "$config" --state-dir "$work/state-$id" --control-socket "$work/ctl-$id.sock" \
    >"${vb_log[$id]}" 2>&1 &
  vb_pid[$id]=$!
  wait_for 180 "vduse-bridge ($id) to serve" vb_serving "$id"
  vb_start_us=$(($(usec) - t0))
  alive "${vb_pid[$id]}" || fail "vduse-bridge ($id) exited during start-up: $(tail -n 20 "${vb_log[$id]}")"
}
vb_stop() {
  local id=$1 rc=0
  kill -TERM "${vb_pid[$id]}"
  wait "${vb_pid[$id]}" || rc=$?
  unset "vb_pid[$id]"
  [ "$rc" -eq 0 ] || fail "vduse-bridge ($id) exited with status $rc after SIGTERM"
}
# rss PID: "VmRSS_kB RssAnon_kB"
rss() { awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } END { print r + 0, a + 0 }' "/proc/$1/status"; }
# cpu_ticks PID: utime + stime of the whole process (all threads).
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat") || { echo 0 && return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
# disk_ios DEV: reads + writes completed.
disk_ios() { awk '{ print $1 + $5 }' "/sys/block/${1#/dev/}/stat"; }

# qsd_start ID VDUSENAME BLOCKDEV: qemu-storage-daemon with a vduse-blk export, attached.
qsd_up() { [ -e "/dev/vduse/$1" ] || ! alive "$2"; }
qsd_start() {
  local id=$1 name=$2 blockdev=$3
  "$QSD" --blockdev "$blockdev" \
    --export "type=vduse-blk,id=e0,node-name=n0,name=$name,writable=on,num-queues=1,queue-size=256" \
    >"$work/qsd-$id.log" 2>&1 &
  qsd_pid[$id]=$!
  qsd_dev[$id]=$name
  wait_for 60 "/dev/vduse/$name" qsd_up "$name" "${qsd_pid[$id]}"
  if ! alive "${qsd_pid[$id]}"; then
    wait "${qsd_pid[$id]}" 2>/dev/null || true
    unset "qsd_pid[$id]"
    qsd_error="qemu-storage-daemon failed: $(tr '\n' ' ' <"$work/qsd-$id.log" | cut -c1-300)"
    return 1
  fi
  vdpa dev add name "$name" mgmtdev vduse || fail "vdpa dev add name $name failed"
  wait_for 30 "the disk of $name" disk_ready "$name"
}

# --- 1. 32 memory devices: time to create and attach them, RSS --------------------------------
if want memory; then
  N32=32
  {
    echo "devices:"
    for ((i = 0; i < N32; i++)); do
      printf '  - name: bm32d%d\n    backend:\n      type: memory\n      size: 64M\n    queues: 1\n    attach: virtio-vdpa\n' "$i"
    done
  } >"$work/m32.yaml"
  vb_start m32 "$work/m32.yaml"
  fact attach32_ms $((vb_start_us / 1000))
  for ((i = 0; i < N32; i++)); do wait_for 60 "the disk of bm32d$i" disk_ready "bm32d$i"; done
  read -r r a < <(rss "${vb_pid[m32]}")
  fact rss32_kb "$r"
  fact rssanon32_kb "$a"
  echo "bench: 32 memory devices of 64M: serving after $((vb_start_us / 1000)) ms, VmRSS $r kB (anon $a kB)"
  vb_stop m32
  rm -f /dev/shm/vduse-bridge/bm32d*.mem
fi

# --- 2. the paths -----------------------------------------------------------------------------
paths=()
declare -A dev=() backend=() cpu_pid=()
QSD=$(command -v qemu-storage-daemon || true)
qsd_missing="qemu-storage-daemon not installed (Debian: qemu-system-common)"

# memory
if want memory; then
  {
    echo "devices:"
    for q in 1 2 4; do
      printf '  - name: bmemq%d\n    backend:\n      type: memory\n      size: 256M\n    queues: %d\n    queue-size: 256\n' "$q" "$q"
    done
  } >"$work/mem.yaml"
  vb_start mem "$work/mem.yaml"
  fact attach_mem3_ms $((vb_start_us / 1000))
  for q in 1 2 4; do
    wait_for 30 "the disk of bmemq$q" disk_ready "bmemq$q"
    d=/dev/$(disk_of "bmemq$q")
    # Reading never-written memory costs a page fault per page, which null-co does not pay.
    dd if=/dev/zero of="$d" bs=1M count=256 oflag=direct status=none || fail "prefilling $d failed"
    dev[vb-mem-q$q]=$d
    backend[vb-mem-q$q]=scaling
    cpu_pid[vb-mem-q$q]=${vb_pid[mem]}
  done
  dev[vb-mem]=${dev[vb-mem-q1]}
  backend[vb-mem]=memory
  cpu_pid[vb-mem]=${vb_pid[mem]}
  paths+=(vb-mem)
  read -r r a < <(rss "${vb_pid[mem]}")
  fact rss_mem_daemon_3dev_kb "$r"
  fact rssanon_mem_daemon_3dev_kb "$a"
  echo "ok: vduse-bridge memory: ${dev[vb-mem]} (1 queue), ${dev[vb-mem-q2]} (2), ${dev[vb-mem-q4]} (4)"
  if [ -n "$QSD" ]; then
    if qsd_start null qsdnull0 "driver=null-co,node-name=n0,size=268435456,read-zeroes=on"; then
      dev[qsd-null]=/dev/$(disk_of qsdnull0)
      backend[qsd-null]=memory
      cpu_pid[qsd-null]=${qsd_pid[null]}
      paths+=(qsd-null)
    else
      missing[qsd-null]=$qsd_error
    fi
  else
    missing[qsd-null]=$qsd_missing
  fi
fi

# nbd
if [ "$have_nbd" = 1 ]; then
  sock=$work/nbd.sock
  uri=$(nbd_unix_uri "$sock")
  nbdkit_start mem -U "$sock" memory 1G
  if command -v nbdcopy >/dev/null; then
    nbdcopy -- [ nbdkit --exit-with-parent pattern "$REGION" ] "$uri" || fail "prefilling $REGION failed"
  fi
  nbd_config "$work/nbd.yaml" bnbd0 "$uri" "queues: 1" "queue-size: 256" "backend.connections: 1" \
    "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
  rc=0
  nbd_backend_check "$work/nbd.yaml" || rc=$?
  if [ "$rc" -eq 0 ]; then
    vb_start nbd "$work/nbd.yaml"
    wait_for 30 "the disk of bnbd0" disk_ready bnbd0
    dev[vb-nbd]=/dev/$(disk_of bnbd0)
    backend[vb-nbd]=nbd
    cpu_pid[vb-nbd]=${vb_pid[nbd]}
    paths+=(vb-nbd)
  else
    missing[vb-nbd]=$nbd_unavailable
  fi
  # VDUSE_BRIDGE_BENCH_POLL_US=N: the same device with busy-poll-us: N as path vb-nbd-poll
  # (another daemon on the same server), to measure busy polling.
  if [ -n "${VDUSE_BRIDGE_BENCH_POLL_US:-}" ] && [ "$rc" -eq 0 ]; then
    nbd_config "$work/nbd-poll.yaml" bnbdpoll0 "$uri" "queues: 1" "queue-size: 256" "backend.connections: 1" \
      "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s" "busy-poll-us: $VDUSE_BRIDGE_BENCH_POLL_US"
    vb_start nbdpoll "$work/nbd-poll.yaml"
    wait_for 30 "the disk of bnbdpoll0" disk_ready bnbdpoll0
    dev[vb-nbd-poll]=/dev/$(disk_of bnbdpoll0)
    backend[vb-nbd-poll]=nbd
    cpu_pid[vb-nbd-poll]=${vb_pid[nbdpoll]}
    paths+=(vb-nbd-poll)
  fi
  if [ -z "$QSD" ]; then
    missing[qsd-nbd]=$qsd_missing
  elif qsd_start nbd qsdnbd0 "driver=nbd,node-name=n0,server.type=unix,server.path=$sock"; then
    dev[qsd-nbd]=/dev/$(disk_of qsdnbd0)
    backend[qsd-nbd]=nbd
    cpu_pid[qsd-nbd]=${qsd_pid[nbd]}
    paths+=(qsd-nbd)
  else
    missing[qsd-nbd]=$qsd_error
  fi
  if knbd_attach "$sock"; then
    dev[knbd]=$knbd_dev
    backend[knbd]=nbd
    paths+=(knbd)
  else
    missing[knbd]=$knbd_error
  fi
  if fio --enghelp 2>/dev/null | grep -qw nbd; then
    backend[fio-libnbd]=nbd
    paths+=(fio-libnbd)
  else
    missing[fio-libnbd]="this fio has no nbd ioengine (built without libnbd)"
  fi
fi

# iscsi
# kiscsi: the kernel's initiator (iscsi_tcp, driven by open-iscsi's iscsid and iscsiadm) on the
# same LUN. iscsiadm keeps its node records under /etc/iscsi, read-only here (the host's root): a
# tmpfs goes over it for this boot, with the host's iscsid.conf plus our settings and an initiator
# name of our own. iscsid runs in the foreground as our child, stopped by PID. kiscsi_attach:
# status 1 with the reason in $kiscsi_error (never fails the suite: the path is then skipped).
kiscsi_pid='' kiscsi_dev='' kiscsi_error='' kiscsi_etc=0 kiscsi_portal='' kiscsi_qd=''
kiscsi_listens() { grep -q '@ISCSIADM_ABSTRACT_NAMESPACE' /proc/net/unix || ! alive "$kiscsi_pid"; }
# kiscsi_disk: prints /dev/sdX, the disk of LUN 1 in the session with $TGT_IQN (no udev here: no
# /dev/disk/by-path; devtmpfs makes the node).
kiscsi_disk() {
  local s b
  for s in /sys/class/iscsi_session/session*; do
    [ "$(cat "$s/targetname" 2>/dev/null)" = "$TGT_IQN" ] || continue
    for b in "$s"/device/target*/*:*:*:1/block/*; do
      if [ -b "/dev/${b##*/}" ]; then echo "/dev/${b##*/}" && return 0; fi
    done
  done
  return 1
}
# kiscsi_until SECONDS CMD...: like wait_for, but status 1 on timeout instead of failing the suite.
kiscsi_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
kiscsi_why() { kiscsi_error="$1 (log: $(tail -n 3 "$work/kiscsi.log" 2>/dev/null | tr '\n' ' ' | cut -c1-300))"; }
kiscsi_attach() {
  local conf=/etc/iscsi/iscsid.conf
  if ! command -v iscsid >/dev/null || ! command -v iscsiadm >/dev/null; then
    kiscsi_error="iscsid/iscsiadm not installed (Debian: open-iscsi)" && return 1
  fi
  [ -e /sys/module/iscsi_tcp ] || { kiscsi_error="the iscsi_tcp kernel module is not loaded" && return 1; }
  [ -d /etc/iscsi ] || { kiscsi_error="no /etc/iscsi to put a tmpfs on (open-iscsi not installed?)" && return 1; }
  if [ -r "$conf" ]; then
    grep -Ev '^[[:space:]]*(iscsid\.startup|node\.startup|node\.session\.(cmds_max|queue_depth))[[:space:]]*=' \
      "$conf" >"$work/iscsid.conf" || true
  fi
  # iscsiadm starts no daemon (ours runs); no login at start; a queue as deep as the deepest
  # workload (qd128), where Debian's default queue_depth of 32 would cap the kernel path.
  printf '%s\n' "iscsid.startup = /bin/false" "node.startup = manual" "node.session.cmds_max = 256" \
    "node.session.queue_depth = 128" >>"$work/iscsid.conf"
  mount -t tmpfs -o mode=0755 tmpfs /etc/iscsi || { kiscsi_error="cannot mount a tmpfs on /etc/iscsi" && return 1; }
  kiscsi_etc=1
  cp "$work/iscsid.conf" "$conf" || { kiscsi_error="cannot write $conf on the tmpfs" && return 1; }
  echo "InitiatorName=iqn.2026-11.org.vduse-bridge.vmtest:kernel" >/etc/iscsi/initiatorname.iscsi
  mkdir -p /run/lock/iscsi # iscsiadm's lock files; the guest's /run is a fresh tmpfs
  # Its own process group: iscsid's SIGTERM handler signals its whole group (its children), which
  # would otherwise be this script's. setsid does not fork here (a background job of a shell
  # without job control is no group leader), so $! stays iscsid's PID.
  setsid iscsid -f -n -c "$conf" -i /etc/iscsi/initiatorname.iscsi >"$work/kiscsi.log" 2>&1 &
  kiscsi_pid=$!
  kiscsi_until 30 kiscsi_listens || { kiscsi_why "iscsid does not listen after 30 s" && return 1; }
  alive "$kiscsi_pid" || { kiscsi_why "iscsid exited at start-up" && return 1; }
  kiscsi_portal=127.0.0.1:$tgtd_port
  timeout 120 iscsiadm -m discovery -t sendtargets -p "$kiscsi_portal" >>"$work/kiscsi.log" 2>&1 ||
    { kiscsi_why "iscsiadm: discovery on $kiscsi_portal failed" && return 1; }
  timeout 120 iscsiadm -m node -T "$TGT_IQN" -p "$kiscsi_portal" --login >>"$work/kiscsi.log" 2>&1 ||
    { kiscsi_why "iscsiadm: login to $TGT_IQN on $kiscsi_portal failed" && return 1; }
  kiscsi_until 60 kiscsi_disk >/dev/null || { kiscsi_why "no disk for LUN 1 60 s after the login" && return 1; }
  kiscsi_dev=$(kiscsi_disk)
  kiscsi_qd=$(cat "/sys/block/${kiscsi_dev#/dev/}/device/queue_depth" 2>/dev/null || echo '?')
  echo "ok: kiscsi: $kiscsi_dev, LUN 1 of $TGT_IQN through iscsi_tcp, queue depth $kiscsi_qd" \
    "($(iscsid --version 2>/dev/null))"
}
# kiscsi_stop: log out (the disk goes), stop iscsid, drop the tmpfs; for a second call a no-op.
kiscsi_stop() {
  local rc=0
  if [ -n "$kiscsi_portal" ] && alive "$kiscsi_pid" && compgen -G "/sys/class/iscsi_session/session*" >/dev/null; then
    timeout 60 iscsiadm -m node -T "$TGT_IQN" -p "$kiscsi_portal" --logout >>"$work/kiscsi.log" 2>&1 || rc=1
  fi
  kiscsi_portal='' kiscsi_dev=''
  if [ -n "$kiscsi_pid" ]; then
    kill -TERM "$kiscsi_pid" 2>/dev/null || true
    wait_gone "$kiscsi_pid" 30 || kill -KILL "$kiscsi_pid" 2>/dev/null || true
    wait "$kiscsi_pid" 2>/dev/null || true
    kiscsi_pid=''
  fi
  if [ "$kiscsi_etc" = 1 ]; then
    umount /etc/iscsi || umount -l /etc/iscsi || rc=1
    kiscsi_etc=0
  fi
  return "$rc"
}
if [ "$have_iscsi" = 1 ]; then
  img=$work/lun1.img
  dd if=/dev/zero of="$img" bs=1M count=256 status=none || fail "prefilling the LUN's file failed"
  truncate -s 1G "$img"
  tgtd_start
  tgt_lun_add 1 "$img"
  iuri=$(iscsi_uri 1)
  iscsi_config "$work/iscsi.yaml" biscsi0 "$iuri" "queues: 1" "queue-size: 256" \
    "backend.reconnect-timeout: 60s" "backend.request-timeout: 30s"
  rc=0
  iscsi_backend_check "$work/iscsi.yaml" || rc=$?
  if [ "$rc" -eq 0 ]; then
    vb_start iscsi "$work/iscsi.yaml"
    wait_for 30 "the disk of biscsi0" disk_ready biscsi0
    dev[vb-iscsi]=/dev/$(disk_of biscsi0)
    backend[vb-iscsi]=iscsi
    cpu_pid[vb-iscsi]=${vb_pid[iscsi]}
    paths+=(vb-iscsi)
  else
    missing[vb-iscsi]=$iscsi_unavailable
  fi
  if [ -z "$QSD" ]; then
    missing[qsd-iscsi]=$qsd_missing
  elif ! compgen -G "/usr/lib/*/qemu/block-iscsi.so" >/dev/null && ! compgen -G "/usr/lib/qemu/block-iscsi.so" >/dev/null; then
    missing[qsd-iscsi]="qemu's iscsi block driver is not installed (Debian: qemu-block-extra)"
  elif qsd_start iscsi qsdiscsi0 "driver=iscsi,node-name=n0,transport=tcp,portal=127.0.0.1:$tgtd_port,target=$TGT_IQN,lun=1,initiator-name=iqn.2026-11.org.vduse-bridge.vmtest:qsd"; then
    dev[qsd-iscsi]=/dev/$(disk_of qsdiscsi0)
    backend[qsd-iscsi]=iscsi
    cpu_pid[qsd-iscsi]=${qsd_pid[iscsi]}
    paths+=(qsd-iscsi)
  else
    missing[qsd-iscsi]=$qsd_error
  fi
  on_cleanup kiscsi_stop # before tgtd stops: a session whose target went would hang in recovery
  if kiscsi_attach; then
    fact kiscsi_queue_depth "$kiscsi_qd"
    dev[kiscsi]=$kiscsi_dev
    backend[kiscsi]=iscsi
    paths+=(kiscsi)
  else
    missing[kiscsi]=$kiscsi_error
    kiscsi_stop || true
  fi
fi

# file
# file_store: makes $file_img, a 256 MiB file (every block written) on a store where O_DIRECT is
# real, and sets file_store_what; status 1 with file_error set if there is none. The store is ext4
# on a 384 MiB brd ramdisk: O_DIRECT reads and writes go to brd's pages without the page cache and
# complete inline, so io_uring (the bridge's and qsd's) never needs a worker thread. tmpfs (6.6+)
# takes O_DIRECT but serves it from the page cache without IOCB_NOWAIT support, so io_uring hands
# every read to an io-wq thread there (measured: fio's io_uring engine on a tmpfs file 2,331 IOPS
# at 4k qd1 against 6,140 on ext4 on brd): it would compare the peers' io-wq handling, not the
# paths. brd is not in the harness's initramfs (its module would be loaded at boot with the
# default 16 MiB disks): it is loaded here from the kernel tree run-vm booted, with rd_size set.
# Without it the store falls back to the guest's tmpfs, and the report says so.
file_store() {
  local kver ko
  mkdir -p "$work/mnt-file"
  kver=$(uname -r)
  ko=${VDUSE_BRIDGE_VM_CACHE:-/var/cache/vduse-bridge/vm}/kernel-$kver/lib/modules/$kver/kernel/drivers/block/brd.ko.xz
  if [ ! -e /sys/module/brd ] && [ -r "$ko" ] && xz -dc "$ko" >"$work/brd.ko" &&
    insmod "$work/brd.ko" rd_nr=1 rd_size=$((384 * 1024)) && [ -b /dev/ram0 ] &&
    mkfs.ext4 -q -F /dev/ram0 && mount /dev/ram0 "$work/mnt-file"; then
    file_store_what="ext4 on a 384 MiB brd ramdisk"
  else
    echo "bench: file: no brd ramdisk ($ko), using the guest's tmpfs (O_DIRECT there goes through the page cache and io-wq)"
    file_store_what="tmpfs (no brd module: O_DIRECT is served from the page cache)"
  fi
  file_img=$work/mnt-file/disk.img
  dd if=/dev/zero of="$file_img" bs=1M count=256 oflag=direct status=none || {
    file_error="writing $file_img with O_DIRECT failed (store: $file_store_what)"
    return 1
  }
}
if want file; then
  if ! file_store; then
    for p in vb-file qsd-file loop-file; do missing[$p]=$file_error; done
  else
    fact file_store "$file_store_what"
    echo "ok: file: $file_img, 256 MiB on $file_store_what"
    {
      printf 'devices:\n  - name: bfile0\n    queues: 1\n    queue-size: 256\n'
      printf '    backend:\n      type: file\n      path: %s\n      direct: on\n' "$file_img"
    } >"$work/file.yaml"
    vb_start file "$work/file.yaml"
    wait_for 30 "the disk of bfile0" disk_ready bfile0
    dev[vb-file]=/dev/$(disk_of bfile0)
    backend[vb-file]="file"
    cpu_pid[vb-file]=${vb_pid[file]}
    paths+=(vb-file)
    grep -m1 'file: ' "${vb_log[file]}" || true
    if [ -z "$QSD" ]; then
      missing[qsd-file]=$qsd_missing
    elif qsd_start file qsdfile0 "driver=file,node-name=n0,filename=$file_img,aio=io_uring,cache.direct=on"; then
      dev[qsd-file]=/dev/$(disk_of qsdfile0)
      backend[qsd-file]="file"
      cpu_pid[qsd-file]=${qsd_pid[file]}
      paths+=(qsd-file)
    else
      missing[qsd-file]=$qsd_error
    fi
    if ! command -v losetup >/dev/null; then
      missing[loop-file]="losetup not installed (Debian: mount)"
    elif ! loop_dev=$(losetup -f --show --direct-io=on "$file_img"); then
      loop_dev=''
      missing[loop-file]="losetup --direct-io=on $file_img failed"
    elif [ "$(cat "/sys/block/${loop_dev#/dev/}/loop/dio" 2>/dev/null)" != 1 ]; then
      missing[loop-file]="the loop device does not use direct I/O on $file_store_what"
    else
      dev[loop-file]=$loop_dev
      backend[loop-file]="file"
      paths+=(loop-file)
    fi
  fi
fi

for p in "${!missing[@]}"; do
  printf '%s\t%s\n' "$p" "${missing[$p]}" >>"$OUT/skipped.tsv"
  echo "bench: $p: skipped: ${missing[$p]}"
done
# VDUSE_BRIDGE_BENCH_PATHS (names, space-separated) keeps only those paths: quick experiments.
if [ -n "${VDUSE_BRIDGE_BENCH_PATHS:-}" ]; then
  kept=()
  for p in "${paths[@]}"; do [[ " $VDUSE_BRIDGE_BENCH_PATHS " != *" $p "* ]] || kept+=("$p"); done
  paths=("${kept[@]}")
fi
[ ${#paths[@]} -gt 0 ] || skip "no path to measure"
for p in "${paths[@]}" vb-mem-q2 vb-mem-q4; do
  [ -n "${dev[$p]:-}" ] || continue
  echo none >"/sys/block/${dev[$p]#/dev/}/queue/scheduler" || fail "cannot set the none scheduler on ${dev[$p]}"
done
for p in "${paths[@]}"; do echo "ok: $p (${backend[$p]}) ${dev[$p]:-(no block device)}"; done

# Idle RSS of each daemon, once everything is attached.
for id in "${!vb_pid[@]}"; do
  read -r r a < <(rss "${vb_pid[$id]}")
  fact "rss_idle_vb-$id" "$r"
  fact "rssanon_idle_vb-$id" "$a"
done
for id in "${!qsd_pid[@]}"; do
  read -r r a < <(rss "${qsd_pid[$id]}")
  fact "rss_idle_qsd-$id" "$r"
  fact "rssanon_idle_qsd-$id" "$a"
done

# --- 3. the runs ------------------------------------------------------------------------------
if [ "${VDUSE_BRIDGE_BENCH_MODE:-runs}" = breakdown ]; then
  # shellcheck source=breakdown.sh
  source "$HERE/breakdown.sh"
  bd_run_all
fi
# name rw bs iodepth numjobs
workloads=(
  "randread-4k-qd1 randread 4k 1 1"
  "randread-4k-qd32 randread 4k 32 1"
  "randread-4k-qd128 randread 4k 128 1"
  "randwrite-4k-qd1 randwrite 4k 1 1"
  "randwrite-4k-qd32 randwrite 4k 32 1"
  "randwrite-4k-qd128 randwrite 4k 128 1"
  "read-128k-qd8 read 128k 8 1"
  "write-128k-qd8 write 128k 8 1"
  "randrw70-4k-qd32-2jobs randrw 4k 32 2"
)
# VDUSE_BRIDGE_BENCH_WORKLOADS (names) keeps only those workloads; the breakdown mode runs none.
if [ -n "${VDUSE_BRIDGE_BENCH_WORKLOADS:-}" ] || [ "${VDUSE_BRIDGE_BENCH_MODE:-runs}" = breakdown ]; then
  kept=()
  for w in "${workloads[@]}"; do [[ " ${VDUSE_BRIDGE_BENCH_WORKLOADS:-} " != *" ${w%% *} "* ]] || kept+=("$w"); done
  workloads=("${kept[@]}")
fi

echo "round,workload,path,backend,rw,bs,iodepth,numjobs,json,cpu_ticks,ios,clk_tck" >"$OUT/runs.csv"
nrun=0
# run_one ROUND WORKLOAD PATH RW BS QD JOBS
run_one() {
  local round=$1 name=$2 p=$3 rw=$4 bs=$5 qd=$6 jobs=$7 target json c0=0 c1=0 i0=0 i1=0 pid v
  nrun=$((nrun + 1))
  json=runs/$(printf '%04d' "$nrun")-$name-$p.json
  if [ "$p" = fio-libnbd ]; then
    target=(--ioengine=nbd "--uri=$uri")
  else
    target=(--ioengine=libaio --direct=1 "--filename=${dev[$p]}")
  fi
  pid=${cpu_pid[$p]:-}
  [ -z "$pid" ] || c0=$(cpu_ticks "$pid")
  [ -z "${dev[$p]:-}" ] || i0=$(disk_ios "${dev[$p]}")
  fio --eta=never --name=bench "${target[@]}" --rw="$rw" --rwmixread=70 --bs="$bs" --iodepth="$qd" \
    --numjobs="$jobs" --group_reporting --size="$REGION" --time_based --runtime="$RUNTIME" \
    --ramp_time="$RAMP" --output-format=json --output="$OUT/$json" >"$work/fio.err" 2>&1 ||
    fail "fio $name failed on $p: $(cat "$work/fio.err")"
  [ -z "$pid" ] || c1=$(cpu_ticks "$pid")
  [ -z "${dev[$p]:-}" ] || i1=$(disk_ios "${dev[$p]}")
  echo "$round,$name,$p,${backend[$p]},$rw,$bs,$qd,$jobs,$json,$((c1 - c0)),$((i1 - i0)),$CLK" >>"$OUT/runs.csv"
  v=$(jq -r '.jobs[0] | (.read.iops + .write.iops) | floor' "$OUT/$json" 2>/dev/null || echo '?')
  printf '  round %d %-24s %-12s %8s IOPS  cpu %s ticks / %s I/Os\n' "$round" "$name" "$p" "$v" "$((c1 - c0))" "$((i1 - i0))"
}

nscale=0
if [ -n "${dev[vb-mem-q1]:-}" ] && [ ${#workloads[@]} -eq 9 ]; then nscale=3; fi
nruns=$((ROUNDS * (${#workloads[@]} * ${#paths[@]} + nscale)))
echo "bench: ${#paths[@]} paths, ${#workloads[@]} workloads + $nscale scaling runs, $ROUNDS rounds: $nruns fio runs" \
  "of ${RUNTIME}s after $RAMP ramp"
t_runs=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
  for w in "${workloads[@]}"; do
    read -r name rw bs qd jobs <<<"$w"
    for ((i = 0; i < ${#paths[@]}; i++)); do
      p=${paths[$(((i + r - 1) % ${#paths[@]}))]}
      run_one "$r" "$name" "$p" "$rw" "$bs" "$qd" "$jobs"
    done
  done
  qs=(1 2 4)
  for ((i = 0; i < nscale; i++)); do
    q=${qs[$(((i + r - 1) % 3))]}
    run_one "$r" "scaling-4k-randread-qd32" "vb-mem-q$q" randread 4k 32 "$q"
  done
done
fact runs_wall_s $((SECONDS - t_runs))

# RSS after the runs (memory disks now hold their written pages).
for id in "${!vb_pid[@]}"; do
  read -r r a < <(rss "${vb_pid[$id]}")
  fact "rss_after_vb-$id" "$r"
  fact "rssanon_after_vb-$id" "$a"
done
for id in "${!qsd_pid[@]}"; do
  read -r r a < <(rss "${qsd_pid[$id]}")
  fact "rss_after_qsd-$id" "$r"
  fact "rssanon_after_qsd-$id" "$a"
done
echo "bench: done: $nrun runs in $((SECONDS - t_runs)) s; results in \$VM_OUT"

# Tear down in order: devices off the bus before their servers go.
if [ "$have_nbd" = 1 ] && [ -n "${dev[knbd]:-}" ]; then knbd_detach "${dev[knbd]}" || true; fi
if [ "$have_iscsi" = 1 ]; then kiscsi_stop || true; fi
suite_stop_all
rm -f /dev/shm/vduse-bridge/bmemq*.mem
if [ -n "${file_img:-}" ] && mountpoint -q "$work/mnt-file"; then
  umount "$work/mnt-file" || fail "umount $work/mnt-file failed"
  rmmod brd || true
fi
