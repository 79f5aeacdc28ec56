#!/bin/sh
# Container health: the watcher (PID 1 after the entrypoint's exec) is tbedge, and /results is
# writable. While plans are still being built on first start, HEALTHCHECK's start period covers it.
set -eu
tr '\0' ' ' </proc/1/cmdline | grep -q 'tbedge' || { echo "tbedge is not running as PID 1"; exit 1; }
probe="/results/.healthcheck.$$"
: >"$probe" 2>/dev/null || { echo "/results is not writable"; exit 1; }
rm -f "$probe"
echo ok
