#!/usr/bin/env bash
# ext4 through the nbd backend (nbdkit's memory plugin on a unix socket): shared/filesystem.sh.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=nbd
# shellcheck disable=SC2034 # read by lib/nbd.sh
nbd_be_plugin=memory # nothing here restarts or resizes the server
source "$(dirname "$0")/../shared/filesystem.sh"
