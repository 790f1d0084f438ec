"""``quiesce bench``: its arguments, its confirmation, its progress bar and its tables.

Registered on the command line by :func:`add_parser`; exit codes and JSON
errors are the command line's (:mod:`quiesce.cli.exits`).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from quiesce.azure.planning import make_plan
from quiesce.bench.plot import INSTALL_HINT, check_plot_path, draw_bench, plot_directory
from quiesce.bench.results import BenchAborted, BenchResult, RepSample
from quiesce.bench.runner import DEFAULT_IDLE_S, DEFAULT_REPS, Bench, BenchOptions
from quiesce.bench.stats import PERCENTILE_METHOD, Summary, histogram, render_histogram
from quiesce.cli import argtypes
from quiesce.cli.exits import Exit, exit_code_for, exit_help
from quiesce.cli.freeze import freeze_options
from quiesce.cli.render import emit_json, human_ns, print_plan
from quiesce.engine.plan import Plan
from quiesce.engine.rundir import atomic_write
from quiesce.engine.targets import check_explicit
from quiesce.errors import ThawError
from quiesce.runner.signals import stop_on_signals


def check_selection(targets: Sequence[str], all_: bool, yes: bool) -> None:
    """Raise ValueError (a usage error) for a target selection that makes no sense."""
    if all_ and targets:
        raise ValueError("--all benchmarks every freezable filesystem; do not name targets with it")
    if yes and not all_:
        raise ValueError("--yes confirms --all; without --all there is nothing to confirm")
    if not targets and not all_:
        raise ValueError(
            "no target: name the mount points to benchmark (each repetition freezes them), "
            "or pass --all to freeze every freezable filesystem of this machine, / included"
        )


def require_terminal(stdin: TextIO) -> None:
    """Refuse ``--all`` without ``--yes`` when there is no one to ask (ValueError, a usage error)."""
    if not stdin.isatty():
        raise ValueError(
            "--all freezes every freezable filesystem of this machine, / included: "
            "confirm with --yes (stdin is not a terminal, so there is no one to ask)"
        )


def confirm_all(plan: Plan, reps: int, stdin: TextIO, out: TextIO) -> None:
    """Ask on a terminal before ``--all`` freezes this machine's filesystems.

    Shows the plan; raises :class:`BenchAborted` unless the answer is ``yes``.
    """
    require_terminal(stdin)
    print_plan(plan, out)
    out.write(
        f"This freezes all {len(plan.targets)} filesystems above {reps} times; every writer on them "
        "stalls during each window. Type yes to go on: "
    )
    out.flush()
    if stdin.readline().strip() != "yes":
        raise BenchAborted("not confirmed: nothing was frozen")


def idle_of(args: argparse.Namespace) -> float:
    """The idle time before each repetition: ``--idle``, 0 with ``--warm``, else the cold default."""
    if args.warm and args.idle is not None:
        raise ValueError("--warm runs the repetitions back to back; do not give --idle with it")
    if args.warm:
        return 0.0
    return DEFAULT_IDLE_S if args.idle is None else float(args.idle)


def options_from_args(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> BenchOptions:
    """Check the arguments, plan the targets, confirm ``--all``; the bench's options.

    Everything that can be refused (the selection, ``--plot``'s file and
    matplotlib) is checked before anything is planned or frozen.
    """
    targets: list[str] = list(args.targets)
    check_selection(targets, args.all, args.yes)
    idle_s = idle_of(args)
    if args.plot is not None:
        check_plot_path(args.plot)
    if args.all and not args.yes:
        require_terminal(stdin)  # before even planning
    plan = make_plan(targets)
    check_explicit(plan, targets)
    if args.all and not args.yes:
        confirm_all(plan, args.reps, stdin, out)
    return BenchOptions(
        targets=plan.targets,
        reps=args.reps,
        idle_s=idle_s,
        dirty_mib=args.dirty,
        probe=args.probe,
        freeze=freeze_options(args),
    )


class ProgressBar:
    """A progress bar rewritten in place on a terminal."""

    def __init__(self, out: TextIO, total: int, width: int = 30) -> None:
        self.out = out
        self.total = total
        self.width = width
        self.shown = False

    def __call__(self, done: int, sample: RepSample | None) -> None:
        filled = round(self.width * done / self.total)
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}"
        if sample is not None:
            text += f"  last window {human_ns(sample.window_ns)}"
        self.out.write("\r\033[K" + text)
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        """Erase the bar before the results are printed."""
        if self.shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self.shown = False


def summary_rows(result: BenchResult) -> list[tuple[str, Summary]]:
    """The table's rows: window, pre-flush, dirty write, per filesystem freeze and thaw, probe stalls."""
    s = result.summary()
    rows: list[tuple[str, Summary | None]] = [
        ("window", s["window"]),
        ("pre-flush", s["preflush"]),
        ("dirty write", s["dirty_write"]),
    ]
    for mp, fs in s["filesystems"].items():
        rows.append((f"freeze {mp}", fs["freeze"]))
        rows.append((f"thaw {mp}", fs["thaw"]))
    for p in result.probes:
        rows.append((f"probe stall {p.mount_point}", p.stall))
    return [(label, summary) for label, summary in rows if summary is not None]


