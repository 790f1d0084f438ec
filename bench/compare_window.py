"""Side by side: how long each way of freezing keeps ext4 + xfs + btrfs frozen.

    sudo python bench/compare_window.py [--reps 100] [--cold-reps 15] [--dirty-reps 5]
                                        [--dirty-warmup 1] [--dirty-mb 150] [--no-qemu-ga]
                                        [--json out.json] [--results PATH | --no-results]

One run builds three loop-mounted filesystems (ext4, xfs, btrfs) in a private
mount namespace and measures, interleaved round-robin within every
repetition (the starting contender rotates), so that drift on a noisy shared
VM hits every contender alike.

The contenders on clean filesystems:
  floor        bench/floor.c: FIFREEZE all, FITHAW all in reverse, two
               clock_gettime calls around them; no guardian, nothing else.
  engine       quiesce.engine.native.Session.cycle() with the guardian armed: the
               production path minus Python policy. Window from the native
               per-filesystem timestamps.
  engine_par   the same after Session.set_parallel(groups), groups from
               quiesce.engine.order.parallel_groups: independent filesystems are
               frozen at once, one thread each.
  freeze_path  quiesce.engine.freeze.Freeze with the default FreezeOptions (what
               `quiesce freeze` and `quiesce run` do with no flags: expedited
               RCU and parallel freeze and thaw): lock, ledger, guardian,
               pre-flush (prepare), then cycle(); window from its report.
  freeze_path_plain  the same with expedite_rcu=False, parallel=False (the
               --no-expedite-rcu --no-parallel opt-outs).
  fsfreeze     util-linux `fsfreeze -f` on each, then `fsfreeze -u` on each:
               wall time of the six commands, process spawns included.
  qemu_ga      the QEMU guest agent, started as a child of this process:
               `guest-fsfreeze-freeze-list` of the three mounts, then
               `guest-fsfreeze-thaw`; wall time around the two requests over
               its unix socket, JSON round trips included (see bench/qga.py
               for what it may be sent and why).

The phases:
  clean, warm  freezes back to back (``--reps``): the engine's overhead over
               the floor, after ``--warmup`` discarded rounds.
  clean, cold  ``--cold-pause`` seconds idle before each measurement
               (``--cold-reps``): what an occasional freeze pays, an RCU grace
               period per filesystem included; also the floor and the engine
               with /sys/kernel/rcu_expedited set for the window (floor_rcu:
               the physical limit of a cold freeze, the default's goal).
  dirty        ``--dirty-mb`` MiB written to each filesystem, no fsync, just
               before each measurement (``--dirty-reps``, after
               ``--dirty-warmup`` discarded rounds): floor, engine
               without pre-flush, engine with pre-flush (the parallel syncfs()
               is reported on its own: it runs before the window), with
               pre-flush + parallel freeze, with pre-flush + parallel +
               expedited RCU, qemu_ga. The goal compares each to the
               sequential engine without pre-flush.

The tables, the goal checks and the machine go to the ``compare_window``
section of bench/RESULTS.md (``--results PATH``; ``--no-results`` skips it).

The window is the first FIFREEZE start to the last FITHAW end, in
CLOCK_MONOTONIC nanoseconds. Only filesystems this script created are ever
frozen, and the sandbox thaws, unmounts and detaches them however the run
ends.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import results
from floorprog import compile_command, compile_floor, run_floor
from qga import GuestAgent, agent_binary, agent_version
from results import Check
from safety import (
    claim_knob,
    enter_private_namespace,
    rcu_left_as_found,
    refusal,
    sandbox_targets,
    sigterm_exits,
)

from quiesce.bench.stats import median
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.mountfd import open_target
from quiesce.engine.native import FsRecord, Session, now_ns
from quiesce.engine.order import parallel_groups
from quiesce.engine.plan import Target
from quiesce.engine.rcu import RCU_EXPEDITED
from quiesce.sandbox import Sandbox

FSTYPES = ("ext4", "xfs", "btrfs")
#: Generous guardian limits: a dirty freeze of three filesystems takes seconds.
GUARD_TIMEOUT_NS = 60_000_000_000
STEP_TIMEOUT_NS = 30_000_000_000
DIRTY_PREFIX = "bench-dirty-"
CHUNK = 1 << 20
TOOLS = ("cc", "fsfreeze", "losetup", "mount", "umount", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs")

Sample = dict[str, Any]


# ---------------------------------------------------------------------------
# the machine and the statistics


def machine() -> dict[str, Any]:
    """What the figures were measured on, with the fsfreeze and qemu-ga versions."""
    fsfreeze = subprocess.run(
        ["fsfreeze", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    agent = agent_binary()
    return {
        **results.machine(),
        "fsfreeze": fsfreeze,
        "qemu_ga": agent_version(agent) if agent else None,
    }


def cell(ns: float) -> str:
    """Nanoseconds as milliseconds, in a fixed-width table cell."""
    return f"{results.ms(ns):>10}"


# ---------------------------------------------------------------------------
# the contenders


@dataclass
class Bench:
    """The sandbox's filesystems, opened once, and one method per contender."""

    targets: Sequence[Target]
    floor_bin: Path
    run_dir: str
    dirty_mb: int
    agent: GuestAgent | None = None
    fds: list[int] = field(default_factory=list)
    fsfreeze: str = "fsfreeze"
    _dirty_serial: int = 0

    def __post_init__(self) -> None:
        self.mounts = [t.mount.mount_point for t in self.targets]
        self.fsfreeze = shutil.which("fsfreeze") or "fsfreeze"
        self._libc = ctypes.CDLL(None, use_errno=True)
        # The parallel freeze's order and groups, as the production path gets them.
        ordered, self.groups = parallel_groups(self.targets)
        index = {mp: i for i, mp in enumerate(self.mounts)}
        self.parallel_order = [index[t.mount.mount_point] for t in ordered]

    def open(self) -> None:
        """Open every target once; the engine's sessions share these fds."""
        for target in self.targets:
            self.fds.append(open_target(target))

    def close(self) -> None:
        """Close the fds (before the sandbox unmounts)."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    # -- the contenders ---------------------------------------------------

    def floor(self) -> Sample:
        """One window of the C floor (one process per window; its start is outside)."""
        return {"window_ns": run_floor(self.floor_bin, 1, self.mounts)[0]}

    def first_freezes(self) -> dict[str, int]:
        """The floor's window on each filesystem alone: the first freeze after mkfs."""
        return {mp: run_floor(self.floor_bin, 1, [mp])[0] for mp in self.mounts}

    def engine(self, preflush: bool = False, parallel: bool = False, rcu: bool = False) -> Sample:
        """A fresh session, guardian armed, optional pre-flush, then one cycle().

        ``parallel``: Session.set_parallel with quiesce.engine.order.parallel_groups.
        ``rcu``: /sys/kernel/rcu_expedited set right before the cycle (after
        the pre-flush) and restored right after, as the Freeze path does; the
        guardian restores it should this process die in between.
        """
        order = self.parallel_order if parallel else list(range(len(self.fds)))
        knob = claim_knob() if rcu else None
        try:
            s = Session([self.fds[i] for i in order], [self.mounts[i] for i in order])
            try:
                if parallel:
                    s.set_parallel(self.groups)
                if knob is not None:
                    s.restore_on_orphan(knob.fd, knob.original)
                s.arm(GUARD_TIMEOUT_NS, STEP_TIMEOUT_NS)
                try:
                    if preflush:
                        s.preflush()
                    if knob is not None:
                        knob.enable()
                    t0 = now_ns()
                    try:
                        s.cycle()
                        t1 = now_ns()
                    finally:
                        if knob is not None:
                            knob.restore()
                finally:
                    s.disarm()
                records, guardian = s.records(), s.guardian()
            finally:
                s.close()
        finally:
            if knob is not None:
                knob.close()
        # Back in the targets' order, whatever order the session froze in.
        by_target: list[FsRecord | None] = [None] * len(order)
        for rec, i in zip(records, order, strict=True):
            by_target[i] = rec
        recs = [r for r in by_target if r is not None]
        states = [r.state for r in recs]
        if states != ["thawed"] * len(self.fds) or guardian.reason is not None:
            raise RuntimeError(f"engine cycle ended badly: {states}, guardian {guardian}")
        sample: Sample = {
            "window_ns": max(r.thaw_end_ns for r in recs) - min(r.freeze_start_ns for r in recs),
            "call_ns": t1 - t0,
            "freeze_ns": [r.freeze_end_ns - r.freeze_start_ns for r in recs],
            "thaw_ns": [r.thaw_end_ns - r.thaw_start_ns for r in recs],
            "freeze_at_ns": [r.freeze_start_ns - min(x.freeze_start_ns for x in recs) for r in recs],
        }
        if preflush:
            sample["preflush_ns"] = max(r.flush_end_ns for r in recs) - min(r.flush_start_ns for r in recs)
            errs = [r.flush_errno for r in recs if r.flush_errno]
            if errs:
                sample["preflush_errnos"] = errs
        return sample

    def floor_rcu(self) -> Sample:
        """The floor with /sys/kernel/rcu_expedited set around its process, then restored."""
        knob = claim_knob()
        try:
            knob.enable()
            return self.floor()
        finally:
            knob.close()

    def freeze_path(self, **options: bool) -> Sample:
        """The production path: Freeze.prepare() (lock, ledger, guardian, pre-flush), cycle().

        ``options`` (expedite_rcu, parallel) override the defaults; none: the defaults.
        """
        opts = FreezeOptions(timeout_s=GUARD_TIMEOUT_NS / 1e9, run_dir=self.run_dir, **options)
        with Freeze(self.targets, opts) as f:
            f.prepare()
            f.cycle()
        report = f.report
        if not report.ok or report.window_ns is None:
            raise RuntimeError(f"Freeze ended badly: {report.to_dict()}")
        by_mount = {t.mount_point: t for t in report.targets}
        per_fs = [by_mount[mp] for mp in self.mounts]
        if options.get("expedite_rcu", True) and os.path.exists(RCU_EXPEDITED) and not report.rcu_expedited:
            raise RuntimeError(f"the Freeze path did not expedite RCU: {report.warnings}")
        return {
            "window_ns": report.window_ns,
            "preflush_ns": report.preflush_ns,
            "freeze_ns": [t.freeze_ns for t in per_fs],
            "thaw_ns": [t.thaw_ns for t in per_fs],
            # Every filesystem's stamps, for the timeline picture.
            "filesystems": report.to_dict()["targets"],
            "freeze_at_ns": [t.freeze_at_ns for t in per_fs],
            "thaw_at_ns": [t.thaw_at_ns for t in per_fs],
        }

    def fsfreeze_cli(self) -> Sample:
        """`fsfreeze -f` on each, `fsfreeze -u` on each in reverse: wall time, spawns included."""
        frozen: list[str] = []
        t0 = time.monotonic_ns()
        try:
            for mp in self.mounts:
                subprocess.run([self.fsfreeze, "-f", mp], check=True)
                frozen.append(mp)
        except BaseException:
            for mp in reversed(frozen):
                subprocess.run([self.fsfreeze, "-u", mp], check=False)
            raise
        for mp in reversed(self.mounts):
            subprocess.run([self.fsfreeze, "-u", mp], check=True)
        return {"window_ns": time.monotonic_ns() - t0}

    def qemu_ga(self) -> Sample:
        """The guest agent: freeze-list of the three mounts, then thaw; both round trips timed."""
        if self.agent is None:
            raise RuntimeError("qemu-ga was not started")
        return dict(self.agent.window(self.mounts))

    # -- dirtying ---------------------------------------------------------

    def settle(self) -> None:
        """syncfs() every target: nothing dirty left on them."""
        for fd, mp in zip(self.fds, self.mounts, strict=True):
            if self._libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}", mp)

    def make_dirty(self) -> Sample:
        """Delete the last rep's files, settle, then write ``dirty_mb`` MiB to each, no fsync.

        Runs in this process before anything is frozen; every fd is closed
        before the measurement starts.
        """
        for mp in self.mounts:
            for name in os.listdir(mp):
                if name.startswith(DIRTY_PREFIX):
                    os.unlink(os.path.join(mp, name))
        self.settle()
        block = os.urandom(CHUNK)
        self._dirty_serial += 1
        t0 = time.monotonic_ns()
        for mp in self.mounts:
            path = os.path.join(mp, f"{DIRTY_PREFIX}{self._dirty_serial}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for _ in range(self.dirty_mb):
                    os.write(fd, block)
            finally:
                os.close(fd)
        return {"write_ns": time.monotonic_ns() - t0, "meminfo_dirty_kb": meminfo_dirty_kb()}


def meminfo_dirty_kb() -> int:
    """Machine-wide Dirty + Writeback from /proc/meminfo, in kB."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Dirty", "Writeback"):
                total += int(rest.split()[0])
    return total


# ---------------------------------------------------------------------------
# running the phases


Contender = tuple[str, str, Callable[[], Sample]]


def interleaved(
    contenders: Sequence[Contender],
    reps: int,
    before_each: Callable[[], Sample] | None = None,
    progress: str = "",
) -> dict[str, list[Sample]]:
    """``reps`` rounds, each running every contender once, starting one further along."""
    progress = progress if sys.stderr.isatty() else ""
    samples: dict[str, list[Sample]] = {key: [] for key, _, _ in contenders}
    k = len(contenders)
    for rep in range(reps):
        order = [contenders[(rep + i) % k] for i in range(k)]
        for key, _, run in order:
            prep = before_each() if before_each is not None else {}
            sample = run()
            sample.update(prep)
            sample["rep"] = rep
            samples[key].append(sample)
        if progress:
            print(f"\r{progress}: {rep + 1}/{reps}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return samples


def phase_summary(
    contenders: Sequence[Contender],
    samples: dict[str, list[Sample]],
    floor_key: str,
    reference_key: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per contender: the summary, the ratio of medians to the floor, and the paired ratio.

    With ``reference_key``, also the ratio of medians and the paired ratio to that contender.
    """
    floor = [s["window_ns"] for s in samples[floor_key]]
    floor_median = median(floor)
    ref = [s["window_ns"] for s in samples[reference_key]] if reference_key else []
    out: dict[str, dict[str, Any]] = {}
    for key, label, _ in contenders:
        values = [s["window_ns"] for s in samples[key]]
        summary: dict[str, Any] = {"label": label, **results.summary(values)}
        summary["ratio_to_floor"] = summary["median_ns"] / floor_median
        summary["paired_ratio_median"] = median(v / f for v, f in zip(values, floor, strict=True))
        if ref:
            summary["ratio_to_reference"] = summary["median_ns"] / median(ref)
            summary["paired_ratio_to_reference"] = median(v / r for v, r in zip(values, ref, strict=True))
        out[key] = summary
    return out


def print_table(title: str, summary: dict[str, dict[str, Any]], reference: str = "") -> None:
    """The readable table of one phase (with ``reference``, a column of ratios to it)."""
    print(title)
    head = f"  {'contender':<44}{'min':>10}{'median':>10}{'p90':>10}{'max':>10}{'med/floor':>11}{'paired':>8}"
    print(head + (f"{'med/' + reference:>15}" if reference else ""))
    for s in summary.values():
        line = (
            f"  {s['label']:<44}{cell(s['min_ns'])}{cell(s['median_ns'])}{cell(s['p90_ns'])}"
            f"{cell(s['max_ns'])}{s['ratio_to_floor']:>10.2f}x{s['paired_ratio_median']:>7.2f}x"
        )
        if reference:
            line += f"{s['ratio_to_reference']:>14.2f}x"
        print(line)


def print_extra(label: str, values: Sequence[float]) -> None:
    """One more row: a duration that is not a window (pre-flush, write time)."""
    s = results.summary([int(v) for v in values])
    print(f"  {label:<44}{cell(s['min_ns'])}{cell(s['median_ns'])}{cell(s['p90_ns'])}{cell(s['max_ns'])}")


def per_fs_medians(samples: Sequence[Sample], mounts: Sequence[str], key: str) -> str:
    """Median per-filesystem FIFREEZE or FITHAW time (or start offset) of the engine, as text."""
    parts = []
    for i, mp in enumerate(mounts):
        med = median(s[key][i] for s in samples)
        parts.append(f"{Path(mp).name} {med / 1e6:.3f}")
    return ", ".join(parts) + " ms"


# ---------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked."""
    p = argparse.ArgumentParser(
        prog="compare_window.py",
        description="Frozen-window comparison: C floor, quiesce engine, Freeze path, fsfreeze, qemu-ga.",
    )
    p.add_argument("--reps", type=int, default=100, help="warm clean reps (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="discarded rounds first (default 3)")
    p.add_argument("--cold-reps", type=int, default=15, help="cold clean reps (default 15; 0 skips)")
    p.add_argument("--cold-pause", type=float, default=0.5, help="idle seconds before a cold measurement")
    p.add_argument("--dirty-reps", type=int, default=5, help="dirty reps (default 5; 0 skips)")
    p.add_argument("--dirty-warmup", type=int, default=1, help="discarded dirty rounds first (default 1)")
    p.add_argument("--dirty-mb", type=int, default=150, help="MiB written to each fs per dirty rep")
    p.add_argument("--image-mb", type=int, default=1024, help="sparse image size (default 1024)")
    p.add_argument("--no-qemu-ga", action="store_true", help="leave the QEMU guest agent out")
    results.add_output_arguments(p)
    args = p.parse_args(argv)
    if args.reps < 1 or min(args.warmup, args.cold_reps, args.dirty_reps, args.dirty_warmup) < 0:
        p.error("--reps must be >= 1; --warmup, --cold-reps, --dirty-reps, --dirty-warmup >= 0")
    if args.dirty_mb < 1 or args.cold_pause < 0:
        p.error("--dirty-mb must be >= 1 and --cold-pause >= 0")
    if args.image_mb < 300:
        p.error("--image-mb must be at least 300 (mkfs.xfs refuses smaller)")
    if args.dirty_reps and args.dirty_mb * 3 > args.image_mb:
        p.error(f"--dirty-mb {args.dirty_mb} does not fit comfortably in {args.image_mb} MiB")
    return args


def build(sb: Sandbox, image_mb: int) -> list[Target]:
    """Make the three filesystems; return them as planned targets, checked to be ours."""
    return sandbox_targets([sb.add(fstype, image_mb, name=fstype) for fstype in FSTYPES])


def print_header(doc: dict[str, Any]) -> None:
    """The command line and the machine, first."""
    m = doc["machine"]
    print(f"command: {doc['command']}")
    print(
        f"machine: nproc {m['nproc']}, {m['cpu_model']}, kernel {m['kernel']}, "
        f"python {m['python']}, {m['fsfreeze']}, {m.get('qemu_ga') or 'no qemu-ga'}, "
        f"loadavg {m['loadavg'][0]:.2f}"
    )


QEMU_GA_LABEL = "qemu-ga freeze-list + thaw (2 JSON RTTs)"
#: The goal of the benchmark issue for clean windows: at most this times the floor.
CLEAN_GOAL = 1.15
#: ... and for dirty ones: at most this times the sequential engine without pre-flush.
DIRTY_GOAL = 0.15
#: The dirty goal is stated for this much written to each of the three filesystems.
DIRTY_GOAL_MB = 150
#: The contenders whose clean windows are held to CLEAN_GOAL.
CLEAN_GOAL_KEYS = ("engine", "engine_par", "freeze_path", "freeze_path_plain")
#: The default path's cold window against the floor with rcu_expedited=1 ...
COLD_FLOOR_RCU_GOAL = 1.15
#: ... and against qemu-ga's cold window.
COLD_QEMU_GA_GOAL = 0.05
#: The contenders whose dirty windows are held to DIRTY_GOAL.
DIRTY_GOAL_KEYS = ("engine_preflush", "engine_preflush_par", "engine_preflush_par_rcu")


def clean_contenders(bench: Bench) -> list[Contender]:
    """The contenders of the clean phases, floor first; qemu-ga when it runs."""
    contenders: list[Contender] = [
        ("floor", "floor (C: FIFREEZE x3, FITHAW x3)", bench.floor),
        ("engine", "engine Session.cycle(), guardian armed", bench.engine),
        ("engine_par", "engine, parallel (set_parallel)", lambda: bench.engine(parallel=True)),
        ("freeze_path", "Freeze path, defaults (expedited RCU + parallel)", bench.freeze_path),
        (
            "freeze_path_plain",
            "Freeze path, --no-expedite-rcu --no-parallel",
            lambda: bench.freeze_path(expedite_rcu=False, parallel=False),
        ),
        ("fsfreeze", "fsfreeze -f x3, -u x3 (incl. 6 spawns)", bench.fsfreeze_cli),
    ]
    if bench.agent is not None:
        contenders.append(("qemu_ga", QEMU_GA_LABEL, bench.qemu_ga))
    return contenders


def print_agent_split(samples: dict[str, list[Sample]]) -> None:
    """The guest agent's two round trips, each on its own row."""
    if "qemu_ga" not in samples:
        return
    qga = samples["qemu_ga"]
    print_extra("  qemu-ga freeze-list request -> reply", [s["freeze_rtt_ns"] for s in qga])
    print_extra("  qemu-ga thaw request -> reply", [s["thaw_rtt_ns"] for s in qga])


def clean_checks(phase: str, summary: dict[str, dict[str, Any]]) -> list[Check]:
    """The clean-window goal for every contender it applies to."""
    return [
        Check(
            f"clean window <= {CLEAN_GOAL}x the floor ({phase})",
            f"{summary[key]['label']}: median / floor median",
            summary[key]["ratio_to_floor"],
            CLEAN_GOAL,
        )
        for key in CLEAN_GOAL_KEYS
        if key in summary
    ]


def warm_phase(bench: Bench, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Clean filesystems, freezes back to back: the engine's pure overhead over the floor."""
    contenders = clean_contenders(bench)
    warm = interleaved(contenders, args.warmup, progress="warm-up") if args.warmup else {}
    doc["warmup"] = {k: [s["window_ns"] for s in v] for k, v in warm.items()}
    samples = interleaved(contenders, args.reps, progress="clean, warm")
    summary = phase_summary(contenders, samples, "floor")
    doc["clean_warm"] = {"samples": samples, "summary": summary}
    doc["checks"].extend(clean_checks("warm", summary))

    print()
    first = ", ".join(f"{k} {v / 1e6:.3f}" for k, v in doc["first_freeze_after_mkfs_ns"].items())
    print(f"first freeze after mkfs+syncfs (floor, one fs at a time, discarded): {first} ms")
    for key, values in doc["warmup"].items():
        print(f"warm-up windows (discarded) {key}: {', '.join(f'{v / 1e6:.3f}' for v in values)} ms")
    print()
    print_table(
        f"CLEAN, WARM: ext4 + xfs + btrfs, {args.reps} interleaved reps, freezes back to back, "
        "window in ms (paired = median of per-rep ratios to the floor)",
        summary,
    )
    eng, fp = samples["engine"], samples["freeze_path"]
    print_extra("  engine cycle() seen from Python (cffi call)", [s["call_ns"] for s in eng])
    print_extra("  Freeze path pre-flush (outside the window)", [s["preflush_ns"] or 0 for s in fp])
    print_agent_split(samples)
    mounts = bench.mounts
    print(f"  engine median FIFREEZE per fs:      {per_fs_medians(eng, mounts, 'freeze_ns')}")
    print(f"  engine median FITHAW per fs:        {per_fs_medians(eng, mounts, 'thaw_ns')}")
    print(f"  Freeze path median FIFREEZE per fs: {per_fs_medians(fp, mounts, 'freeze_ns')}")
    par = samples["engine_par"]
    print(f"  engine parallel, FIFREEZE per fs:   {per_fs_medians(par, mounts, 'freeze_ns')}")
    print(f"  engine parallel, FIFREEZE start:    {per_fs_medians(par, mounts, 'freeze_at_ns')} (from first)")
    print(
        "  floor and engine freeze without a pre-flush; the Freeze path syncfs()es first,\n"
        "  which takes out of its window what a thaw leaves for the next FIFREEZE to write.\n"
        "  fsfreeze: wall time of 6 commands from Python; process spawns are its cost."
    )
    if bench.agent is not None:
        print(
            "  qemu-ga: wall time from sending freeze-list to the thaw's reply, two JSON round\n"
            "  trips over its unix socket and its mountinfo reads included: what using it costs."
        )
    for check in clean_checks("warm", summary):
        print(f"  {check.line()}")


def cold_contenders(bench: Bench) -> list[Contender]:
    """The clean contenders, and the expedited-RCU ones when the kernel has the knob."""
    contenders = clean_contenders(bench)
    if os.path.exists(RCU_EXPEDITED):
        contenders[1:1] = [("floor_rcu", "floor (C), rcu_expedited=1", bench.floor_rcu)]
        contenders[6:6] = [
            ("engine_rcu", "engine, rcu_expedited for the cycle", lambda: bench.engine(rcu=True)),
            (
                "engine_par_rcu",
                "engine, parallel + rcu_expedited",
                lambda: bench.engine(parallel=True, rcu=True),
            ),
        ]
    return contenders


def cold_phase(bench: Bench, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Clean filesystems after a pause: what a real, occasional freeze costs."""
    contenders = cold_contenders(bench)

    def pause() -> Sample:
        time.sleep(args.cold_pause)
        return {}

    samples = interleaved(contenders, args.cold_reps, before_each=pause, progress="clean, cold")
    summary = phase_summary(contenders, samples, "floor", reference_key="engine")
    doc["clean_cold"] = {"samples": samples, "summary": summary}
    checks = clean_checks("cold", summary) + default_cold_checks(summary)
    doc["checks"].extend(checks)
    print()
    print_table(
        f"CLEAN, COLD: {args.cold_pause:g} s idle before each measurement, {args.cold_reps} "
        "interleaved reps, window in ms",
        summary,
        reference="engine",
    )
    print_agent_split(samples)
    eng, par = samples["engine"], samples["engine_par"]
    print(f"  engine median FIFREEZE per fs:          {per_fs_medians(eng, bench.mounts, 'freeze_ns')}")
    print(f"  engine parallel median FIFREEZE per fs: {per_fs_medians(par, bench.mounts, 'freeze_ns')}")
    print(
        "  the first FIFREEZE of a superblock idle for more than an RCU grace period waits in\n"
        "  freeze_super -> rcu_sync_enter -> synchronize_rcu (seen in /proc/PID/stack), whoever\n"
        "  freezes; back-to-back freezes skip it. With /sys/kernel/rcu_expedited set (the\n"
        "  *rcu* rows, quiesce's --expedite-rcu) that wait is an expedited grace period; frozen\n"
        "  in parallel, the filesystems wait out their grace periods side by side."
    )
    fp = samples["freeze_path"]
    print(f"  Freeze path (defaults) FIFREEZE per fs: {per_fs_medians(fp, bench.mounts, 'freeze_ns')}")
    print(f"  Freeze path (defaults) FITHAW per fs:   {per_fs_medians(fp, bench.mounts, 'thaw_ns')}")
    print(f"  Freeze path (defaults) FITHAW start:    {per_fs_medians(fp, bench.mounts, 'thaw_at_ns')}")
    for check in checks:
        print(f"  {check.line()}")


def default_cold_checks(summary: dict[str, dict[str, Any]]) -> list[Check]:
    """The default path's cold window against the floor with rcu_expedited=1 and against qemu-ga."""
    checks = []
    fp = summary.get("freeze_path")
    if fp is None:
        return checks
    for key, goal in (("floor_rcu", COLD_FLOOR_RCU_GOAL), ("qemu_ga", COLD_QEMU_GA_GOAL)):
        if key in summary:
            checks.append(
                Check(
                    f"default cold window <= {goal}x {summary[key]['label']}",
                    f"{fp['label']}: median / {key} median",
                    fp["median_ns"] / summary[key]["median_ns"],
                    goal,
                )
            )
    return checks


def dirty_phase(bench: Bench, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Fresh dirty data on every filesystem: the flush FIFREEZE does, with and without pre-flush."""
    contenders: list[Contender] = [
        ("floor", "floor (dirty)", bench.floor),
        ("engine", "engine, no pre-flush", bench.engine),
        ("engine_preflush", "engine, after pre-flush", lambda: bench.engine(True)),
        ("engine_preflush_par", "engine, pre-flush + parallel", lambda: bench.engine(True, True)),
    ]
    if os.path.exists(RCU_EXPEDITED):
        contenders.append(
            (
                "engine_preflush_par_rcu",
                "engine, pre-flush + parallel + rcu_expedited",
                lambda: bench.engine(True, True, True),
            )
        )
    if bench.agent is not None:
        contenders.append(("qemu_ga", "qemu-ga freeze-list + thaw (no pre-flush)", bench.qemu_ga))
    # The first dirty rounds land on never-written blocks of the sparse images
    # and run several times slower: discard them like the clean warm-up.
    warm = interleaved(contenders, args.dirty_warmup, before_each=bench.make_dirty, progress="dirty warm-up")
    samples = interleaved(contenders, args.dirty_reps, before_each=bench.make_dirty, progress="dirty")
    summary = phase_summary(contenders, samples, "floor", reference_key="engine")
    doc["dirty"] = {
        "warmup": {k: [s["window_ns"] for s in v] for k, v in warm.items()},
        "samples": samples,
        "summary": summary,
    }
    size = f"{args.dirty_mb} MiB x 3"
    if args.dirty_mb != DIRTY_GOAL_MB:
        size += f"; the goal is stated for {DIRTY_GOAL_MB} MiB x 3"
    checks = [
        Check(
            f"dirty window <= {DIRTY_GOAL}x sequential engine without pre-flush ({size})",
            f"{summary[key]['label']}: median / median",
            summary[key]["ratio_to_reference"],
            DIRTY_GOAL,
        )
        for key in DIRTY_GOAL_KEYS
        if key in summary
    ]
    doc["checks"].extend(checks)
    print()
    for key, values in doc["dirty"]["warmup"].items():
        if values:
            windows = ", ".join(f"{v / 1e6:.1f}" for v in values)
            print(f"dirty warm-up windows (discarded) {key}: {windows} ms")
    print_table(
        f"DIRTY: {args.dirty_mb} MiB written (no fsync) to each fs just before every "
        f"measurement, {args.dirty_reps} interleaved reps, window in ms",
        summary,
        reference="engine",
    )
    for key, short in zip(DIRTY_GOAL_KEYS, ("seq", "par", "par+rcu"), strict=True):
        if key in samples:
            pf = samples[key]
            print_extra(f"  pre-flush ({short}; parallel syncfs, before)", [s["preflush_ns"] for s in pf])
            print_extra(f"  pre-flush + window ({short})", [s["preflush_ns"] + s["window_ns"] for s in pf])
    print_agent_split(samples)
    every = [s for v in samples.values() for s in v]
    print_extra(f"  writing 3 x {args.dirty_mb} MiB (not timed)", [s["write_ns"] for s in every])
    dirty = median(s["meminfo_dirty_kb"] for s in every) / 1024
    print(f"  machine Dirty+Writeback before each freeze, median: {dirty:.0f} MiB")
    print(
        "  engine median FIFREEZE per fs, no pre-flush: "
        f"{per_fs_medians(samples['engine'], bench.mounts, 'freeze_ns')}"
    )
    for check in checks:
        print(f"  {check.line()}")


# ---------------------------------------------------------------------------
# the results file


def _phase_table(summary: dict[str, dict[str, Any]], reference: str | None = None) -> str:
    """One phase as a markdown table: medians, p90, ratios to the floor (and to a reference)."""
    headers = ["contender", "n", "median ms", "p90 ms", "max ms", "median / floor", "paired / floor"]
    if reference:
        headers += [f"median / {reference}", f"paired / {reference}"]
    rows = []
    for s in summary.values():
        row = [
            s["label"],
            str(s["n"]),
            results.ms(s["median_ns"]),
            results.ms(s["p90_ns"]),
            results.ms(s["max_ns"]),
            results.ratio(s["ratio_to_floor"]),
            results.ratio(s["paired_ratio_median"]),
        ]
        if reference:
            row += [results.ratio(s["ratio_to_reference"]), results.ratio(s["paired_ratio_to_reference"])]
        rows.append(row)
    return results.table(headers, rows)


def _extra_line(label: str, values: Sequence[float]) -> str:
    s = results.summary([int(v) for v in values])
    return f"- {label}: median {results.ms(s['median_ns'])} ms (p90 {results.ms(s['p90_ns'])}, n {s['n']})"


def _par_vs_seq(summary: dict[str, dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> list[str]:
    lines = []
    for par, seq in pairs:
        if par in summary and seq in summary:
            p, q = summary[par], summary[seq]
            lines.append(
                f"- {p['label']} against {q['label']}: {results.ms(p['median_ns'])} / "
                f"{results.ms(q['median_ns'])} ms = {p['median_ns'] / q['median_ns']:.2f}x"
            )
    return lines


PAR_PAIRS = (
    ("engine_par", "engine"),
    ("freeze_path", "freeze_path_plain"),
    ("engine_par_rcu", "engine_rcu"),
    ("freeze_path", "floor_rcu"),
)


def results_section(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """This run's section of bench/RESULTS.md."""
    m = doc["machine"]
    parts = [
        "ext4 + xfs + btrfs, "
        f"{args.image_mb} MiB sparse loop images, freeze order {doc['freeze_order']} (thaw reverse). "
        "Window: first FIFREEZE start to last FITHAW end. `paired` = median of the per-rep ratios "
        "(contenders interleaved, first one rotating). fsfreeze and qemu-ga are timed from Python "
        "around their commands or requests, so their rows include process spawns or JSON round trips.",
    ]
    warm = doc["clean_warm"]
    parts.append(
        f"### Clean, warm ({args.reps} reps, back to back, after {args.warmup} discarded)\n\n"
        + _phase_table(warm["summary"])
    )
    eng = warm["samples"]["engine"]
    fp = warm["samples"]["freeze_path"]
    parts.append(
        "\n".join(
            [
                _extra_line("engine cycle() seen from Python", [s["call_ns"] for s in eng]),
                _extra_line(
                    "Freeze path pre-flush (outside the window)", [s["preflush_ns"] or 0 for s in fp]
                ),
                *_par_vs_seq(warm["summary"], PAR_PAIRS),
            ]
        )
    )
    if "clean_cold" in doc:
        cold = doc["clean_cold"]
        # Cold first, right after the introduction: a real backup's freeze is cold.
        parts[1:1] = [
            f"### Clean, cold ({args.cold_pause:g} s idle before each measurement, {args.cold_reps} reps)"
            "\n\n" + _phase_table(cold["summary"], "engine"),
            "Parallel against sequential (medians):\n\n" + "\n".join(_par_vs_seq(cold["summary"], PAR_PAIRS)),
        ]
    if "dirty" in doc:
        dirty = doc["dirty"]
        lines = [
            _extra_line(
                f"{dirty['summary'][k]['label']}: pre-flush (before the window)",
                [s["preflush_ns"] for s in dirty["samples"][k]],
            )
            for k in DIRTY_GOAL_KEYS
            if k in dirty["samples"]
        ]
        parts.append(
            f"### Dirty ({args.dirty_mb} MiB written to each filesystem without fsync before every "
            f"measurement, {args.dirty_reps} reps after {args.dirty_warmup} discarded)\n\n"
            + _phase_table(dirty["summary"], "engine")
            + "\n\n"
            + "\n".join(lines)
        )
    extra = f"; {m['fsfreeze']}; {m.get('qemu_ga') or 'qemu-ga not installed'}"
    return results.section(
        "compare_window.py: the frozen window, side by side",
        doc=doc,
        parts=parts,
        checks=doc["checks"],
        extra_machine=extra,
    )


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Build the world, run the phases, print the tables; returns the JSON document."""
    started = time.monotonic()
    doc: dict[str, Any] = {
        "command": results.command_line(argv),
        "machine": machine(),
        "config": vars(args),
        "checks": [],
    }
    print_header(doc)
    enter_private_namespace()
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="quiesce-bench-"))
        floor_bin = compile_floor(work)
        doc["floor_compile"] = compile_command("$TMP")
        # Root's alone, on a path only root can change: quiesce refuses anything under /tmp.
        run_dir = tempfile.mkdtemp(prefix="quiesce-bench-run-", dir="/run")
        stack.callback(shutil.rmtree, run_dir, True)
        sb = stack.enter_context(Sandbox())
        t0 = time.monotonic()
        targets = build(sb, args.image_mb)
        bench = Bench(targets, floor_bin, run_dir, args.dirty_mb)
        bench.open()
        stack.callback(bench.close)  # before the sandbox unmounts
        binary = None if args.no_qemu_ga else agent_binary()
        if binary is not None:
            # Stopped before the sandbox is torn down (the stack unwinds in reverse).
            sandbox_mounts = {t.mount.mount_point: t.mount.source for t in targets}
            bench.agent = stack.enter_context(GuestAgent(binary, work, sandbox_mounts))
            bench.agent.start()
            doc["qemu_ga_argv"] = bench.agent.argv
        doc["filesystems"] = [
            {
                "fstype": t.mount.fstype,
                "mount_point": t.mount.mount_point,
                "device": t.mount.source,
                "dev": t.mount.dev,
            }
            for t in targets
        ]
        order = " -> ".join(t.mount.fstype for t in targets)
        doc["freeze_order"] = order
        grouped = zip(bench.parallel_order, bench.groups, strict=True)
        groups = ", ".join(f"{targets[i].mount.fstype} {g}" for i, g in grouped)
        print(
            f"filesystems: {order} (freeze order; thaw reverse), {args.image_mb} MiB sparse "
            f"loop images, built in {time.monotonic() - t0:.1f} s; parallel groups: {groups}"
        )
        print(f"floor: {doc['floor_compile']}")
        if bench.agent is not None:
            print(
                f"qemu-ga: pid {bench.agent.proc.pid if bench.agent.proc else '?'}, unix socket in $TMP, "
                "every RPC but guest-sync, guest-fsfreeze-freeze-list and guest-fsfreeze-thaw disabled"
            )
        elif not args.no_qemu_ga:
            print("qemu-ga: not installed, left out (apt-get install qemu-guest-agent)")
        bench.settle()
        first = bench.first_freezes()
        doc["first_freeze_after_mkfs_ns"] = {Path(mp).name: ns for mp, ns in first.items()}

        warm_phase(bench, args, doc)
        if args.cold_reps:
            cold_phase(bench, args, doc)
        if args.dirty_reps:
            dirty_phase(bench, args, doc)
    doc["duration_s"] = time.monotonic() - started
    return doc


def draw_plots(directory: Path, doc: dict[str, Any]) -> list[str]:
    """One picture per phase (cold first): windows per contender, the Freeze path's timeline."""
    names = []
    for phase, what in (("clean_cold", "clean, cold"), ("clean_warm", "clean, warm"), ("dirty", "dirty")):
        if phase in doc:
            labels = {k: v["label"] for k, v in doc[phase]["summary"].items()}
            title = f"compare_window.py: the window, {what} ({doc['freeze_order']})"
            names.append(
                results.draw_phase(
                    directory, f"compare_window-{phase}", title, doc[phase]["samples"], labels, "freeze_path"
                )
            )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root and the tools are there, run, write the results; the exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    refused = refusal(
        "compare_window.py",
        "it creates loop devices, mounts filesystems in a private mount namespace and freezes them",
        TOOLS,
    )
    if refused:
        print(refused, file=sys.stderr)
        return 2
    plots = results.plot_dir(args)
    with sigterm_exits(), rcu_left_as_found():
        doc = run(args, argv)
    if plots is not None:
        doc["plots"] = draw_plots(plots, doc)
        print(f"\npictures written to {plots}: {', '.join(doc['plots'])}")
    results.write_outputs(
        args, "compare_window", None if args.no_results else results_section(args, doc), doc
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
