#!/usr/bin/env bash
# nbdkit goes away under load and comes back (unix socket): shared/server-restart.sh, both parts
# (an outage shorter than reconnect-timeout under fio verify; one longer: EIO, then recovery).
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=nbd
source "$(dirname "$0")/../shared/server-restart.sh"
