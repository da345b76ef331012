#!/usr/bin/env bash
# The bash completion (etc/bash-completion/vduse-bridge) behaves: commands, options (every one
# --help lists, so the two cannot drift), option values, and device names from `list` through the
# control socket named on the line. `list` is answered by a stand-in for the daemon's CLI.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
binary=$1/src/vduse-bridge
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() {
  echo "FAIL: $*"
  status=1
}

# The stand-in: prints a device list (with its header) and records the arguments it got.
cat >"$tmp/vduse-bridge" <<STUB
#!/usr/bin/env bash
printf '%s\n' "\$*" >"$tmp/args"
printf 'NAME   DEV    BACKEND  STATE\ndisk0  /dev/vda memory serving\ndata1  /dev/vdb nbd waiting\n'
STUB
chmod +x "$tmp/vduse-bridge"

# shellcheck source=/dev/null
source "$src/etc/bash-completion/vduse-bridge"
# complete LINE: COMPREPLY for the last word of LINE (a trailing space: an empty word).
complete_line() {
  read -r -a COMP_WORDS <<<"$1"
  [[ $1 == *" " ]] && COMP_WORDS+=("")
  COMP_WORDS[0]=$tmp/vduse-bridge
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _vduse_bridge 2>/dev/null || true
  printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//'
}
expect() {
  local got
  got=$(complete_line "$1")
  [[ $got == "$2" ]] || fail "'$1': expected '$2', got '$got'"
}

expect "vduse-bridge st" "status"
expect "vduse-bridge re" "reload remove"
expect "vduse-bridge --con" "--config --control-socket"
expect "vduse-bridge --log-level w" "warning"
expect "vduse-bridge --timeout 5s st" "status"       # an option's value is not the command
expect "vduse-bridge status " "data1 disk0"          # the header line is not a device
expect "vduse-bridge remove d" "data1 disk0"
expect "vduse-bridge status disk0 " ""               # one device name at most
expect "vduse-bridge reload " ""                     # reload takes no argument
expect "vduse-bridge --control-socket /run/x.sock status " "data1 disk0"
grep -q -- "--control-socket /run/x.sock" "$tmp/args" || fail "list was not asked on the socket named: $(cat "$tmp/args")"
expect "vduse-bridge --control-socket=/run/y.sock status " "data1 disk0"
grep -q -- "--control-socket /run/y.sock" "$tmp/args" || fail "list was not asked on --control-socket=: $(cat "$tmp/args")"

# Every option --help names is offered after "--".
if [[ -x $binary ]]; then
  offered=" $(complete_line "vduse-bridge --") "
  for option in $("$binary" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
    [[ $offered == *" $option "* ]] || fail "--help lists $option, the completion does not offer it"
  done
else
  fail "no binary at $binary"
fi

[[ $status == 0 ]] && echo "bash completion: OK"
exit "$status"
