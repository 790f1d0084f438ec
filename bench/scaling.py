"""How the frozen window grows with the number of filesystems: 1, 4, 16, 32 small ext4.

    sudo python bench/scaling.py [--ns 1,4,16,32] [--reps 15] [--warmup 2] [--cold-reps 7]
                                 [--cold-pause 0.5] [--image-mb 16] [--no-rcu]
                                 [--json out.json] [--results PATH | --no-results]

One run builds max(N) small ext4 loop filesystems (the cheapest to make) in a
private mount namespace, plans them with ``quiesce.azure.planning.make_plan`` and checks
every planned target is one of its own loop mounts. For each N it freezes the
first N targets of the plan (the same nested subsets for every contender):

  floor       bench/floor.c on the N mounts: FIFREEZE in order, FITHAW in
              reverse, one window per process.
  engine      quiesce.engine.native.Session.cycle(), guardian armed, sequential.
  engine_par  the same after Session.set_parallel(groups), groups from
              quiesce.engine.order.parallel_groups (independent filesystems: one
              group, one thread each, released together).
  default     quiesce.engine.freeze.Freeze with the default FreezeOptions (what
              `quiesce freeze`/`run` do with no flags: expedited RCU, parallel
              freeze and thaw on threads started before the window, pre-flush).

Two phases:
  warm  per N, ``--warmup`` discarded rounds then ``--reps`` rounds, each
        running every contender once (the first one rotating), back to back.
  cold  ``--cold-reps`` rounds; each round runs every (contender, N), the
        first one rotating, with ``--cold-pause`` s idle before each
        measurement; with /sys/kernel/rcu_expedited set for the window as
        well (the *_rcu contenders; ``--no-rcu`` leaves them out), restored
        right after each one.

Reported: median windows per N and window(N) / window(1) for every contender,
and the goal of the benchmark issue, window(32) / window(1) well below 32
(checked here as at most half of linear: <= 16), for the engine; and, cold,
the default path at the largest N against the sequential floor with
rcu_expedited=1 (at most DEFAULT_FLOOR_RCU_GOAL of it). Written to
the ``scaling`` section of bench/RESULTS.md (``--results PATH``;
``--no-results`` skips it). The sandbox thaws, unmounts and detaches
everything however the run ends, and the RCU knob is left as it was found.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import results
from compare_window import Bench, Contender, Sample, interleaved
from floorprog import compile_command, compile_floor
from qga import GuestAgent, agent_binary
from results import Check
from safety import enter_private_namespace, rcu_left_as_found, refusal, sandbox_targets, sigterm_exits

from quiesce.bench.stats import median
from quiesce.engine.plan import Target
from quiesce.engine.rcu import RCU_EXPEDITED
from quiesce.sandbox import Sandbox

TOOLS = ("cc", "losetup", "mount", "umount", "mkfs.ext4")
FSTYPE = "ext4"
#: window(N) / window(1) is held to this fraction of N (the issue: "well below 32").
SCALING_GOAL_FRACTION = 0.5
#: The contenders the scaling goal applies to (quiesce's engine, not the floor).
GOAL_KEYS = ("engine", "engine_par")
#: Cold, at the largest N: the default path's window at most this times the floor_rcu one.
DEFAULT_FLOOR_RCU_GOAL = 0.4
#: A clean FIFREEZE longer than this waited for an RCU grace period (warm: ~0.3 ms; a wait: >= 20 ms).
GP_WAIT_NS = 5_000_000

LABELS = {
    "floor": "floor (C, sequential)",
    "engine": "engine, sequential",
    "engine_par": "engine, parallel",
    "floor_rcu": "floor + rcu_expedited",
    "engine_rcu": "engine, sequential + rcu_expedited",
    "engine_par_rcu": "engine, parallel + rcu_expedited",
    "default": "quiesce defaults (Freeze path)",
    "qemu_ga": "qemu-ga freeze-list + thaw",
}
#: Cold, at the largest N: the default path's window at most this times qemu-ga's.
DEFAULT_QEMU_GA_GOAL = 0.05


def contenders_for(bench: Bench, rcu: bool) -> list[tuple[str, Callable[[], Sample]]]:
    """The contenders on one subset of filesystems; the expedited-RCU ones with ``rcu``."""
    out: list[tuple[str, Callable[[], Sample]]] = [
        ("floor", bench.floor),
        ("engine", bench.engine),
        ("engine_par", lambda: bench.engine(parallel=True)),
        ("default", bench.freeze_path),
    ]
    if rcu:
        out += [
            ("floor_rcu", bench.floor_rcu),
            ("engine_rcu", lambda: bench.engine(rcu=True)),
            ("engine_par_rcu", lambda: bench.engine(parallel=True, rcu=True)),
        ]
    if rcu and bench.agent is not None:  # cold only: a cold peer is what a backup meets
        out.append(("qemu_ga", bench.qemu_ga))
    return out


def key_of(name: str, n: int) -> str:
    """The sample key of a contender on N filesystems."""
    return f"{name}@{n}"


def warm_phase(benches: dict[int, Bench], args: argparse.Namespace) -> dict[str, list[Sample]]:
    """Per N: discarded warm-up rounds, then interleaved rounds back to back."""
    samples: dict[str, list[Sample]] = {}
    for n, bench in benches.items():
        contenders: list[Contender] = [
            (key_of(name, n), LABELS[name], run) for name, run in contenders_for(bench, rcu=False)
        ]
        if args.warmup:
            interleaved(contenders, args.warmup, progress=f"warm-up, N = {n}")
        samples.update(interleaved(contenders, args.reps, progress=f"warm, N = {n}"))
    return samples


def cold_phase(benches: dict[int, Bench], args: argparse.Namespace, rcu: bool) -> dict[str, list[Sample]]:
    """Rounds over every (contender, N), each measurement after ``--cold-pause`` s idle."""
    contenders: list[Contender] = [
        (key_of(name, n), LABELS[name], run)
        for n, bench in benches.items()
        for name, run in contenders_for(bench, rcu)
    ]

    def pause() -> Sample:
        time.sleep(args.cold_pause)
        return {}

    return interleaved(contenders, args.cold_reps, before_each=pause, progress="cold")


def scaling_summary(samples: dict[str, list[Sample]], ns: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per contender: the summary at each N and median(N) / median(smallest N)."""
    out: dict[str, dict[str, Any]] = {}
    names = [name for name in LABELS if key_of(name, ns[0]) in samples]
    for name in names:
        per_n = {n: results.summary([s["window_ns"] for s in samples[key_of(name, n)]]) for n in ns}
        base = per_n[ns[0]]["median_ns"]
        entry: dict[str, Any] = {
            "label": LABELS[name],
            "per_n": per_n,
            "ratio_to_first": {n: per_n[n]["median_ns"] / base for n in ns},
        }
        if name.startswith("engine"):
            by_n = {n: samples[key_of(name, n)] for n in ns}
            # The sum of the FITHAW calls (parallel ones overlap: more than the time they take).
            entry["thaw_sum_ns"] = {n: median(sum(s["thaw_ns"]) for s in v) for n, v in by_n.items()}
            entry["slowest_freeze_ns"] = {n: median(max(s["freeze_ns"]) for s in v) for n, v in by_n.items()}
            entry["waited_reps"] = {
                n: sum(max(s["freeze_ns"]) > GP_WAIT_NS for s in v) for n, v in by_n.items()
            }
            entry["reps"] = {n: len(v) for n, v in by_n.items()}
        if name.startswith("engine_par"):
            # How long after the first thread the last one started its FIFREEZE.
            entry["start_spread_ns"] = {
                n: median(max(s["freeze_at_ns"]) for s in samples[key_of(name, n)]) for n in ns
            }
        out[name] = entry
    return out


