#!/usr/bin/env bash
# fio verify through the iscsi backend (tgtd in the guest, a 256 MiB LUN on tmpfs, one iSCSI
# session per queue): shared/fio-verify.sh; the server read is the LUN's backing file.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=iscsi
source "$(dirname "$0")/../shared/fio-verify.sh"
