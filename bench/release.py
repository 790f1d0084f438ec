"""The hold shape on a clock: ``quiesce thaw`` to the last FITHAW, ``quiesce freeze`` to the first FIFREEZE.

    sudo python bench/release.py [--reps 20] [--warmup 2] [--pause 0.3] [--hold-s 0.05]
                                 [--fstypes ext4,xfs,btrfs] [--compare-src DIR [--compare-name NAME]]
                                 [--no-pyc]
                                 [--json out.json] [--results PATH | --no-results]

README's hold shape is ``quiesce freeze --hold TARGETS; snapshot; quiesce
thaw``: everything ``quiesce thaw`` does before its holder's last FITHAW
is spent frozen, and everything ``quiesce freeze`` does before its first
FIFREEZE is the lead-in a writer waits through (with the pre-flush). One
run builds one loop filesystem of each ``--fstypes`` in a private mount
namespace (planned with ``quiesce.azure.planning.make_plan`` and checked to
be its own, as every ``bench/`` script does) and repeats, each time with
fresh processes (a cold interpreter; the page cache stays warm, as on a
machine that snapshots every hour):

  freeze    CLOCK_MONOTONIC just before spawning ``quiesce freeze --hold
            --json`` on the filesystems, to the first FIFREEZE's start
            (the report's ``window_start_ns``); its pre-flush is part of it
            and is reported on its own.
  release   just before spawning ``quiesce thaw --json`` to the end of the
            last FITHAW (``window_start_ns + window_ns`` of the report it
            prints): interpreter start, imports, ledger, proof, signal, and
            the holder's thaw.
  signal    the same hold released by this process sending SIGUSR1 to the
            holder (what ``quiesce thaw`` sends): the holder's share of the
            release, without any start-up.
  python    ``python -c pass`` with the same interpreter and environment,
            exec to exit: the interpreter's start, the floor of any Python
            command.

The children run with a bytecode cache (``PYTHONPYCACHEPREFIX`` in the
run's temporary directory, filled by ``--warmup`` rounds), as an installed
quiesce has (pip compiles it); ``--no-pyc`` runs them without one (every
module compiled at every start). ``--compare-src DIR`` adds the same
contenders run from another source tree (``DIR`` put first on
``PYTHONPATH``; it needs its ``quiesce/_native*.so``), so a change can be
measured before and after in one interleaved run (``--compare-name`` labels it). Every repetition idles
``--pause`` s first, and the contenders rotate.

Written to the ``release`` section of bench/RESULTS.md (``--results PATH``;
``--no-results`` skips it), with the goal: release <= 50 ms. The sandbox
thaws, unmounts and detaches everything however the run ends; a holder
left by a failure is sent SIGTERM first, and the RCU knob is left as found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import results
from results import Check
from safety import enter_private_namespace, rcu_left_as_found, refusal, sandbox_targets, sigterm_exits

from quiesce.engine.plan import Target
from quiesce.sandbox import Sandbox

TOOLS = ("losetup", "mount", "umount")
MKFS = {"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs"}
#: The goal of the benchmark issue: exec of `quiesce thaw` to the last FITHAW.
RELEASE_GOAL_MS = 50.0
#: The guardian's deadline for each hold: far past a repetition, short if one goes wrong.
HOLD_TIMEOUT_S = 20.0
LABELS = {
    "freeze": "`quiesce freeze --hold`: exec -> first FIFREEZE",
    "freeze_preflush": "  of which the pre-flush (syncfs)",
    "release": "`quiesce thaw`: exec -> last FITHAW",
    "signal": "SIGUSR1 to the holder -> last FITHAW",
    "thaw_exit": "`quiesce thaw`: exec -> exit",
    "python": "`python -c pass`: exec -> exit",
}


class Tree:
    """One source tree's commands: this checkout's installed ``quiesce``, or ``--compare-src``."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        # The console script next to the interpreter, as installed: the command a user runs.
        script = Path(sys.executable).with_name("quiesce")
        self.quiesce = [str(script)] if script.exists() else [sys.executable, "-m", "quiesce"]

    def run(self, argv: Sequence[str]) -> tuple[int, int, subprocess.CompletedProcess[str]]:
        """Spawn a command; its start stamp (just before the spawn), end stamp and result."""
        start = time.monotonic_ns()
        done = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        return start, time.monotonic_ns(), done


