#!/usr/bin/env bash
# ext4 through the iscsi backend (tgtd in the guest, LUN on tmpfs): shared/filesystem.sh.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=iscsi
source "$(dirname "$0")/../shared/filesystem.sh"
