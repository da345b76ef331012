# shellcheck shell=bash disable=SC2034 # its variables are read by the scripts that source it
# Helpers for tests that run a real VMM (QEMU >= 8 with vhost-vdpa-device-pci, from the harness cache,
# see test/vm/fetch-qemu) inside the test VM, on a disk attached with vhost-vdpa. The VMM boots a
# NESTED guest (TCG inside TCG) on the harness's own kernel with a busybox initramfs
# (test/vm/vmm/nested-init) whose agent (test/vm/vmm/nested-agent) runs the commands given here, sent
# over a virtio-serial port; fio comes from the outer guest's root over 9p, mounted on demand
# (test/vm/vmm/nested-lib); the boot image comes from test/vm/vmm/make-image. Sourced (it sources
# lib/daemon.sh) after lib/nbd.sh, if the script uses it:
#
#   vmm_prepare                       find QEMU (skip if none) and the nested boot image
#   vmm_start ID VHOSTDEV [QEMU ARG...]  start VMM ID on /dev/vhost-vdpa-N (- for none), QMP
#                                     connected; the nested guest boots meanwhile
#   vmm_wait_boot ID N SECONDS        wait until boot N of the nested guest takes commands (a reboot
#                                     is boot 2); sets vmm_boot_s to the seconds waited
#   vmm_boots ID                      how many boots of VMM ID have come up so far
#   vmm_exec ID SECONDS SCRIPT        run SCRIPT (busybox sh text) in the nested guest; its output on
#                                     stdout, its exit status as ours; fails the test on timeout or
#                                     VMM death
#   vmm_send ID SCRIPT                send SCRIPT without waiting (e.g. a reboot); its id in $vmm_sent
#   vmm_qmp ID JSON                   one QMP command; the reply line on stdout, status 1 on "error"
#   vmm_qmp_send ID JSON, vmm_qmp_reply ID SECONDS WHAT   the same in two halves
#   vmm_kill ID [SIGNAL]              signal (default KILL) the VMM by PID and reap it
#   vmm_alive ID                      the VMM process still runs
#   vmm_console ID [LINES]            the tail of its serial console (default 40 lines)
#   vmm_bios_starts ID                how many times SeaBIOS started (its debug log): resets
#
# Every VMM is SIGKILLed at exit, before the daemon stops (the daemon's vdpa dev del would wait for
# the VMM to close its vhost-vdpa fd): the step is pushed after lib/daemon.sh's and lib/nbd.sh's.
[ -z "${vmm_sh_sourced:-}" ] || return 0
vmm_sh_sourced=1
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh" # a no-op if the script sourced it

VMM_VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMM_CACHE=${VDUSE_BRIDGE_VM_CACHE:-/var/cache/vduse-bridge/vm}
# The nested guest: 256 MiB of shared memory (vhost-vdpa maps it), room for two more DIMMs.
VMM_MEM=${VMM_MEM:-256M}
# One vCPU: with two, the nested boot took longer (two TCG threads on the outer guest's two vCPUs),
# even though one vCPU costs ~20 s of patching the kernel's lock prefixes for uniprocessor.
VMM_SMP=${VMM_SMP:-1}
# SSE4.2: fio's crc32c then uses the crc32 instruction (one TCG helper call per 8 bytes) instead of
# table lookups, which under nested TCG made an 8 MiB verify take minutes.
VMM_CPU=qemu64,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt
# Nested TCG runs the guest kernel ~500x slower than hardware: everything the test does not need is
# switched off. The initcalls blacklisted took 1-16 s each there (certificate and key parsing, crypto
# self-tests, BPF kfunc BTF parsing, sysfs for built-in parameters, ...); module signatures are
# stripped instead of checked (no certificate is loaded).
VMM_APPEND="console=ttyS0 quiet panic=-1 memhp_default_state=online mitigations=off cryptomgr.notests"
VMM_APPEND+=" lsm=capability init_on_alloc=0 page_alloc.shuffle=0 tsc=reliable ipv6.disable=1 audit=0"
VMM_APPEND+=" nowatchdog initcall_blacklist=load_system_certificate_list,init_encrypted,jent_mod_init"
VMM_APPEND+=",bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init,kfunc_init,cpumask_kfunc_init"
VMM_APPEND+=",bpf_prog_test_run_init,bpf_global_ma_init,slab_sysfs_init,cec_init,crypto_kdf108_init"
VMM_APPEND+=",sed_opal_init,clk_debug_init,param_sysfs_builtin_init"

