#!/usr/bin/env bash
# The export grows and shrinks under a live disk, nbdkit restarted each time: shared/resize.sh.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=nbd
source "$(dirname "$0")/../shared/resize.sh"
