#!/usr/bin/env bash
# `cmake --install` puts every file an operator needs in place: the daemon in sbin, the three
# manual pages, the modules-load.d file, the systemd unit naming the installed binary and the
# configuration file it installed (for /usr: /etc, as GNUInstallDirs), the example
# configuration (valid: --check passes) and, on a second install, keeps an edited configuration.
set -euo pipefail
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
failures=0
fail() {
  echo "FAIL: $*"
  status=1
  failures=$((failures + 1))
}
# ok MESSAGE FAILURES-BEFORE: say MESSAGE if no check failed since.
ok() {
  [ "$failures" -ne "$2" ] || echo "ok: $1"
}

# install DESTDIR PREFIX: cmake --install, DESTDIR empty for none.
install_to() {
  if [ -n "$1" ]; then
    DESTDIR=$1 cmake --install "$build" --prefix "$2" >"$tmp/install.log"
  else
    cmake --install "$build" --prefix "$2" >"$tmp/install.log"
  fi
}

# check DESTDIR PREFIX CONFDIR: what one install must have put where.
check() {
  local root=$1 prefix=$2 confdir=$3 unit conf before=$failures
  for f in sbin/vduse-bridge share/man/man8/vduse-bridge.8 share/man/man5/vduse-bridge.yaml.5 \
    share/man/man7/vduse-bridge-testing.7 lib/modules-load.d/vduse-bridge.conf \
    sbin/vduse-bridge-csi share/man/man8/vduse-bridge-csi.8 share/vduse-bridge/kubernetes/node-plugin.yaml \
    share/vduse-bridge/kubernetes/csi-driver.yaml share/vduse-bridge/kubernetes/example-nbd-volume.yaml \
    lib/systemd/system/vduse-bridge.service; do
    [ -e "$root$prefix/$f" ] || fail "$prefix: $f not installed"
  done
  for f in vduse-bridge.yaml vduse-bridge.yaml.example; do
    [ -e "$root$confdir/$f" ] || fail "$prefix: $confdir/$f not installed"
  done
  [ -d "$root$confdir/vduse-bridge.d" ] || fail "$prefix: the drop-in directory $confdir/vduse-bridge.d was not made"
  grep -q "^ReadWritePaths=$confdir/vduse-bridge.d\$" "$root$prefix/lib/systemd/system/vduse-bridge.service" ||
    fail "$prefix: the unit does not let the daemon write $confdir/vduse-bridge.d"
  unit=$root$prefix/lib/systemd/system/vduse-bridge.service
  [ -e "$unit" ] || return 0
  grep -q "^ExecStart=$prefix/sbin/vduse-bridge " "$unit" || fail "$prefix: the unit does not start $prefix/sbin/vduse-bridge"
  conf=$(sed -n 's/^ExecStart=.* --config \([^ ]*\).*/\1/p' "$unit")
  [ "$conf" = "$confdir/vduse-bridge.yaml" ] || fail "$prefix: the unit reads '$conf', not $confdir/vduse-bridge.yaml"
  [ -f "$root$conf" ] || fail "$prefix: the unit's configuration $conf was not installed"
  ok "prefix $prefix: unit, binary and configuration $conf in place" "$before"
}

# An arbitrary prefix (as cmake's default /usr/local: PREFIX/etc), installed twice with an edit
# in between: the edit survives, the example is refreshed, --check passes on both.
p=$tmp/prefix
install_to "" "$p"
check "" "$p" "$p/etc/vduse-bridge"
conf=$p/etc/vduse-bridge/vduse-bridge.yaml
for f in "$conf" "$conf.example"; do
  "$p/sbin/vduse-bridge" --config "$f" --check || fail "--check rejects the shipped $f"
done
cmp -s "$conf" "$conf.example" || fail "the first install's configuration is not the example"
before=$failures
echo "# edited by the operator" >>"$conf"
echo "# stale example" >>"$conf.example"
install_to "" "$p"
grep -q "^# edited by the operator$" "$conf" || fail "a second install overwrote the edited $conf"
grep -q "Kept: $conf" "$tmp/install.log" || fail "the second install did not say it kept $conf"
grep -q "^# stale example$" "$conf.example" && fail "a second install did not refresh $conf.example"
ok "a second install kept the edited configuration and refreshed the example" "$before"

# The usual prefixes, through DESTDIR: /usr puts the configuration in /etc, /usr/local in
# /usr/local/etc, /opt/NAME in /etc/opt/NAME (GNUInstallDirs); an edit under DESTDIR survives.
for pair in /usr:/etc/vduse-bridge /usr/local:/usr/local/etc/vduse-bridge /opt/vb:/etc/opt/vb/vduse-bridge; do
  prefix=${pair%%:*} confdir=${pair#*:} root=$tmp/root${prefix//\//_}
  install_to "$root" "$prefix"
  check "$root" "$prefix" "$confdir"
  [ -f "$root$confdir/vduse-bridge.yaml" ] || continue
  echo "# edited" >>"$root$confdir/vduse-bridge.yaml"
  install_to "$root" "$prefix"
  grep -q "^# edited$" "$root$confdir/vduse-bridge.yaml" || fail "$prefix: a second install overwrote the configuration"
done
exit $status