declare -A vmm_pids=() vmm_qmp_fds=() vmm_dirs=() vmm_in_fds=() vmm_out_fds=() vmm_readers=() vmm_t0=()
vmm_seq=0 vmm_sent=0 vmm_tree='' vmm_bin='' vmm_kernel='' vmm_initrd='' vmm_boot_s=0

now_s() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# vmm_prepare: QEMU from the cache (fetch-qemu ran on the host before the boot: run-vm runs
# test/vm/vmm/prepare-host), and the nested boot image (test/vm/vmm/make-image) from the cache, where
# prepare-host put it, or built here if the cache has none of the right key.
vmm_prepare() {
  local t0 kver ktree dir how
  t0=$(now_s)
  vmm_tree=$("$VMM_VM_DIR/fetch-qemu" --cached 2>&1) ||
    skip "no QEMU with vhost-vdpa-device-pci in $VMM_CACHE (${vmm_tree//$'\n'/ }; test/vm/fetch-qemu fetches it on the host)"
  vmm_bin=$vmm_tree/usr/bin/qemu-system-x86_64
  [ -x "$vmm_bin" ] || skip "$vmm_bin missing"
  kver=${VMM_KVER:-$(uname -r)}
  ktree=$VMM_CACHE/kernel-$kver
  dir=$VMM_CACHE/vmm-image-$("$VMM_VM_DIR/vmm/make-image" --key "$kver")
  how="from the cache"
  if [ ! -f "$dir/.complete" ]; then
    dir=$work/vmm-image how="built here"
    "$VMM_VM_DIR/vmm/make-image" "$dir" "$ktree" "$kver" || fail "building the nested boot image failed"
  fi
  vmm_kernel=$dir/vmlinux
  [ -f "$vmm_kernel" ] || vmm_kernel=$dir/vmlinuz
  vmm_initrd=$dir/initrd.cpio
  echo "ok: nested guest: QEMU $(cat "$vmm_tree/.version" 2>/dev/null || echo '?'), kernel $kver" \
    "($(basename "$vmm_kernel")), initramfs $(($(stat -c %s "$vmm_initrd") / 1024)) KiB ($how, $(elapsed "$t0")s)"
}