def render_table(rows: Sequence[tuple[str, Summary]]) -> list[str]:
    """A fixed-width table of summaries in human units."""
    lw = max([len(label) for label, _ in rows] + [6])
    heads = ("min", "median", "p90", "p99", "max")
    lines = [f"{'':<{lw}} {'n':>7} " + " ".join(f"{h:>9}" for h in heads)]
    for label, s in rows:
        values = (s.min_ns, s.median_ns, s.p90_ns, s.p99_ns, s.max_ns)
        lines.append(f"{label:<{lw}} {s.n:>7} " + " ".join(f"{human_ns(v):>9}" for v in values))
    return lines


def mode_text(options: dict[str, Any]) -> str:
    """How the repetitions were spaced, as the text output and the plot say it."""
    if options["mode"] == "warm":
        return "warm (back to back)"
    return f"cold ({options['idle_s']:g} s idle before each)"


def print_bench(result: BenchResult, out: TextIO) -> None:
    """A benchmark's result for a terminal: what ran, the table, the window histogram, the probes."""
    o = result.options
    what = ", ".join(f"{t['mount_point']} ({t['fstype']})" for t in result.targets)
    extras = [mode_text(o), "pre-flush" if o["preflush"] else "no pre-flush"]
    if o["dirty_mib"]:
        extras.append(f"{o['dirty_mib']} MiB dirty per target")
    if o.get("expedite_rcu"):
        extras.append("expedited RCU")
    if o.get("parallel"):
        extras.append("parallel freeze")
    if o["probe"]:
        extras.append("writer-stall probe")
    out.write(f"bench: {len(result.samples)} of {result.requested} freezes of {what}; {', '.join(extras)}\n")
    rows = summary_rows(result)
    if rows:
        out.write("\n".join(render_table(rows)) + "\n")
        out.write(f"(percentiles {PERCENTILE_METHOD}: every figure is a measured value)\n")
    windows = [x.window_ns for x in result.samples]
    if windows:
        out.write("\nwindow histogram:\n")
        out.write("\n".join(render_histogram(histogram(windows))) + "\n")
    for p in result.probes:
        if p.error:
            out.write(f"probe on {p.mount_point}: {p.error}\n")
        if p.longest:
            worst = p.longest[0]
            met = f"during repetition {worst.rep}" if worst.rep is not None else "outside any window"
            out.write(
                f"probe on {p.mount_point}: {p.iterations} writes, longest stall "
                f"{human_ns(worst.duration_ns)} ({met})\n"
            )
    for w in result.warnings:
        out.write(f"warning: {w}\n")
    if result.interrupted_by:
        out.write(f"interrupted by {result.interrupted_by}: partial results\n")
    if result.error:
        out.write(f"error: {result.error}\n")


