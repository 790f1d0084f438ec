#!/bin/bash
# Azure-style post-script: releases the hold that pre-hold.sh started, waits for the hook
# to finish (a PostgreSQL hook writes its backup label then), and reports its status.
# Exits 1 if the hold ended before this release: the database was not held until the
# snapshot was over. See pre-hold.sh for the config.
set -uo pipefail

WAIT_SECONDS=${WAIT_SECONDS:-60}

die() { printf 'post-hold: %s\n' "$*" >&2; exit 1; }

hook=${1:-}
[ -n "$hook" ] || die "usage: $0 /path/to/HOOK.session"
name=$(basename -- "$hook")
state=${HOLD_STATE_DIR:-/run/quiesce-hold}/${name%.session}

if [ ! -e "$state/pid" ]; then
    printf 'post-hold: no hold of %s to release (the pre-script did not start one)\n' "$name"
    exit 0
fi
pid=$(cat "$state/pid")
rm -f -- "$state/pid"
if [ -e "$state/status" ]; then
    cat -- "$state/log" >&2
    die "$name ended (status $(cat "$state/status")) before its release: the database was not held until the snapshot was over"
fi

# Read-write, so opening never blocks, even if the hook has just gone.
{ printf 'release\n' >&3; } 3<>"$state/release"
deadline=$((SECONDS + WAIT_SECONDS))
while [ ! -e "$state/status" ]; do
    if ((SECONDS >= deadline)); then
        kill -KILL -- "-$pid" 2>/dev/null
        cat -- "$state/log" >&2
        die "$name did not finish within ${WAIT_SECONDS} s of its release; killed"
    fi
    sleep 0.05
done
cat -- "$state/log"
status=$(cat "$state/status")
[ "$status" = 0 ] || die "$name failed at its release (status $status)"