vmm_alive() { [ -n "${vmm_pids[$1]:-}" ] && kill -0 "${vmm_pids[$1]}" 2>/dev/null; }
vmm_console() { tail -n "${2:-40}" "${vmm_dirs[$1]}/console" 2>/dev/null | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g'; }
vmm_boots() { grep -c '^@@READY ' "${vmm_dirs[$1]}/ctl.log" 2>/dev/null || true; }
vmm_bios_starts() { grep -c '^BUILD: ' "${vmm_dirs[$1]}/bios.log" 2>/dev/null || true; }

vmm_fail() { # ID MESSAGE
  echo "---- nested console of VMM $1 (last 30 lines) ----" >&2
  vmm_console "$1" 30 >&2 || true
  echo "---- SeaBIOS log of VMM $1 (last 10 lines) ----" >&2
  tail -n 10 "${vmm_dirs[$1]}/bios.log" >&2 2>/dev/null || true
  [ ! -s "${vmm_dirs[$1]}/qemu.log" ] || { echo "---- VMM $1 stderr ----" >&2 && tail -n 20 "${vmm_dirs[$1]}/qemu.log" >&2; }
  fail "$2"
}

# vmm_start ID VHOSTDEV [QEMU ARG...]: the VMM in the background, its QMP (on a free 127.0.0.1 port in
# this guest, driven through bash's /dev/tcp) connected; the nested guest boots meanwhile.
vmm_start() {
  local id=$1 vhost=$2 d port try fd greeting deadline
  shift 2
  d=$work/vmm-$id
  rm -rf "$d"
  mkdir -p "$d"
  vmm_dirs[$id]=$d
  # The agent's port: a pipe chardev reads ctl.in and writes ctl.out. Both ends are held open here
  # read-write, so neither side ever blocks on open or sees an end of file.
  mkfifo "$d/ctl.in" "$d/ctl.out"
  exec {fd}<>"$d/ctl.in"
  vmm_in_fds[$id]=$fd
  exec {fd}<>"$d/ctl.out"
  vmm_out_fds[$id]=$fd
  : >"$d/ctl.log"
  cat <&"$fd" >>"$d/ctl.log" &
  vmm_readers[$id]=$!
  for try in $(seq 1 20); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] || continue
    # shellcheck disable=SC2054 # commas belong to QEMU's option syntax
    local qemu=(
      "$vmm_bin" -L "$vmm_tree/usr/share/qemu"
      -machine pc,memory-backend=mem -m "$VMM_MEM,slots=2,maxmem=1G"
      -object "memory-backend-memfd,id=mem,size=$VMM_MEM,share=on"
      -smp "$VMM_SMP" -cpu "$VMM_CPU" -display none -vga none -nic none -monitor none
      -serial "file:$d/console" -qmp "tcp:127.0.0.1:$port,server=on,wait=off"
      -chardev "file,id=bios,path=$d/bios.log" -device isa-debugcon,iobase=0x402,chardev=bios
      -device virtio-serial-pci -chardev "pipe,id=ctl,path=$d/ctl" -device virtserialport,chardev=ctl,name=vmmctl
      -kernel "$vmm_kernel" -initrd "$vmm_initrd" -append "$VMM_APPEND"
      -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
      "$@"
    )
    # shellcheck disable=SC2054
    [ "$vhost" = - ] || qemu+=(-device "vhost-vdpa-device-pci,vhostdev=$vhost")
    printf '%q ' "${qemu[@]}" >"$d/cmdline"
    # Its own modules first: the system's (QEMU 7.2) cannot be loaded and only add noise.
    QEMU_MODULE_DIR=$vmm_tree/usr/lib/x86_64-linux-gnu/qemu "${qemu[@]}" </dev/null >"$d/qemu.log" 2>&1 &
    vmm_pids[$id]=$!
    vmm_t0[$id]=$(now_s)
    # QMP listens once QEMU has set the machine up (a second or two under TCG).
    fd='' deadline=$((SECONDS + 60))
    while vmm_alive "$id" && [ "$SECONDS" -lt "$deadline" ]; do
      if { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then break; fi
      fd=''
      sleep 0.2
    done
    if [ -n "$fd" ]; then
      vmm_qmp_fds[$id]=$fd
      IFS= read -r -t 60 -u "$fd" greeting || vmm_fail "$id" "VMM $id: no QMP greeting"
      [[ $greeting == *QMP* ]] || vmm_fail "$id" "VMM $id: unexpected QMP greeting: $greeting"
      vmm_qmp "$id" '{"execute":"qmp_capabilities"}' >/dev/null || vmm_fail "$id" "VMM $id: qmp_capabilities failed"
      return 0
    fi
    if vmm_alive "$id"; then vmm_fail "$id" "VMM $id: QMP did not listen on 127.0.0.1:$port within 60s"; fi
    wait "${vmm_pids[$id]}" 2>/dev/null || true
    unset "vmm_pids[$id]"
    grep -qi 'address already in use\|Failed to bind' "$d/qemu.log" ||
      { cat "$d/qemu.log" >&2; fail "VMM $id exited during start-up: $(tail -n 3 "$d/qemu.log")"; }
  done
  fail "VMM $id: no free port for QMP in 20 tries"
}

# vmm_qmp ID JSON: sends one command, prints its reply line (events are skipped).
vmm_qmp() {
  vmm_qmp_send "$1" "$2"
  vmm_qmp_reply "$1" 120 "$2"
}
vmm_qmp_send() { # ID JSON: no wait for the reply (a reset can block the VMM until its devices are reset)
  local id=$1 fd=${vmm_qmp_fds[$1]:-}
  [ -n "$fd" ] || fail "VMM $id has no QMP connection"
  printf '%s\n' "$2" >&"$fd" || vmm_fail "$id" "VMM $id: QMP write failed ($2)"
}
vmm_qmp_reply() { # ID SECONDS WHAT: the next reply line; status 1 on "error"
  local id=$1 fd=${vmm_qmp_fds[$1]:-} line
  while :; do
    IFS= read -r -t "$2" -u "$fd" line || vmm_fail "$id" "VMM $id: no QMP reply within ${2}s to $3"
    line=${line%$'\r'}
    case $line in
    *'"return"'*) printf '%s\n' "$line" && return 0 ;;
    *'"error"'*) printf '%s\n' "$line" && return 1 ;;
    esac
  done
}

