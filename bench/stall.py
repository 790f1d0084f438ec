"""What a writing application sees of a default cold freeze: ``quiesce bench --probe`` on ext4, xfs, btrfs.

    sudo python bench/stall.py [--reps 20] [--image-mb 512] [--json out.json]
                               [--results PATH | --no-results]

In a private mount namespace it builds one loop filesystem of each kind and
runs ``python -m quiesce bench --probe --json -n REPS`` on the three, as a
user types it: first with no option (the defaults: cold repetitions,
expedited RCU, parallel freeze and thaw), then with ``--no-expedite-rcu
--no-parallel``, the old defaults. The probe (one per filesystem) writes
4 KiB and ``fdatasync``\\ s in a loop for the whole run; each of its writes that
a window overlapped is a stall an application would have seen. Reported per
filesystem: the probe's p99 write latency over the whole run, and the
longest write of each repetition (its median and its worst). The goal:
the worst write seen in a default cold window on any of the three
filesystems <= 5 ms at p99 (nearest rank over the repetitions). Section
``stall`` of ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import results
from safety import enter_private_namespace, refusal

from quiesce.bench.stats import median, percentile
from quiesce.sandbox import Sandbox

TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs")
#: The contenders: a name and the options given to ``quiesce bench``.
CONTENDERS = (("defaults", ()), ("old defaults", ("--no-expedite-rcu", "--no-parallel")))
#: The goal: the longest write a default cold window caused, p99 over repetitions, in ms.
GOAL_MS = 5.0


def bench(run_dir: str, reps: int, options: Sequence[str], mounts: Sequence[str]) -> dict[str, Any]:
    """``quiesce bench --probe --json`` as a user runs it; its JSON document (exit 0 checked)."""
    argv = [sys.executable, "-m", "quiesce", "bench", "--json", "--probe", "-n", str(reps), *options, *mounts]
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ, QUIESCE_RUN_DIR=run_dir),
        timeout=60 + reps * 10,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"quiesce bench exited {done.returncode}: {done.stderr.strip()}")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def per_filesystem(doc: dict[str, Any], reps: int) -> list[dict[str, Any]]:
    """Per probe: its p99 write, and the longest write attributed to each repetition (ns)."""
    out = []
    for probe in doc["probes"]:
        if probe.get("error"):
            raise RuntimeError(f"probe failed: {probe['error']}")
        worst: dict[int, int] = {}
        for stall in probe["longest"]:
            if stall["rep"] is not None:
                worst[stall["rep"]] = max(worst.get(stall["rep"], 0), stall["duration_ns"])
        # A repetition with none of the probe's longest writes saw nothing longer than the shortest kept.
        floor = min((s["duration_ns"] for s in probe["longest"]), default=0)
        per_rep = [worst.get(rep, floor) for rep in range(1, reps + 1)]
        out.append(
            {
                "mount_point": probe["mount_point"],
                "iterations": probe["iterations"],
                "p99_ns": probe["stall"]["p99_ns"],
                "per_rep_ns": per_rep,
            }
        )
    return out


def measure(reps: int, image_mb: int) -> dict[str, Any]:
    """Build the three filesystems and run both contenders, interleaved order: defaults first."""
    enter_private_namespace()
    run_dir = tempfile.mkdtemp(prefix="quiesce-stall-run-", dir="/run")
    try:
        with Sandbox() as sb:
            mounts = [str(sb.add(kind, image_mb).mount_point) for kind in ("ext4", "xfs", "btrfs")]
            found: dict[str, Any] = {}
            for name, options in CONTENDERS:
                doc = bench(run_dir, reps, options, mounts)
                found[name] = {
                    "options": list(options),
                    "window_ns": [s["window_ns"] for s in doc["samples"]],
                    "idle_s": doc["options"]["idle_s"],
                    "filesystems": per_filesystem(doc, reps),
                }
            return found
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def report(found: dict[str, Any], doc: dict[str, Any]) -> tuple[str, list[results.Check]]:
    """The section's table and the goal check."""
    rows = []
    for name, got in found.items():
        for fs in got["filesystems"]:
            per = fs["per_rep_ns"]
            rows.append(
                [
                    name,
                    os.path.basename(fs["mount_point"]),
                    results.ms(median(got["window_ns"])),
                    results.ms(fs["p99_ns"]),
                    results.ms(median(per)),
                    results.ms(percentile(sorted(per), 99)),
                    str(fs["iterations"]),
                ]
            )
    idle = found["defaults"]["idle_s"]
    part = (
        f"`quiesce bench --probe -n {doc['reps']}` on ext4, xfs and btrfs loop filesystems "
        f"({doc['image_mb']} MiB images), cold ({idle:g} s idle before each repetition). "
        "Per filesystem: the probe's p99 write (4 KiB + fdatasync) over the whole run, and the "
        "longest write of each repetition (median and p99, nearest rank).\n\n"
        + results.table(
            [
                "options",
                "filesystem",
                "window median ms",
                "probe p99 write ms",
                "longest write per rep, median ms",
                "p99 ms",
                "writes",
            ],
            rows,
            text_columns=2,
        )
    )
    worst = max(percentile(sorted(fs["per_rep_ns"]), 99) for fs in found["defaults"]["filesystems"])
    check = results.Check(
        "writer stall seen by the probe, default cold, <= 5 ms p99 on 3 filesystems",
        "the longest write per repetition, p99, worst filesystem",
        worst / 1e6,
        GOAL_MS,
        unit="ms",
    )
    return part, [check]


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root with the tools; measure; print and write the section."""
    p = argparse.ArgumentParser(prog="stall.py", description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=20, help="repetitions per contender (default 20)")
    p.add_argument("--image-mb", type=int, default=512, help="each loop image's size (default 512)")
    results.add_output_arguments(p)
    args = p.parse_args(argv)
    refused = refusal("stall.py", "it creates loop devices, mounts them and freezes them", TOOLS)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    started = time.monotonic()
    doc: dict[str, Any] = {
        "machine": results.machine(),
        "command": results.command_line(sys.argv if argv is None else ["bench/stall.py", *argv]),
        "reps": args.reps,
        "image_mb": args.image_mb,
    }
    try:
        found = measure(args.reps, args.image_mb)
    except (RuntimeError, subprocess.SubprocessError) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    doc["duration_s"] = time.monotonic() - started
    doc["contenders"] = found
    part, checks = report(found, doc)
    print(part)
    for c in checks:
        print(c.line())
    title = "stall.py: what a writing application sees of a default cold freeze"
    body = results.section(title, doc=doc, parts=[part], checks=checks)
    results.write_outputs(args, "stall", body, {**doc, "checks": checks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
