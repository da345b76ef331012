#!/usr/bin/env bash
# Every manual page in man/ renders without a warning from man/groff (`man --warnings -l`).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v man >/dev/null || { echo "VB_SKIP: man (man-db) not installed"; exit 77; }
status=0
for page in man/*.[1-8]; do
  out=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) || { echo "FAIL: $page: man failed: $out"; status=1; continue; }
  if [ -n "$out" ]; then
    echo "FAIL: $page: $out"
    status=1
  else
    echo "ok: $page renders without warnings"
  fi
done
exit $status