# vmm_wait_boot ID N SECONDS
vmm_wait_boot() {
  local id=$1 n=$2 limit=$3 t0 deadline
  t0=$(now_s)
  deadline=$((SECONDS + limit))
  until [ "$(vmm_boots "$id")" -ge "$n" ]; do
    vmm_alive "$id" || vmm_fail "$id" "VMM $id exited while waiting for boot $n"
    [ "$SECONDS" -lt "$deadline" ] || vmm_fail "$id" "VMM $id: boot $n did not come up within ${limit}s"
    sleep 0.5
  done
  [ "$(vmm_boots "$id")" -eq "$n" ] || vmm_fail "$id" "VMM $id: expected boot $n, saw $(vmm_boots "$id") (an unexpected reboot)"
  vmm_boot_s=$(elapsed "$t0")
}

vmm_send() {
  # Unique also across subshells ($(vmm_exec ...) cannot count in the caller's variables).
  vmm_seq=$((vmm_seq + 1))
  vmm_sent=$BASHPID-$vmm_seq-${EPOCHREALTIME/./}
  printf '@@CMD %s\n%s\n@@END %s\n' "$vmm_sent" "$2" "$vmm_sent" >&"${vmm_in_fds[$1]}"
}

# vmm_exec ID SECONDS SCRIPT: runs SCRIPT with busybox sh in the nested guest and waits for it. The
# boot it runs in must not end meanwhile.
vmm_exec() {
  local id=$1 limit=$2 d=${vmm_dirs[$1]} cid deadline boots rc
  boots=$(vmm_boots "$id")
  vmm_send "$id" "$3"
  cid=$vmm_sent
  deadline=$((SECONDS + limit))
  until rc=$(awk -v id="$cid" '$1 == "@@RC" && $2 == id { print $3; found = 1 } END { exit !found }' "$d/ctl.log"); do
    vmm_alive "$id" || vmm_fail "$id" "VMM $id exited during command $cid"
    [ "$(vmm_boots "$id")" -eq "$boots" ] || vmm_fail "$id" "VMM $id rebooted during command $cid"
    [ "$SECONDS" -lt "$deadline" ] || vmm_fail "$id" "VMM $id: command $cid did not finish within ${limit}s: $3"
    sleep 0.2
  done
  # The output: the lines between its @@OUT and @@RC, less the line break the agent added.
  awk -v id="$cid" '$1 == "@@RC" && $2 == id { out = 0 } out { if (held) print prev; prev = $0; held = 1 }
    $1 == "@@OUT" && $2 == id { out = 1 } END { if (held && prev != "") print prev }' "$d/ctl.log"
  return "$rc"
}

vmm_kill() {
  local id=$1 sig=${2:-KILL} pid=${vmm_pids[$1]:-}
  [ -n "$pid" ] || return 0
  {
    kill "-$sig" "$pid" || true
    wait_gone "$pid" 30 || kill -KILL "$pid" || true
    wait "$pid" || true
  } 2>/dev/null
  unset "vmm_pids[$id]"
  local fd
  for fd in "${vmm_qmp_fds[$id]:-}" "${vmm_in_fds[$id]:-}" "${vmm_out_fds[$id]:-}"; do
    [ -z "$fd" ] || exec {fd}>&-
  done
  unset "vmm_qmp_fds[$id]" "vmm_in_fds[$id]" "vmm_out_fds[$id]"
  if [ -n "${vmm_readers[$id]:-}" ]; then
    kill "${vmm_readers[$id]}" 2>/dev/null || true
    wait "${vmm_readers[$id]}" 2>/dev/null || true
    unset "vmm_readers[$id]"
  fi
}

vmm_cleanup() {
  local id
  for id in "${!vmm_pids[@]}"; do vmm_kill "$id" KILL; done
  if [ -n "${VM_OUT:-}" ] && [ -d "$VM_OUT" ]; then
    for id in "${!vmm_dirs[@]}"; do
      cp "${vmm_dirs[$id]}/console" "$VM_OUT/vmm-$id.console" 2>/dev/null || true
      cp "${vmm_dirs[$id]}/bios.log" "$VM_OUT/vmm-$id.bios.log" 2>/dev/null || true
      cp "${vmm_dirs[$id]}/ctl.log" "$VM_OUT/vmm-$id.ctl.log" 2>/dev/null || true
    done
  fi
}
on_cleanup vmm_cleanup
