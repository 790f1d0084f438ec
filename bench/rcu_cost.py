"""What an expedited RCU grace period costs a CPU-bound process on another core.

    sudo python bench/rcu_cost.py [--reps 20] [--pause 0.5] [--fstypes ext4,xfs,btrfs]
                                  [--threshold-us 5] [--json out.json] [--results PATH | --no-results]

An expedited grace period interrupts every CPU (an IPI each) instead of
waiting for them to pass a quiescent state on their own: that is what makes
a cold FIFREEZE take about a millisecond instead of tens. This measures what
the other CPUs pay for it. One run builds one loop filesystem of each
``--fstypes`` in a private mount namespace (planned and checked to be its
own, as every ``bench/`` script does), pins itself (and so the freeze's
threads and guardian) to the first CPU it may use, and for every repetition:

  1. starts bench/spinner.c pinned to another CPU: it reads CLOCK_MONOTONIC
     in a tight loop and records every gap longer than ``--threshold-us``
     (the CPU was taken from it);
  2. idles ``--pause`` s (so the freeze is cold: the last grace period has
     long ended);
  3. freezes and thaws the filesystems with ``quiesce.engine.freeze.Freeze``
     (no pre-flush: its I/O is not the question), with
     /sys/kernel/rcu_expedited set to 1 (``expedited``) or 0 (``normal``)
     for the window, alternating and rotating;
  4. counts the spinner's lost time (the gaps) within the window (just
     before the freeze to just after the thaw), and within a control
     interval of the same length that ends 5 ms before the window starts;
     when the spinner had not run that long yet (a slow window after a
     short ``--pause``), the control starts 5 ms after the thaw instead,
     and the spinner runs on until it has ended.

Reported per mode (medians over the repetitions): the window, the lost
time in the window and in its control, the excess (window minus control),
the lost share of the window, and the longest gap seen in any window. The
machine is shared: other processes take the spinner's CPU too, which is why
each window has its own control. Written to the ``rcu_cost`` section of
bench/RESULTS.md (``--results PATH``; ``--no-results`` skips it).

/sys/kernel/rcu_expedited is system-wide: it holds 0 or 1 only for each
window, and the value found at the start is put back after every window and
at the end, however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import results
from floorprog import compile_command, compile_program
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
from quiesce.engine.plan import Target
from quiesce.engine.rcu import RCU_EXPEDITED
from quiesce.sandbox import Sandbox

SOURCE = Path(__file__).resolve().parent / "spinner.c"
TOOLS = ("cc", "losetup", "mount", "umount")
MKFS = {"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs"}
MODES = {"expedited": b"1", "normal": b"0"}
#: The control interval ends this long before the window starts (or starts this long after it).
CONTROL_GAP_NS = 5_000_000
#: The longest a spinner runs if nothing stops it (its caller died).
SPINNER_MAX_S = 120.0


class Spinner:
    """One run of bench/spinner.c on one CPU until stopped, and the gaps it saw."""

    def __init__(self, binary: Path, cpu: int, threshold_ns: int) -> None:
        argv = [str(binary), str(cpu), str(int(SPINNER_MAX_S * 1000)), str(threshold_ns)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        word, _, started = self.proc.stdout.readline().partition(" ")
        if word != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the spinner did not start")
        #: No later than the spinning's start (CLOCK_MONOTONIC ns).
        self.started = int(started)
        self.gaps: list[tuple[int, int]] = []
        self.first = self.last = 0

    def finish(self, not_before_ns: int = 0) -> None:
        """Stop the spinner once CLOCK_MONOTONIC has passed ``not_before_ns``; read its gaps."""
        while (left := not_before_ns - time.monotonic_ns()) > 0:
            time.sleep(left / 1e9)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the spinner exited {self.proc.returncode}")
        for line in out.splitlines():
            word, *values = line.split()
            if word == "iterations":
                self.first, self.last = int(values[1]), int(values[2])
            elif word == "gap":
                self.gaps.append((int(values[0]), int(values[1])))

    def lost(self, a: int, b: int) -> tuple[int, int]:
        """The time taken from the spinner within [a, b] and its longest gap there (ns)."""
        if a < self.first or b > self.last:
            raise RuntimeError(f"[{a}, {b}] is outside the spinner's run [{self.first}, {self.last}]")
        total = longest = 0
        for start, length in self.gaps:
            overlap = min(b, start + length) - max(a, start)
            if overlap > 0:
                total += overlap
                longest = max(longest, length)
        return total, longest


def control_interval(started: int, a: int, b: int) -> tuple[int, int]:
    """A control as long as the window [a, b]: before it if the spinner ran by then, else after."""
    start = a - CONTROL_GAP_NS - (b - a)
    if start > started + CONTROL_GAP_NS:
        return start, a - CONTROL_GAP_NS
    return b + CONTROL_GAP_NS, b + CONTROL_GAP_NS + (b - a)


def spin_until(control: tuple[int, int], b: int) -> int:
    """When the spinner may stop: past the window's end ``b`` and the control's (which may come first)."""
    return max(b, control[1]) + CONTROL_GAP_NS


def set_rcu(value: bytes) -> None:
    """Write /sys/kernel/rcu_expedited."""
    with open(RCU_EXPEDITED, "wb") as f:
        f.write(value)


def read_rcu() -> bytes:
    """Read /sys/kernel/rcu_expedited."""
    with open(RCU_EXPEDITED, "rb") as f:
        return f.read().strip()


def one(
    mode: str,
    targets: Sequence[Target],
    spinner_bin: Path,
    spin_cpu: int,
    run_dir: str,
    args: argparse.Namespace,
) -> dict[str, int]:
    """One cold window in ``mode`` beside a spinner; the window and what the spinner lost."""
    found = read_rcu()
    spinner = Spinner(spinner_bin, spin_cpu, args.threshold_us * 1000)
    until = 0  # the spinner runs until then, past the control interval
    try:
        time.sleep(args.pause)
        knob = claim_knob()  # no freeze may read this window's value as the machine's
        set_rcu(MODES[mode])
        try:
            options = FreezeOptions(timeout_s=10.0, preflush=False, run_dir=run_dir, expedite_rcu=False)
            f = Freeze(list(targets), options)
            with f:
                f.prepare()
                a = time.monotonic_ns()
                f.freeze()
                f.close()
                b = time.monotonic_ns()
        finally:
            set_rcu(found)
            knob.close()
        control = control_interval(spinner.started, a, b)
        until = spin_until(control, b)
    finally:
        spinner.finish(until)
    if not f.report.ok:
        raise RuntimeError(f"the freeze did not end cleanly: {f.report}")
    lost, longest = spinner.lost(a, b)
    control_lost, control_longest = spinner.lost(*control)
    return {
        "interval_ns": b - a,
        "window_ns": int(f.report.window_ns or 0),
        "lost_ns": lost,
        "longest_gap_ns": longest,
        "control_lost_ns": control_lost,
        "control_longest_gap_ns": control_longest,
        "control_after": int(control[0] > b),
    }


def summarize_mode(samples: list[dict[str, int]]) -> dict[str, Any]:
    """Medians of one mode's repetitions, and the longest gaps seen."""
    return {
        "n": len(samples),
        "interval_ns": median(s["interval_ns"] for s in samples),
        "window_ns": median(s["window_ns"] for s in samples),
        "lost_ns": median(s["lost_ns"] for s in samples),
        "control_lost_ns": median(s["control_lost_ns"] for s in samples),
        "excess_ns": median(s["lost_ns"] - s["control_lost_ns"] for s in samples),
        "lost_share": median(s["lost_ns"] / s["interval_ns"] for s in samples),
        "longest_gap_ns": max(s["longest_gap_ns"] for s in samples),
        "median_longest_gap_ns": median(s["longest_gap_ns"] for s in samples),
        "control_longest_gap_ns": max(s["control_longest_gap_ns"] for s in samples),
        "controls_after": sum(s["control_after"] for s in samples),
    }


