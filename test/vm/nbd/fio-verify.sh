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
fio_verify_run "nbd tcp"
