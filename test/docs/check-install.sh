#!/usr/bin/env bash
# `cmake --install` puts every file an operator needs in place: the daemon in sbin, the three
# manual pages, the example configuration (valid: --check passes) and the systemd unit with the
# installed binary's path.
set -euo pipefail
build=$1
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
status=0
for f in sbin/vduse-bridge share/man/man8/vduse-bridge.8 share/man/man5/vduse-bridge.yaml.5 \
  share/man/man7/vduse-bridge-testing.7 etc/vduse-bridge/vduse-bridge.yaml lib/systemd/system/vduse-bridge.service; do
  if [ -e "$prefix/$f" ]; then echo "ok: $f"; else echo "FAIL: $f not installed"; status=1; fi
done
"$prefix/sbin/vduse-bridge" --config "$prefix/etc/vduse-bridge/vduse-bridge.yaml" --check || status=1
grep -q "^ExecStart=$prefix/sbin/vduse-bridge " "$prefix/lib/systemd/system/vduse-bridge.service" ||
  { echo "FAIL: the unit does not start $prefix/sbin/vduse-bridge"; status=1; }
exit $status
