#!/usr/bin/env bash
# tgtd goes away under load and comes back on the same port with the same target and LUN:
# shared/server-restart.sh (the daemon logs the lost sessions and the new logins). Its second part
# (an outage past reconnect-timeout: EIO, then recovery) is left out here: it would add VM time to
# vm.iscsi, and the CI suite is at its time limit.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=iscsi
RESTART_PAST_TIMEOUT=0
source "$(dirname "$0")/../shared/server-restart.sh"
