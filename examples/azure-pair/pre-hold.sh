#!/bin/bash
# Azure-style pre-script that keeps a session hook alive across the snapshot, for Azure
# Backup's own agent (or any runner that leaves a pre-script's background processes alone).
#
#   preScriptLocation  /etc/quiesce/scripts/pre-hold.sh
#   preScriptParams    ["/etc/quiesce/hooks.d/50-postgresql-backup.session"]
#   postScriptLocation /etc/quiesce/scripts/post-hold.sh
#   postScriptParams   ["/etc/quiesce/hooks.d/50-postgresql-backup.session"]
#
# It starts the hook (argument `session`) in the background, in its own session, with its
# stdin on a FIFO, and returns once the hook reports that it holds the database (or fails).
# post-hold.sh writes a line to the FIFO: the hook releases and ends. If post-hold.sh never
# runs, the hook's own HOLD_SECONDS ends the hold, and the database server drops the
# session soon after even if the hook is stuck (see the database's README).
#
# quiesce itself ends what a pre-script leaves running as soon as it exits, so there this
# pre-script refuses to run: give quiesce the hook in its hook directory instead.
set -uo pipefail

READY_SECONDS=${READY_SECONDS:-60}   # HOLD_STATE_DIR (default /run/quiesce-hold): where holds keep their state

die() { printf 'pre-hold: %s\n' "$*" >&2; exit 1; }

hook=${1:-}
[ -n "$hook" ] || die "usage: $0 /path/to/HOOK.session"
if [ -n "${QUIESCE_PHASE:-}" ]; then
    die "quiesce ends a pre-script's processes when it exits, so no hold can last past it:" \
        "install $hook in quiesce's hook directory (hookDirectory) instead"
fi
read -r owner mode type < <(stat -c '%u %a %F' -- "$hook") || die "cannot stat $hook"
if [ "$owner" != 0 ] || (( (8#$mode & 8#022) != 0 )) || [ "$type" != "regular file" ]; then
    die "$hook must be a regular file owned by root and not group/other-writable"
fi

name=$(basename -- "$hook")
state=${HOLD_STATE_DIR:-/run/quiesce-hold}/${name%.session}
if [ -e "$state/pid" ] && [ ! -e "$state/status" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    die "a hold of $name is already running (pid $(cat "$state/pid"), $state)"
fi
rm -rf -- "$state"
mkdir -p -- "${state%/*}" || die "cannot create ${state%/*}"
mkdir -m 700 -- "$state" || die "cannot create $state"
mkfifo -m 600 -- "$state/release" || die "cannot create $state/release"

# The FIFO is opened read-write by the hook's shell so it never reads EOF before the
# post-script's line; its status lands in $state/status when it ends.
# shellcheck disable=SC2016
READY_FILE=$state/ready setsid bash -c '"$1" session <>"$2/release" >"$2/log" 2>&1; echo $? >"$2/status"' \
    hold "$hook" "$state" </dev/null >/dev/null 2>&1 &
echo $! >"$state/pid"

deadline=$((SECONDS + READY_SECONDS))
while [ ! -e "$state/ready" ]; do
    if [ -e "$state/status" ] || ((SECONDS >= deadline)); then
        kill -TERM -- "-$(cat "$state/pid")" 2>/dev/null
        cat -- "$state/log" >&2
        die "$name did not get ready (status $(cat "$state/status" 2>/dev/null || echo "none after ${READY_SECONDS} s"))"
    fi
    sleep 0.05
done
cat -- "$state/log"
printf 'pre-hold: %s holds (pid %s); post-hold.sh releases it\n' "$name" "$(cat "$state/pid")"
