#!/usr/bin/env bash
# tgtd goes away under load and comes back on the same port with the same target and LUN:
# shared/server-restart.sh (the daemon logs the lost sessions and the new logins).
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=iscsi
source "$(dirname "$0")/../shared/server-restart.sh"