def print_scaling(title: str, summary: dict[str, dict[str, Any]], ns: Sequence[int]) -> None:
    """Medians per N (ms), then the ratios to the smallest N."""
    print(title)
    head = "".join(f"{'N=' + str(n):>11}" for n in ns)
    ratios = "".join(f"{f'{n}/{ns[0]}':>9}" for n in ns[1:])
    print(f"  {'contender (median window, ms)':<36}{head}{ratios}")
    for s in summary.values():
        cells = "".join(f"{s['per_n'][n]['median_ns'] / 1e6:11.3f}" for n in ns)
        rcells = "".join(f"{s['ratio_to_first'][n]:8.2f}x" for n in ns[1:])
        print(f"  {s['label']:<36}{cells}{rcells}")
    print(
        f"  engine details per N: FITHAW total (median, ms) / slowest FIFREEZE (median, ms) / reps with "
        f"a FIFREEZE > {GP_WAIT_NS / 1e6:g} ms"
    )
    for s in summary.values():
        if "thaw_sum_ns" in s:
            cells = "".join(f"{engine_cell(s, n):>22}" for n in ns)
            print(f"  {s['label']:<36}{cells}")
    for s in summary.values():
        if "start_spread_ns" in s:
            spread = ", ".join(f"N={n} {v / 1e6:.3f}" for n, v in s["start_spread_ns"].items())
            print(f"  {s['label']}: last FIFREEZE start after the first, median: {spread} ms")