HEADERS = [
    "mode",
    "n",
    "freeze+thaw ms",
    "lost in it us",
    "lost in control us",
    "excess us",
    "lost share",
    "longest gap us (median / max)",
    "control's longest us",
]


def table_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per mode."""
    return [
        [
            mode,
            str(s["n"]),
            results.ms(s["interval_ns"], 2),
            f"{s['lost_ns'] / 1e3:.0f}",
            f"{s['control_lost_ns'] / 1e3:.0f}",
            f"{s['excess_ns'] / 1e3:.0f}",
            f"{100 * s['lost_share']:.1f} %",
            f"{s['median_longest_gap_ns'] / 1e3:.0f} / {s['longest_gap_ns'] / 1e3:.0f}",
            f"{s['control_longest_gap_ns'] / 1e3:.0f}",
        ]
        for mode, s in summary.items()
    ]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked."""
    p = argparse.ArgumentParser(prog="rcu_cost.py", description="What expedited RCU costs another CPU.")
    p.add_argument("--reps", type=int, default=20, help="windows per mode (default 20)")
    p.add_argument("--pause", type=float, default=0.5, help="idle seconds before each window (0.5)")
    p.add_argument("--fstypes", default="ext4,xfs,btrfs", help="one loop filesystem of each (ext4,xfs,btrfs)")
    p.add_argument("--threshold-us", type=int, default=5, help="a longer gap is time taken (5 us)")
    results.add_output_arguments(p)
    args = p.parse_args(argv)
    args.fstypes = [t for t in args.fstypes.split(",") if t]
    if args.reps < 1 or args.pause < 0 or args.threshold_us < 1:
        p.error("--reps and --threshold-us must be >= 1, --pause >= 0")
    if not args.fstypes or any(t not in MKFS for t in args.fstypes):
        p.error(f"--fstypes: a comma-separated list of {', '.join(MKFS)}")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Build the sandbox, run the windows, print the table; the JSON document."""
    started = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    freeze_cpu, spin_cpu = cpus[0], cpus[-1]
    doc: dict[str, Any] = {
        "command": results.command_line(argv),
        "machine": results.machine(),
        "config": {**vars(args), "freeze_cpu": freeze_cpu, "spin_cpu": spin_cpu},
    }
    m = doc["machine"]
    print(f"command: {doc['command']}")
    print(
        f"machine: nproc {m['nproc']}, {m['cpu_model']}, kernel {m['kernel']}, loadavg {m['loadavg'][0]:.2f}"
    )
    print(
        f"freezing on CPU {freeze_cpu}, spinner on CPU {spin_cpu}; rcu_expedited found: {read_rcu().decode()}"
    )
    enter_private_namespace()
    os.sched_setaffinity(0, {freeze_cpu})  # the freeze's threads and guardian inherit it
    samples: dict[str, list[dict[str, int]]] = {mode: [] for mode in MODES}
    with contextlib.ExitStack() as stack:
        stack.callback(os.sched_setaffinity, 0, set(cpus))
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="quiesce-rcu-cost-"))
        spinner_bin = compile_program(SOURCE, work)
        doc["spinner_compile"] = compile_command("$TMP", SOURCE)
        run_dir = tempfile.mkdtemp(prefix="quiesce-bench-run-", dir="/run")
        stack.callback(shutil.rmtree, run_dir, True)
        sb = stack.enter_context(Sandbox())
        targets = sandbox_targets([sb.add(t, name=f"{t}-rcu") for t in args.fstypes])
        modes = list(MODES)
        for rnd in range(args.reps):
            order = modes[rnd % 2 :] + modes[: rnd % 2]
            for mode in order:
                samples[mode].append(one(mode, targets, spinner_bin, spin_cpu, run_dir, args))
            print(f"round {rnd + 1}/{args.reps}", file=sys.stderr)
    summary = {mode: summarize_mode(v) for mode, v in samples.items()}
    doc.update(samples=samples, summary=summary, duration_s=time.monotonic() - started)
    print()
    print(results.table(HEADERS, table_rows(summary)))
    return doc


def results_section(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """This run's section of bench/RESULTS.md."""
    c = doc["config"]
    parts = [
        f"A CPU-bound process (`bench/spinner.c`, pinned to CPU {c['spin_cpu']}) reads the clock in a "
        f"tight loop beside cold freezes of {', '.join(args.fstypes)} loop filesystems (pinned to CPU "
        f"{c['freeze_cpu']}; `Freeze`, no pre-flush), {args.pause:g} s idle before each, with "
        "/sys/kernel/rcu_expedited at 1 (`expedited`) or 0 (`normal`) for the window, alternating. "
        f"Lost time: the spinner's gaps over {args.threshold_us} us within the window (freeze start to "
        "thaw end) and within a control interval of the same length just before it (or just after it, "
        "when the spinner had not run that long yet: `controls_after` in the JSON; ticks and other "
        "processes of this shared machine take the CPU there too); excess: window minus control; medians "
        f"over {args.reps} windows per mode. Spinner: `{doc['spinner_compile']}`.",
        results.table(HEADERS, table_rows(doc["summary"])),
    ]
    return results.section("Expedited RCU cost", doc=doc, parts=parts, checks=[])


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root, two CPUs and the tools are there, run, write the results; the exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    tools = TOOLS + tuple(MKFS[t] for t in args.fstypes)
    refused = refusal("rcu_cost.py", "it creates loop devices, mounts filesystems and freezes them", tools)
    if refused is None and not os.path.exists(RCU_EXPEDITED):
        refused = f"rcu_cost.py: {RCU_EXPEDITED} is missing: nothing to compare"
    if refused is None and len(os.sched_getaffinity(0)) < 2:
        refused = "rcu_cost.py: needs two CPUs (one freezes, the other spins)"
    if refused:
        print(refused, file=sys.stderr)
        return 2
    with sigterm_exits(), rcu_left_as_found():
        doc = run(args, argv)
    body = None if args.no_results else results_section(args, doc)
    results.write_outputs(args, "rcu_cost", body, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
