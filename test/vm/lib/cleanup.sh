# shellcheck shell=bash
# One cleanup stack for a test script and every library it sources (sourced, not run; a second
# source is a no-op). A library that starts something pushes the step that undoes it; nothing else
# sets an EXIT, INT or TERM trap (scripts/lint shellcheck checks that).
#
#   on_cleanup CMD [ARG...]   push CMD ARG... (words, not a string to eval); at exit the steps run
#                             last pushed first
#
# Last pushed, first run: so a library is sourced after the ones whose things must outlive its own
# (lib/nbd.sh after lib/daemon.sh: the daemon stops before nbdkit, $work goes last), and a script
# pushes its steps after sourcing the libraries (they run first).
#
# The steps run once: at EXIT, and on SIGINT / SIGTERM, which exit 130 / 143 first. They run in the
# script's own shell, so a step can `wait` for the script's children, with errexit and nounset off.
# A step that fails is reported on stderr and the next step still runs. Inside a step, exit (and so
# fail or skip) does not end the shell: it returns with its status, the step counts as failed with
# it, and the rest of that step runs on as after any failing command (so a loop that a fail
# should end must also return, as lib/daemon.sh's wait_for does). The script's exit status is
# kept: a failing step never turns a pass into a failure or a failure into a pass. A signal that
# arrives during the steps is reported and does not stop them; the script then exits with its own
# status, or the signal's if it had passed.
[ -z "${cleanup_sh_sourced:-}" ] || return 0
cleanup_sh_sourced=1
cleanup_steps=() cleanup_running=0 cleanup_status=0 cleanup_step_exit=''
# A child forked for `cmd &` holds these traps until it execs: signalled in between (a quick kill of a
# background job), it must exit, not run the script's steps. The shell that owns the stack does.
cleanup_owner=$BASHPID

on_cleanup() {
  [ $# -gt 0 ] || { echo "on_cleanup: no command given" >&2 && return 2; }
  cleanup_steps+=("$(printf '%q ' "$@")")
}

# The steps, last first. A step is popped before it runs, so none runs twice.
cleanup_run_steps() {
  local step rc
  while [ ${#cleanup_steps[@]} -gt 0 ]; do
    step=${cleanup_steps[-1]}
    unset 'cleanup_steps[-1]'
    cleanup_step_exit='' rc=0
    eval "$step" || rc=$?
    [ "${cleanup_step_exit:-0}" -eq 0 ] || rc=$cleanup_step_exit
    [ "$rc" -eq 0 ] || echo "cleanup: step '${step% }' failed (status $rc); the next steps still run" >&2
  done
}

# shellcheck disable=SC2317 # run from the EXIT trap
cleanup_on_exit() {
  [ "$BASHPID" = "$cleanup_owner" ] || return 0
  cleanup_status=$1
  cleanup_running=1
  set +eu
  # Inside a trap the builtin would end the shell and skip the remaining steps.
  exit() {
    local status=${1:-$?}
    [ "${cleanup_step_exit:-0}" -ne 0 ] || cleanup_step_exit=$status
    return "$status"
  }
  cleanup_run_steps
  unset -f exit
  builtin exit "$cleanup_status"
}

cleanup_on_signal() {
  if [ "$BASHPID" != "$cleanup_owner" ]; then
    trap - EXIT
    builtin exit "$2"
  fi
  if [ "$cleanup_running" = 1 ]; then
    echo "cleanup: $1 during the cleanup steps; they go on" >&2
    [ "$cleanup_status" -ne 0 ] || cleanup_status=$2
    return 0
  fi
  exit "$2" # the EXIT trap runs the steps with this status
}

trap 'cleanup_on_exit $?' EXIT
trap 'cleanup_on_signal SIGINT 130' INT
trap 'cleanup_on_signal SIGTERM 143' TERM