def engine_cell(s: dict[str, Any], n: int) -> str:
    """FITHAW total / slowest FIFREEZE / reps that waited, of one engine contender at one N."""
    return (
        f"{s['thaw_sum_ns'][n] / 1e6:.2f} / {s['slowest_freeze_ns'][n] / 1e6:.2f} / "
        f"{s['waited_reps'][n]}/{s['reps'][n]}"
    )


def goal_checks(phase: str, summary: dict[str, dict[str, Any]], ns: Sequence[int]) -> list[Check]:
    """window(max N) / window(1) <= half of max N, for the engine's contenders; the default path
    against the sequential floor with rcu_expedited=1 at the largest N."""
    top = ns[-1]
    checks = []
    if "default" in summary and "floor_rcu" in summary:
        d, f = summary["default"], summary["floor_rcu"]
        checks.append(
            Check(
                f"default window at N={top} <= {DEFAULT_FLOOR_RCU_GOAL}x the sequential floor with "
                f"rcu_expedited=1, {phase}",
                f"{d['label']}: median / {f['label']} median",
                d["per_n"][top]["median_ns"] / f["per_n"][top]["median_ns"],
                DEFAULT_FLOOR_RCU_GOAL,
            )
        )
    if "default" in summary and "qemu_ga" in summary:
        d, q = summary["default"], summary["qemu_ga"]
        checks.append(
            Check(
                f"default window at N={top} <= {DEFAULT_QEMU_GA_GOAL}x qemu-ga's, {phase}",
                f"{d['label']}: median / {q['label']} median",
                d["per_n"][top]["median_ns"] / q["per_n"][top]["median_ns"],
                DEFAULT_QEMU_GA_GOAL,
            )
        )
    if ns[0] != 1 or len(ns) < 2:
        return checks
    for name in summary:
        if name.removesuffix("_rcu") not in GOAL_KEYS:
            continue
        s = summary[name]
        checks.append(
            Check(
                f"window({top}) / window(1) well below {top} (<= {top * SCALING_GOAL_FRACTION:g}), {phase}",
                f"{s['label']}: median / median",
                s["ratio_to_first"][top],
                top * SCALING_GOAL_FRACTION,
            )
        )
    return checks


def scaling_table(summary: dict[str, dict[str, Any]], ns: Sequence[int]) -> str:
    """One phase as a markdown table: medians per N, then the ratios."""
    headers = ["contender", *(f"N={n} ms" for n in ns), *(f"{n}/{ns[0]}" for n in ns[1:])]
    rows = [
        [
            s["label"],
            *(results.ms(s["per_n"][n]["median_ns"]) for n in ns),
            *(results.ratio(s["ratio_to_first"][n]) for n in ns[1:]),
        ]
        for s in summary.values()
    ]
    return results.table(headers, rows)


