#!/usr/bin/env bash
# Smoke run of every benchmark in bench/ with tiny settings, so they cannot rot:
# each must run to the end; no figure is asserted (this is not a measurement).
# Runs as root (loop devices, mounts in a private namespace, FIFREEZE on the
# benchmarks' own loop filesystems only, cgroups). A benchmark whose tool is
# missing is skipped with a note, never failed. Exit status: 0 when nothing
# failed. Each script's output goes to a log, shown only when it fails.
#
#     sudo bench/smoke.sh            (PYTHON=/path/to/python to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python || command -v python3)}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
RCU=/sys/kernel/rcu_expedited

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/smoke.sh: must run as root (loop devices, mounts, FIFREEZE, cgroups)" >&2
    exit 2
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/quiesce-smoke.XXXXXX")
trap 'rm -rf "$logs"' EXIT
failed=0
rcu_before=$(cat "$RCU" 2>/dev/null || echo none)

# missing TOOL...: prints the tools that are not on PATH.
missing() {
    local t out=()
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || out+=("$t")
    done
    echo "${out[*]}"
}

# step NAME TOOLS -- COMMAND...: run COMMAND unless a tool is missing; log its output.
step() {
    local name=$1 tools=() lack start rc
    shift
    while [ "$1" != "--" ]; do tools+=("$1"); shift; done
    shift
    lack=$(missing "${tools[@]}")
    if [ -n "$lack" ]; then
        echo "skip  $name (missing: $lack)"
        return 0
    fi
    start=$SECONDS
    timeout --kill-after=30 "$STEP_TIMEOUT" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "ok    $name ($((SECONDS - start)) s)"
    else
        echo "FAIL  $name (exit $rc after $((SECONDS - start)) s): $*"
        tail -n 40 "$logs/$name.log" | sed 's/^/      /'
        failed=1
    fi
}

loop_tools=(cc losetup mount umount mkfs.ext4)
if [ ! -e /dev/loop-control ]; then
    echo "note: /dev/loop-control is missing (no loop driver): the freezing benchmarks are skipped"
    loop_tools+=(loop-control)
fi
if [ ! -x "${QEMU_GA:-}" ] && ! command -v qemu-ga >/dev/null 2>&1; then
    echo "note: qemu-ga is not installed (nor \$QEMU_GA): compare_window.py runs without the QEMU guest agent contender"
fi

# The scripts' pictures go to the log directory (discarded), when matplotlib is installed.
plot_args=()
if "$PYTHON" -c "import matplotlib" >/dev/null 2>&1; then
    plot_args=(--plot "$logs")
else
    echo "note: matplotlib is not installed: no pictures (pip install 'quiesce[plot]')"
fi

step compare_window "${loop_tools[@]}" mkfs.xfs mkfs.btrfs fsfreeze -- \
    "$PYTHON" bench/compare_window.py --reps 2 --warmup 0 --cold-reps 1 --cold-pause 0.1 \
    --dirty-reps 1 --dirty-warmup 0 --dirty-mb 8 --image-mb 300 --no-results "${plot_args[@]}"

# quiesce bench as a user runs it: cold by default, --warm, --plot (when matplotlib is installed).
step quiesce-bench "${loop_tools[@]}" -- \
    "$PYTHON" bench/cli_smoke.py --reps 2

step supervise cc -- \
    "$PYTHON" bench/supervise.py --reps 10 --poll-reps 1 --random-reps 2 --poll-s 0.05 \
    --timeout-reps 2 --timeout-poll-reps 1 --timeout-ms 50 --grace-ms 20 \
    --long-timeout-reps 1 --long-timeout-ms 100 --script-reps 5 --no-results

step scaling "${loop_tools[@]}" -- \
    "$PYTHON" bench/scaling.py --ns 1,4 --reps 1 --warmup 0 --cold-reps 1 --cold-pause 0.1 --no-results "${plot_args[@]}"

# PostgreSQL comes from tests/db/install.sh (CI runs it before this script).
step pgbench "${loop_tools[@]}" mkfs.xfs fsfreeze pgbench runuser /usr/lib/postgresql/15/bin/initdb -- \
    "$PYTHON" bench/pgbench.py --scale 1 --freezes 1 --spacing 1.5 --warmup 1 --no-results

step fleet "${loop_tools[@]}" etcd nsenter mkfs.xfs -- \
    "$PYTHON" bench/fleet.py --agents 2 --cycles 1 --single 1 --sequential 1 --perf-cycles 1 --rcu off --no-out

step etcd_request etcd -- \
    "$PYTHON" bench/etcd_request.py --requests 20 --events 20 --event-rounds 1
step guardian_cost -- \
    "$PYTHON" bench/guardian_cost.py --reps 2 --extra-mib 0,8

step stall "${loop_tools[@]}" mkfs.xfs mkfs.btrfs -- \
    "$PYTHON" bench/stall.py --reps 1 --image-mb 300 --no-results
step release "${loop_tools[@]}" -- \
    "$PYTHON" bench/release.py --reps 1 --warmup 1 --pause 0.05 --hold-s 0.01 --fstypes ext4 --no-results

if [ "$(nproc)" -ge 2 ]; then
    step rcu_cost "${loop_tools[@]}" -- \
        "$PYTHON" bench/rcu_cost.py --reps 1 --pause 0.05 --fstypes ext4 --no-results
else
    echo "skip  rcu_cost (one CPU: the spinner needs a CPU of its own)"
fi

if "$PYTHON" -c "import pytest_benchmark" >/dev/null 2>&1; then
    step pytest-bench "${loop_tools[@]}" -- \
        "$PYTHON" -m pytest bench -q --benchmark-disable -p no:cacheprovider
else
    echo "skip  pytest-bench (missing: the pytest-benchmark package)"
fi

rcu_after=$(cat "$RCU" 2>/dev/null || echo none)
if [ "$rcu_before" != "$rcu_after" ]; then
    echo "FAIL  $RCU was $rcu_before before the benchmarks and is $rcu_after after"
    failed=1
fi
exit "$failed"
