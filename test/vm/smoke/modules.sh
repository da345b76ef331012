#!/usr/bin/env bash
# Smoke test: the guest kernel has what VDUSE needs, loaded and usable.
# Runs inside the real-kernel VM only: test/vm/run-vm test/vm/smoke/modules.sh
set -euo pipefail

if [ "${IN_VM:-0}" != 1 ]; then
  echo "SKIP: not inside the test VM (run it with test/vm/run-vm)"
  exit 77
fi

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

for m in vduse vdpa virtio_vdpa; do
  [ -d "/sys/module/$m" ] || fail "module $m is not loaded (/sys/module/$m missing)"
  echo "ok: module $m is loaded"
done

[ -c /dev/vduse/control ] || fail "/dev/vduse/control is missing or not a character device"
echo "ok: /dev/vduse/control is a character device"

command -v vdpa >/dev/null || fail "the vdpa tool (iproute2) is not installed on the host"
mgmt=$(vdpa mgmtdev show) || fail "vdpa mgmtdev show failed"
printf '%s\n' "$mgmt" | sed 's/^/  /'
# Output looks like "vduse:" followed by indented details.
printf '%s\n' "$mgmt" | grep -Eq '^vduse:?( |$)' || fail "vdpa mgmtdev show does not list vduse"
echo "ok: vdpa mgmtdev show lists vduse"