def results_section(args: argparse.Namespace, doc: dict[str, Any], checks: Sequence[Check]) -> str:
    """This run's section of bench/RESULTS.md."""
    ns = doc["ns"]
    parts = [
        f"{max(ns)} ext4 filesystems, {args.image_mb} MiB sparse loop images; N = the first N of the "
        "plan's freeze order, the same for every contender. Window: first FIFREEZE start to last "
        "FITHAW end, median of the reps; ratios are median(N) / median(N=1)."
    ]
    for phase, title in (("cold", "Cold"), ("warm", "Warm")):  # cold first: a real backup's freeze
        if phase not in doc:
            continue
        summary = doc[phase]["summary"]
        if phase == "warm":
            what = f"{args.reps} reps per N, back to back, after {args.warmup} discarded"
        else:
            what = f"{args.cold_reps} reps, {args.cold_pause:g} s idle before each measurement"
        details = results.table(
            ["engine contender", *(f"N={n}" for n in ns)],
            [[s["label"], *(engine_cell(s, n) for n in ns)] for s in summary.values() if "thaw_sum_ns" in s],
        )
        waited = [
            f"{s['label']} at N={n} in {s['waited_reps'][n]} of {s['reps'][n]}"
            for s in summary.values()
            if "waited_reps" in s
            for n in ns
            if s["waited_reps"][n]
        ]
        if phase == "warm" and waited:
            details += (
                "\n\nNot all warm: a FIFREEZE waited for a grace period for "
                + "; ".join(waited)
                + " reps. Back to back is warm only while each filesystem's previous FITHAW is less "
                "than about one grace period before its next FIFREEZE. With many filesystems the "
                "one-by-one FIFREEZEs (sequential) and the one-by-one FITHAWs (both) stretch that gap "
                "for the filesystems thawed first and frozen last, and each wait lengthens the "
                "window for the ones after it: the median at large N can land on either side."
            )
        spreads = [
            f"- {s['label']}: last FIFREEZE started "
            + ", ".join(f"{v / 1e6:.3f} ms (N={n})" for n, v in s["start_spread_ns"].items())
            + " after the first (median)"
            for s in summary.values()
            if "start_spread_ns" in s
        ]
        parts.append(
            f"### {title} ({what})\n\n"
            + scaling_table(summary, ns)
            + "\n\nThe engine's windows in parts, per N: FITHAW total (median ms of the sum of every "
            f"FITHAW call; parallel ones overlap, so their sum exceeds the time they take) / slowest "
            f"FIFREEZE (median ms) / reps in which a FIFREEZE took "
            f"more than {GP_WAIT_NS / 1e6:g} ms (an RCU grace-period wait):\n\n"
            + details
            + "\n\n"
            + "\n".join(spreads)
        )
    return results.section(
        "scaling.py: the window against the number of filesystems",
        doc=doc,
        parts=parts,
        checks=checks,
    )


