#!/usr/bin/env bash
# The LUN grows and shrinks under a live disk, tgtd restarted each time (it reads a LUN's size
# when it makes the LUN, and never announces a change with CAPACITY DATA HAS CHANGED): the
# sessions log in again and find the same LUN (identity, block size) with another size:
# shared/resize.sh.
# shellcheck source-path=SCRIPTDIR/../shared
BACKEND=iscsi
source "$(dirname "$0")/../shared/resize.sh"