def _exit_code(bench: Bench) -> int:
    if bench.failure is not None:
        return int(exit_code_for(bench.failure))
    if bench.result.interrupted_by is not None:
        return 128 + int(signal.Signals[bench.result.interrupted_by])
    return int(Exit.OK)


def cmd_bench(args: argparse.Namespace) -> int:
    """``quiesce bench``."""
    options = options_from_args(args, sys.stdin, sys.stderr)
    bar = ProgressBar(sys.stderr, options.reps) if sys.stderr.isatty() else None
    with stop_on_signals() as flag:
        bench = Bench(options, progress=bar, stop=flag)
        if bar is not None:
            bar(0, None)
        try:
            bench.run()
        except KeyboardInterrupt:  # only when the handler could not be installed
            flag.signum = flag.signum or signal.SIGINT
        finally:
            if bar is not None:
                bar.clear()
    if flag.signum is not None:
        bench.result.interrupted_by = signal.Signals(flag.signum).name
    code = _exit_code(bench)
    plotted = None
    if args.plot is not None and bench.result.samples:
        plotted = write_plot(bench.result, args.plot)
        if plotted is not None and code == Exit.OK:
            code = int(Exit.ERROR)
    if args.json:
        doc = bench.result.to_dict() | {"exit": code}
        if args.plot is not None:
            doc["plot"] = {"path": args.plot, "written": bench.result.samples != [] and plotted is None}
            doc["plot"]["error"] = plotted
        emit_json(doc, sys.stdout)
    else:
        print_bench(bench.result, sys.stdout)
        if isinstance(bench.failure, ThawError):
            print("a filesystem may still be frozen: see `quiesce status`, `quiesce thaw`", file=sys.stderr)
    if args.plot is not None:
        if plotted is not None:
            print(f"error: --plot {args.plot}: {plotted}", file=sys.stderr)
        elif bench.result.samples:
            print(f"plot written to {args.plot}", file=sys.stderr)
        else:
            print(f"no plot: no repetition completed, {args.plot} not written", file=sys.stderr)
    return code


def write_plot(result: BenchResult, path: str) -> str | None:
    """Draw the result to ``path``; None when written, else why not (the run's figures still print)."""
    try:
        name, dir_fd = plot_directory(path)
    except ValueError as err:
        return str(err)
    try:
        picture = io.BytesIO()
        draw_bench(result, path, mode_text(result.options), into=picture)
        # Through the checked directory's fd, never through a link: as the metrics file.
        atomic_write(dir_fd, name, picture.getvalue(), 0o644)
    except (OSError, ValueError) as err:
        return str(err)
    finally:
        os.close(dir_fd)
    return None


# ---------------------------------------------------------------------------
# the parser


#: Bounds of the numeric options (README and --help name them).
MAX_REPS = 1_000_000
MAX_DIRTY_MIB = 1 << 20

_count = argtypes.count(1, MAX_REPS)
_mib = argtypes.count(0, MAX_DIRTY_MIB, "MiB")
_seconds = argtypes.seconds(0, argtypes.MAX_SECONDS)


