"""``quiesce bench`` as a user runs it, on two loop filesystems of its own: not a measurement.

    sudo python bench/cli_smoke.py [--reps 2]

For ``bench/smoke.sh``: in a private mount namespace it builds two small
ext4 loop filesystems and runs ``python -m quiesce bench`` on them three
times: with the default options (cold: the default idle before each
repetition), with ``--warm``, and, when matplotlib is installed, with
``--plot`` to a temporary ``.svg``. Each must exit 0 with every repetition
thawed and the mode it asked for in its JSON; the picture must be an SVG.
Exit status 0 when all of that held, 1 otherwise, 2 when refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from safety import enter_private_namespace, refusal

from quiesce.bench.runner import DEFAULT_IDLE_S
from quiesce.sandbox import Sandbox

TOOLS = ("losetup", "mount", "umount", "mkfs.ext4")


def bench(run_dir: str, *args: str) -> dict[str, Any]:
    """``quiesce bench --json ARGS`` with a private run directory; its JSON document (exit 0 checked)."""
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "bench", "--json", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ, QUIESCE_RUN_DIR=run_dir),
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"quiesce bench {' '.join(args)} exited {done.returncode}: {done.stderr}")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def check(doc: dict[str, Any], mode: str, idle_s: float, reps: int) -> None:
    """The run completed, everything thawed, in the mode asked for."""
    got = (doc["options"]["mode"], doc["options"]["idle_s"], doc["completed"])
    if got != (mode, idle_s, reps):
        raise RuntimeError(f"expected mode {mode}, idle {idle_s} s, {reps} reps; got {got}")
    states = {f["state"] for s in doc["samples"] for f in s["filesystems"]}
    if states != {"thawed"}:
        raise RuntimeError(f"not every filesystem ended thawed: {states}")


def run(reps: int) -> None:
    """Build the filesystems, run the three benches, check them."""
    enter_private_namespace()
    run_dir = tempfile.mkdtemp(prefix="quiesce-smoke-run-", dir="/run")
    # Run as root, --plot writes only into a directory no one else can change: not under /tmp.
    work = tempfile.mkdtemp(prefix="quiesce-smoke-plot-", dir="/run")
    try:
        with Sandbox() as sb:
            mounts = [str(sb.add("ext4", 32, name=f"ext4-{i}").mount_point) for i in range(2)]
            n = str(reps)
            doc = bench(run_dir, "-n", n, *mounts)
            check(doc, "cold", DEFAULT_IDLE_S, reps)
            print(f"ok  cold by default: {reps} reps, {DEFAULT_IDLE_S:g} s idle before each")
            doc = bench(run_dir, "-n", n, "--warm", *mounts)
            check(doc, "warm", 0, reps)
            print(f"ok  --warm: {reps} reps back to back")
            if importlib.util.find_spec("matplotlib") is None:
                print("skip --plot (matplotlib is not installed: pip install 'quiesce[plot]')")
                return
            path = os.path.join(work, "bench.svg")
            doc = bench(run_dir, "-n", n, "--warm", "--plot", path, *mounts)
            check(doc, "warm", 0, reps)
            root = ET.parse(path).getroot()
            if root.tag != "{http://www.w3.org/2000/svg}svg" or not doc["plot"]["written"]:
                raise RuntimeError(f"--plot wrote no SVG: root {root.tag}, {doc['plot']}")
            print(f"ok  --plot: an SVG of {os.path.getsize(path)} bytes")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root and the tools are there; run; the exit status."""
    p = argparse.ArgumentParser(prog="cli_smoke.py", description="quiesce bench, cold, warm and --plot.")
    p.add_argument("--reps", type=int, default=2, help="repetitions per run (default 2)")
    args = p.parse_args(argv)
    refused = refusal("cli_smoke.py", "it creates loop devices, mounts them and freezes them", TOOLS)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    try:
        run(args.reps)
    except (RuntimeError, subprocess.SubprocessError, ET.ParseError) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
