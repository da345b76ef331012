#!/usr/bin/env bash
# fio verify through the nbd backend, over a unix socket (shared/fio-verify.sh) and then the same
# again over TCP on 127.0.0.1: the server read that checks the data end to end is nbdcopy over NBD.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=nbd
# shellcheck disable=SC2034 # read by lib/nbd.sh
nbd_be_plugin=memory # nothing here restarts or resizes the server
source "$(dirname "$0")/../shared/fio-verify.sh"
# shellcheck disable=SC2034 # read by lib/nbd.sh, which lib/backend.sh sources by name
nbd_be_transport=tcp
# Over TCP two of the four runs (4k writes, 64k mixed): the transport is what differs, and the
# full matrix twice put vm.nbd past its time (600 s next to vm.vmm).
be_fio_runs=("randwrite 4k" "randrw 64k")
fio_verify_run "nbd tcp"