def _json_line(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


class Hold:
    """One ``freeze --hold`` of the sandbox's filesystems, released one way or another."""

    def __init__(self, tree: Tree, run_dir: str, mounts: Sequence[str]) -> None:
        self.tree, self.run_dir, self.mounts = tree, run_dir, list(mounts)
        self.holder: int | None = None
        self.exec_ns = 0

    def freeze(self) -> None:
        """Start the hold; remember when it was spawned and which holder keeps it."""
        argv = [*self.tree.quiesce, "freeze", "--hold", "--json", "--run-dir", self.run_dir]
        argv += ["--timeout", str(HOLD_TIMEOUT_S), *self.mounts]
        self.exec_ns, _, done = self.tree.run(argv)
        if done.returncode != 0:
            raise RuntimeError(f"quiesce freeze --hold exited {done.returncode}: {done.stderr.strip()}")
        event = _json_line(done.stdout)
        if event.get("event") != "frozen" or sorted(event["targets"]) != sorted(self.mounts):
            raise RuntimeError(f"quiesce freeze --hold: unexpected answer {event}")
        self.holder = int(event["pid"])

    def release_by_thaw(self) -> tuple[int, int, dict[str, Any]]:
        """``quiesce thaw --json``: its spawn stamp, its exit stamp and its report."""
        start, end, done = self.tree.run([*self.tree.quiesce, "thaw", "--json", "--run-dir", self.run_dir])
        self.holder = None
        if done.returncode != 0:
            raise RuntimeError(f"quiesce thaw exited {done.returncode}: {done.stdout} {done.stderr.strip()}")
        return start, end, _json_line(done.stdout)["report"]

    def release_by_signal(self) -> tuple[int, dict[str, Any]]:
        """SIGUSR1 to the holder, as `quiesce thaw` sends it; the send stamp and the report."""
        assert self.holder is not None
        pidfd = os.pidfd_open(self.holder)
        try:
            start = time.monotonic_ns()
            signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
            _wait_gone(pidfd)  # not our child: its pidfd turns readable when it is gone
        finally:
            os.close(pidfd)
        self.holder = None
        # The report the holder saved as it ended (cli/lastreport.py's file).
        with open(os.path.join(self.run_dir, "last-report.json")) as f:
            return start, json.load(f)  # type: ignore[no-any-return]

    def abandon(self) -> None:
        """After a failure: end a holder still running (it thaws), so the sandbox can unmount."""
        if self.holder is not None:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(self.holder)
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                    _wait_gone(pidfd)
                finally:
                    os.close(pidfd)
            self.holder = None


def _wait_gone(pidfd: int, timeout_s: float = 30.0) -> None:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if not poller.poll(timeout_s * 1000):
        raise RuntimeError("the holder did not end")


def check_report(report: dict[str, Any], how: str) -> tuple[int, int]:
    """The first FIFREEZE start and the last FITHAW end of a clean hold's report."""
    if not report.get("ok") or report.get("guardian_reason") is not None:
        raise RuntimeError(f"{how}: the hold did not end cleanly: {report}")
    start, window = report["window_start_ns"], report["window_ns"]
    return int(start), int(start) + int(window)


def one_round(
    trees: Sequence[Tree], run_dir: str, mounts: Sequence[str], args: argparse.Namespace, rnd: int
) -> dict[str, int]:
    """One repetition of every contender of every tree, the first one rotating; samples by key."""
    out: dict[str, int] = {}
    jobs = [(tree, kind) for tree in trees for kind in ("thaw", "signal", "python")]
    jobs = jobs[rnd % len(jobs) :] + jobs[: rnd % len(jobs)]
    for tree, kind in jobs:
        time.sleep(args.pause)
        if kind == "python":
            start, end, _ = tree.run([sys.executable, "-c", "pass"])
            out[f"{tree.name}:python"] = end - start
            continue
        hold = Hold(tree, run_dir, mounts)
        try:
            hold.freeze()
            time.sleep(args.hold_s)  # the snapshot
            if kind == "thaw":
                start, end, report = hold.release_by_thaw()
                first, last = check_report(report, "quiesce thaw")
                out[f"{tree.name}:release"] = last - start
                out[f"{tree.name}:thaw_exit"] = end - start
            else:
                start, report = hold.release_by_signal()
                first, last = check_report(report, "SIGUSR1")
                out[f"{tree.name}:signal"] = last - start
        finally:
            hold.abandon()
        out[f"{tree.name}:freeze@{kind}"] = first - hold.exec_ns
        out[f"{tree.name}:freeze_preflush@{kind}"] = int(report.get("preflush_ns") or 0)
    return out


def collect(rounds: list[dict[str, int]]) -> dict[str, list[int]]:
    """The rounds' samples by contender; the two holds' freeze figures pooled."""
    samples: dict[str, list[int]] = {}
    for r in rounds:
        for key, value in r.items():
            samples.setdefault(key.split("@")[0], []).append(value)
    return samples


def summaries(samples: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    """min / median / p90 / p99 / max of each contender (nearest-rank)."""
    return {k: results.summary(v) for k, v in samples.items()}


def rows(summary: dict[str, dict[str, int]], trees: Sequence[str]) -> list[list[str]]:
    """Table rows: one per (tree, figure)."""
    out = []
    for tree in trees:
        for name, label in LABELS.items():
            s = summary.get(f"{tree}:{name}")
            if s is None:
                continue
            cells = [results.ms(s[k], 1) for k in ("median_ns", "p90_ns", "max_ns", "min_ns")]
            out.append([tree, label, str(s["n"]), *cells])
    return out


HEADERS = ["tree", "figure", "n", "median ms", "p90 ms", "max ms", "min ms"]


def goal_checks(summary: dict[str, dict[str, int]]) -> list[Check]:
    """The release goal, for this tree: median and p90 within 50 ms."""
    s = summary["this:release"]
    return [
        Check(
            f"`quiesce thaw` of a hold, exec -> last FITHAW <= {RELEASE_GOAL_MS:g} ms",
            f"this tree, {p}",
            s[f"{p}_ns"] / 1e6,
            RELEASE_GOAL_MS,
            unit="ms",
        )
        for p in ("median", "p90")
    ]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked."""
    p = argparse.ArgumentParser(
        prog="release.py", description="The hold shape's start and release on a clock."
    )
    p.add_argument("--reps", type=int, default=20, help="measured rounds (default 20)")
    p.add_argument(
        "--warmup", type=int, default=2, help="discarded rounds first, filling the bytecode cache (2)"
    )
    p.add_argument("--pause", type=float, default=0.3, help="idle seconds before each measurement (0.3)")
    p.add_argument("--hold-s", type=float, default=0.05, help="seconds held frozen, the 'snapshot' (0.05)")
    p.add_argument("--fstypes", default="ext4,xfs,btrfs", help="one loop filesystem of each (ext4,xfs,btrfs)")
    p.add_argument(
        "--compare-src", metavar="DIR", help="also run another source tree (put first on PYTHONPATH)"
    )
    p.add_argument(
        "--compare-name", default="other", help="what the tables call --compare-src's tree (other)"
    )
    p.add_argument("--no-pyc", action="store_true", help="run the children without a bytecode cache")
    results.add_output_arguments(p)
    args = p.parse_args(argv)
    args.fstypes = [t for t in args.fstypes.split(",") if t]
    if args.reps < 1 or args.warmup < 0 or args.pause < 0 or args.hold_s < 0:
        p.error("--reps must be >= 1; --warmup, --pause and --hold-s >= 0")
    if not args.fstypes or any(t not in MKFS for t in args.fstypes):
        p.error(f"--fstypes: a comma-separated list of {', '.join(MKFS)}")
    return args


def child_env(work: str, args: argparse.Namespace) -> dict[str, str]:
    """The children's environment: this one, with a bytecode cache of their own unless --no-pyc."""
    env = dict(os.environ)
    if args.no_pyc:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = os.path.join(work, "no-pyc")  # empty: nothing cached is found
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pyc")
    return env


def build(sb: Sandbox, fstypes: Sequence[str]) -> list[Target]:
    """One filesystem of each type; the planned targets, checked to be ours."""
    return sandbox_targets([sb.add(t, name=f"{t}-release") for t in fstypes])


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Build the sandbox, run the rounds, print the table; the JSON document."""
    started = time.monotonic()
    doc: dict[str, Any] = {
        "command": results.command_line(argv),
        "machine": results.machine(),
        "config": vars(args),
    }
    m = doc["machine"]
    print(f"command: {doc['command']}")
    print(
        f"machine: nproc {m['nproc']}, {m['cpu_model']}, kernel {m['kernel']}, loadavg {m['loadavg'][0]:.2f}"
    )
    enter_private_namespace()
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="quiesce-release-"))
        # Root's alone, on a path only root can change: quiesce refuses a run directory under /tmp.
        run_dir = tempfile.mkdtemp(prefix="quiesce-bench-run-", dir="/run")
        stack.callback(shutil.rmtree, run_dir, True)
        env = child_env(work, args)
        trees = [Tree("this", env)]
        if args.compare_src:
            other = dict(env)
            other["PYTHONPATH"] = os.pathsep.join(filter(None, [args.compare_src, env.get("PYTHONPATH")]))
            if not args.no_pyc:
                other["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pyc-other")
            trees.append(Tree(args.compare_name, other))
        sb = stack.enter_context(Sandbox())
        mounts = [t.mount.mount_point for t in build(sb, args.fstypes)]
        print(f"filesystems: {', '.join(args.fstypes)} at {' '.join(mounts)}; run dir {run_dir}")
        for rnd in range(args.warmup):
            one_round(trees, run_dir, mounts, args, rnd)
            print(f"warm-up {rnd + 1}/{args.warmup}", file=sys.stderr)
        rounds = []
        for rnd in range(args.reps):
            rounds.append(one_round(trees, run_dir, mounts, args, rnd))
            print(f"round {rnd + 1}/{args.reps}", file=sys.stderr)
    samples = collect(rounds)
    summary = summaries(samples)
    doc.update(samples=samples, summary=summary, trees=[t.name for t in trees])
    doc["checks"] = goal_checks(summary)
    doc["duration_s"] = time.monotonic() - started
    print()
    print(results.table(HEADERS, rows(summary, doc["trees"]), text_columns=2))
    print()
    for check in doc["checks"]:
        print(check.line())
    return doc


def results_section(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """This run's section of bench/RESULTS.md."""
    trees = "`this` tree" + (
        f" and `{args.compare_name}`, the tree at `{args.compare_src}`" if args.compare_src else ""
    )
    pyc = "no bytecode cache (`--no-pyc`)" if args.no_pyc else "a bytecode cache, as pip installs"
    parts = [
        f"The hold shape on {', '.join(args.fstypes)} loop filesystems: `quiesce freeze --hold`; "
        f"{args.hold_s:g} s held; released by `quiesce thaw` (or by SIGUSR1 from the benchmark, the "
        f"holder's share). {trees}; fresh processes every time, with {pyc}; {args.reps} rounds after "
        f"{args.warmup} discarded, {args.pause:g} s idle before each measurement, contenders rotating. "
        "Stamps: CLOCK_MONOTONIC just before the spawn, and the first FIFREEZE start and last FITHAW "
        "end from the freeze's report.",
        results.table(HEADERS, rows(doc["summary"], doc["trees"]), text_columns=2),
    ]
    return results.section(
        "Release of a hold, and the start of a freeze", doc=doc, parts=parts, checks=doc["checks"]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root and the tools are there, run, write the results; the exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    tools = TOOLS + tuple(MKFS[t] for t in args.fstypes)
    refused = refusal("release.py", "it creates loop devices, mounts filesystems and freezes them", tools)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    with sigterm_exits(), rcu_left_as_found():
        doc = run(args, argv)
    results.write_outputs(args, "release", None if args.no_results else results_section(args, doc), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