def parse_ns(text: str) -> list[int]:
    """``1,4,16,32`` as a sorted list of distinct positive counts."""
    try:
        ns = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not ns or ns[0] < 1 or ns[-1] > 64:
        raise argparse.ArgumentTypeError("filesystem counts must be between 1 and 64")
    return ns


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked."""
    p = argparse.ArgumentParser(
        prog="scaling.py", description="The frozen window against the number of filesystems."
    )
    p.add_argument("--ns", type=parse_ns, default=[1, 4, 16, 32], help="filesystem counts (1,4,16,32)")
    p.add_argument("--reps", type=int, default=15, help="warm reps per N (default 15)")
    p.add_argument("--warmup", type=int, default=2, help="discarded warm rounds per N first (default 2)")
    p.add_argument("--cold-reps", type=int, default=7, help="cold reps (default 7; 0 skips)")
    p.add_argument("--cold-pause", type=float, default=0.5, help="idle seconds before a cold measurement")
    p.add_argument("--image-mb", type=int, default=16, help="sparse image size per filesystem (16)")
    p.add_argument("--no-rcu", action="store_true", help="leave out the expedited-RCU cold contenders")
    p.add_argument("--no-qemu-ga", action="store_true", help="leave the QEMU guest agent out (cold)")
    results.add_output_arguments(p)
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.cold_reps < 0 or args.cold_pause < 0:
        p.error("--reps must be >= 1; --warmup, --cold-reps and --cold-pause >= 0")
    if args.image_mb < 16:
        p.error("--image-mb must be at least 16")
    return args


def build(sb: Sandbox, count: int, image_mb: int) -> list[Target]:
    """Make ``count`` ext4 filesystems; return them as planned targets, checked to be ours."""
    return sandbox_targets([sb.add(FSTYPE, image_mb, name=f"{FSTYPE}-{i:02d}") for i in range(count)])


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Build the world, run the phases, print the tables; returns the JSON document."""
    started = time.monotonic()
    ns: list[int] = args.ns
    rcu = not args.no_rcu and os.path.exists(RCU_EXPEDITED)
    doc: dict[str, Any] = {
        "command": results.command_line(argv),
        "machine": results.machine(),
        "config": {**vars(args), "rcu": rcu},
        "ns": ns,
    }
    m = doc["machine"]
    print(f"command: {doc['command']}")
    print(
        f"machine: nproc {m['nproc']}, {m['cpu_model']}, kernel {m['kernel']}, python {m['python']}, "
        f"loadavg {m['loadavg'][0]:.2f}"
    )
    if not args.no_rcu and not rcu:
        print(f"note: {RCU_EXPEDITED} missing: the expedited-RCU contenders are left out")
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
        targets = build(sb, ns[-1], args.image_mb)
        print(
            f"filesystems: {len(targets)} x {FSTYPE}, {args.image_mb} MiB sparse loop images, "
            f"built in {time.monotonic() - t0:.1f} s; floor: {doc['floor_compile']}"
        )
        benches: dict[int, Bench] = {}
        for n in ns:
            bench = Bench(targets[:n], floor_bin, run_dir, dirty_mb=0)
            bench.open()
            stack.callback(bench.close)  # before the sandbox unmounts
            benches[n] = bench
            if set(bench.groups) != {0}:
                raise RuntimeError(f"independent filesystems planned in several groups: {bench.groups}")
        binary = None if args.no_qemu_ga else agent_binary()
        if binary is not None:
            # One agent for every N, allowed every sandbox mount; stopped before the sandbox goes.
            sandbox_mounts = {t.mount.mount_point: t.mount.source for t in targets}
            agent = stack.enter_context(GuestAgent(binary, work, sandbox_mounts))
            agent.start()
            doc["qemu_ga_argv"] = agent.argv
            for bench in benches.values():
                bench.agent = agent
        else:
            print("qemu-ga: not installed or left out (apt-get install qemu-guest-agent)")
        for bench in benches.values():
            bench.settle()
        benches[ns[-1]].first_freezes()  # the first freeze after mkfs is not measured

        checks: list[Check] = []
        warm = warm_phase(benches, args)
        summary = scaling_summary(warm, ns)
        doc["warm"] = {"samples": warm, "summary": summary}
        checks += goal_checks("warm", summary, ns)
        print()
        print_scaling(f"WARM: back to back, {args.reps} reps per N", summary, ns)
        if args.cold_reps:
            cold = cold_phase(benches, args, rcu)
            summary = scaling_summary(cold, ns)
            doc["cold"] = {"samples": cold, "summary": summary}
            checks += goal_checks("cold", summary, ns)
            print()
            print_scaling(f"COLD: {args.cold_pause:g} s idle before each, {args.cold_reps} reps", summary, ns)
    doc["checks"] = checks
    doc["duration_s"] = time.monotonic() - started
    print()
    for check in checks:
        print(check.line())
    return doc


def draw_plots(directory: os.PathLike[str], doc: dict[str, Any]) -> list[str]:
    """One picture per phase (cold first): the windows of every contender at every N."""
    names = []
    for phase in ("cold", "warm"):
        if phase in doc:
            samples = doc[phase]["samples"]
            labels = {k: f"{LABELS[k.split('@')[0]]}, N={k.split('@')[1]}" for k in samples}
            title = f"scaling.py: the window against the number of ext4 filesystems, {phase}"
            names.append(results.draw_phase(directory, f"scaling-{phase}", title, samples, labels))
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root and the tools are there, run, write the results; the exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    refused = refusal(
        "scaling.py",
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
    body = None if args.no_results else results_section(args, doc, doc["checks"])
    results.write_outputs(args, "scaling", body, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