BENCH_DESCRIPTION_TEMPLATE = """\
Measure the frozen window on the given filesystems: N repetitions of a whole
freeze (lock, ledger, guardian armed, pre-flush), each frozen and thawed at once
in one native call. Prints min/median/p90/p99/max of the window, of each
filesystem's FIFREEZE and FITHAW, of the pre-flush and of the probe's stalls,
with a histogram of the windows (--json: every sample in ns and the summaries).
Percentiles are nearest-rank: every figure is a measured value.

Cold by default: the bench idles --idle S (default %(idle)s) right before each
repetition's freeze, as an hourly or daily backup's freeze comes after a quiet
spell. After a thaw, a FIFREEZE of the same filesystem skips its RCU
grace-period wait (tens of ms) until one grace period has passed (10 to 30 ms
on a 2-core VM); each repetition then pays it, as a real backup does. --warm
runs them back to back instead: the engine's own overhead, not what a backup
sees. The text and the JSON (options.mode, options.idle_s) say which ran.

--plot FILE (.svg or .png) draws the windows' distribution (and each
filesystem's FIFREEZE and FITHAW) and the timeline of the median repetition:
each filesystem's pre-flush, FIFREEZE, frozen time and FITHAW. It needs
matplotlib: %(hint)s. Without it, or with another suffix,
bench refuses before freezing anything (exit 2).

Targets must be named (mount points or globs); a named target that cannot be
frozen is an error. --all freezes every freezable filesystem of this machine,
/ included: it asks for "yes" on a terminal, or needs --yes.

--dirty MB: before each repetition a helper process per target deletes its
previous file and writes a new one of MB MiB (no fsync), so the pre-flush and
FIFREEZE have that much to write; the last file is deleted at the end. Each
target needs twice that much free space.

--probe: during the whole benchmark a helper process per target writes 4 KiB
and calls fdatasync in a loop, timing each iteration. Its stall is what an
application writing to that filesystem sees: roughly the window plus scheduling
(the wait until it runs again after the thaw) plus its own flush. It can be
shorter than the window: a cold FIFREEZE first waits out an RCU grace period
(tens of ms) while writes still go through (expedited RCU shortens it). Each
stall is matched to the repetition whose window it overlapped, if any. The
probe's file has no name (O_TMPFILE) and vanishes with it.

Ctrl-C (or SIGTERM) stops after the current repetition, which is always
thawed, prints the partial results and exits 130 (143).
"""

BENCH_DESCRIPTION = BENCH_DESCRIPTION_TEMPLATE % {"idle": f"{DEFAULT_IDLE_S:g}", "hint": INSTALL_HINT}


def add_parser(sub: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]) -> None:
    """Register ``bench`` on the subcommands ``sub``.

    ``parents`` supply ``--json``, ``--run-dir`` and the freeze's tuning
    (``--timeout``, ``--no-preflush``, ``--expedite-rcu``, ``--parallel``),
    as ``quiesce freeze`` has them.
    """
    p = sub.add_parser(
        "bench",
        parents=parents,
        help="measure the frozen window (min/median/p90/p99/max, histogram, writer stalls)",
        description=BENCH_DESCRIPTION,
        epilog=exit_help("bench"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="mount points (or globs) to freeze")
    p.add_argument(
        "-n",
        "--reps",
        type=_count,
        default=DEFAULT_REPS,
        metavar="N",
        help=f"repetitions (default {DEFAULT_REPS}; 1 to {MAX_REPS})",
    )
    spacing = p.add_mutually_exclusive_group()
    spacing.add_argument(
        "--idle",
        "--interval",
        dest="idle",
        type=_seconds,
        default=None,
        metavar="S",
        help=f"idle seconds before each repetition: cold windows (default {DEFAULT_IDLE_S:g}; "
        f"0 to {argtypes.MAX_SECONDS:g}; --interval is its old name)",
    )
    spacing.add_argument(
        "--warm",
        action="store_true",
        help="repetitions back to back, as --idle 0: warm windows (a FIFREEZE soon after the "
        "previous thaw usually skips the grace-period wait)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the window distribution and one repetition's timeline to FILE (.svg or .png; "
        f"needs matplotlib: {INSTALL_HINT})",
    )
    p.add_argument(
        "--dirty",
        type=_mib,
        default=0,
        metavar="MB",
        help="MiB of unsynced data written on each target before each repetition "
        f"(default 0; at most {MAX_DIRTY_MIB})",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="run a write+fdatasync loop per target and report its longest stall "
        "(what an application sees: window plus scheduling)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every freezable filesystem of this machine, / included (asks for confirmation)",
    )
    p.add_argument("--yes", action="store_true", help="confirm --all without asking")
    p.set_defaults(func=cmd_bench)
