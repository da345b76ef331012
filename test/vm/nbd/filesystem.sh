#!/usr/bin/env bash
# ext4 through the nbd backend (nbdkit's file plugin on a unix socket): shared/filesystem.sh.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=nbd
source "$(dirname "$0")/../shared/filesystem.sh"
