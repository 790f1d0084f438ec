"""The fleet's figures: one cut across 4, 8 and 16 agents, side by side with per-VM sequential snapshots.

Run as root from the repository root (etcd-server, xfsprogs, e2fsprogs and
``quiesce[fleet]`` installed)::

    python bench/fleet.py [--agents 4,8,16] [--cycles 20] [--single 10] [--sequential 2]
                          [--perf-cycles 10] [--rcu off|on|both] [--json out.json] [--out bench/FLEET.md]

Each size builds a lab (``quiesce.fleet.lab``: etcd and N agents, each in its
own network and mount namespace with its own ext4 loop filesystem; snapshot
step ``none``, so what is timed is the coordination) and measures, per fleet
run, from the nodes' own records (all on this machine's CLOCK_MONOTONIC):

- freeze skew: first FIFREEZE start to last FIFREEZE end, across the nodes;
- fleet window: first FIFREEZE start to last FITHAW end;
- coordination overhead: the last node's ``ready`` to the last FIFREEZE end;
- each node's own window (its first FIFREEZE to its last FITHAW);

and, for comparison, a node's single-node window (``quiesce run`` with the
same config, no fleet), and the per-VM sequential pattern (one node after
another, each its own one-node run): its span from the first freeze to the
last thaw. With ``perf`` installed, ``--perf-cycles`` more runs are sampled
(``window_cpu.py``): whose CPU each fleet window took (etcd, the agents,
the rest), against what the machine's CPUs could give in that time.
``--rcu on`` sets ``/sys/kernel/rcu_expedited`` for the whole measurement
and restores it (the agents' own ``expediteRcu`` would race on one
machine); ``off`` leaves it as found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import window_cpu
from safety import knob_claimed

RCU = Path("/sys/kernel/rcu_expedited")
#: The fleet window after the last FIFREEZE, step by step (the nodes' own moments).
STEPS = {
    "to_cut": "last FIFREEZE end → cut committed",
    "cut_known": "cut committed → the last node knows it",
    "to_thaw": "cut committed → thaw committed",
    "to_thawed": "thaw committed → last FITHAW end",
}


def rcu_now() -> str:
    """``/sys/kernel/rcu_expedited`` now ("-" without it)."""
    try:
        return RCU.read_text().strip()
    except OSError:
        return "-"


def _reads(seen: dict[str, int]) -> str:
    return ", ".join(f"{value} in {count} reads" for value, count in sorted(seen.items()))


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _dones(lab: Any, run_id: str) -> list[dict[str, Any]]:
    from quiesce.fleet.coordinator import read_run
    from quiesce.fleet.protocol import Keys

    view = lab.client_call(lambda s: read_run(s, Keys("lab"), run_id))
    return [view.node("done", n).value for n in view.members]


def fleet_cycle(lab: Any) -> dict[str, float]:
    """One fleet run; its figures in ms."""
    code, out = lab.fleet_run("--deadline", "10")
    if code != 0:
        raise RuntimeError(f"fleet run failed: {out.get('error') or out.get('abort')}")
    d = _dones(lab, out["run_id"])
    first = min(x["freeze_start_mono_ns"] for x in d)
    last_frozen = max(x["freeze_end_mono_ns"] for x in d)
    last_thaw = max(x["thaw_end_mono_ns"] for x in d)

    # The nodes' moments, on the same clock (one machine): where the window's time goes. A step is
    # committed by the node whose report completed it, which records when its transaction returned.
    def committed(step: str) -> int | None:
        return next((x[f"{step}_committed_mono_ns"] for x in d if f"{step}_committed_mono_ns" in x), None)

    cut, thaw = committed("cut"), committed("thaw")
    steps = {}
    if cut is not None and thaw is not None:
        steps = {
            "to_cut": (cut - last_frozen) / 1e6,
            "cut_known": (max(x.get("cut_seen_mono_ns", cut) for x in d) - cut) / 1e6,
            "to_thaw": (thaw - cut) / 1e6,
            "to_thawed": (last_thaw - thaw) / 1e6,
        }
    return {
        "span_ns": (first, last_thaw),
        "skew": (last_frozen - first) / 1e6,
        "window": (last_thaw - first) / 1e6,
        "overhead": (last_frozen - max(x["ready_mono_ns"] for x in d)) / 1e6,
        "nodes": [x["window_ns"] / 1e6 for x in d],
        "node_cpu": [x["window_cpu_ns"] / 1e6 for x in d if "window_cpu_ns" in x],
        **steps,
    }


def single_window(lab: Any, node: Any) -> float:
    """A plain single-node ``quiesce run`` on the node, same config: its window in ms."""
    argv = [
        *lab.node_argv(node),
        sys.executable,
        "-m",
        "quiesce",
        "run",
        "--config",
        str(node.config),
        "--no-pluginhost",
        "--no-vmbackup-conf",
        "--run-dir",
        str(node.run_dir),
        "--json",
        "--log-format",
        "none",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    result = json.loads(done.stdout)
    return float(result["freeze"]["window_ns"]) / 1e6


def sequential(lab: Any) -> dict[str, float]:
    """Per-VM snapshots one after another (each a one-node run): first freeze to last thaw, in ms."""
    starts, ends = [], []
    for node in lab.nodes:
        code, out = lab.fleet_run("--members", node.name, "--deadline", "10")
        if code != 0:
            raise RuntimeError(f"one-node run failed: {out}")
        (d,) = _dones(lab, out["run_id"])
        starts.append(d["freeze_start_mono_ns"])
        ends.append(d["thaw_end_mono_ns"])
    return {"span": (max(ends) - min(starts)) / 1e6}


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """All figures for one fleet size."""
    from quiesce.fleet.lab import Lab

    # /sys/kernel/rcu_expedited is the machine's: other people's tests may change it meanwhile.
    # It is read before and after every measurement, and the table says what was seen.
    seen: list[str] = []

    def sampled(fn: Any, *a: Any) -> Any:
        seen.append(rcu_now())
        try:
            return fn(*a)
        finally:
            seen.append(rcu_now())

    with Lab(n, deadline_s=10.0, snapshot_command=False, writer=False) as lab:
        for _ in range(2):  # warm-up: imports, connections, first freezes
            fleet_cycle(lab)
        cycles = [sampled(fleet_cycle, lab) for _ in range(args.cycles)]
        cpu_split = window_cpu_split(lab, args.perf_cycles)
        singles = [sampled(single_window, lab, lab.nodes[k % n]) for k in range(args.single)]
        seq = [sequential(lab)["span"] for _ in range(args.sequential)]
    nodes = [w for c in cycles for w in c["nodes"]]
    row: dict[str, Any] = {"agents": n, "cycles": len(cycles), "rcu_seen": dict(Counter(seen))}
    for key in ("skew", "window", "overhead"):
        vals = [c[key] for c in cycles]
        row[key] = {"p50": pct(vals, 50), "p99": pct(vals, 99), "max": max(vals)}
    for key in STEPS:
        vals = [c[key] for c in cycles if key in c]
        if vals:
            row[key] = {"p50": pct(vals, 50), "p99": pct(vals, 99), "max": max(vals)}
    row["node_window"] = {"p50": pct(nodes, 50), "p99": pct(nodes, 99), "max": max(nodes)}
    cpu = [w for c in cycles for w in c["node_cpu"]]
    if cpu:
        row["node_cpu"] = {"p50": pct(cpu, 50), "p99": pct(cpu, 99), "max": max(cpu)}
    row["single_window"] = {"p50": pct(singles, 50), "p99": pct(singles, 99), "max": max(singles)}
    row["sequential_span"] = {"p50": pct(seq, 50), "max": max(seq)} if seq else None
    row["node_vs_single_p50"] = row["node_window"]["p50"] / row["single_window"]["p50"]
    row["window_cpu"] = cpu_split
    return row


def window_cpu_split(lab: Any, runs: int) -> dict[str, Any]:
    """``runs`` more fleet runs under ``perf``: the mean CPU per window by process, or why not."""
    why = window_cpu.available() if runs > 0 else "not asked for (--perf-cycles 0)"
    if why is not None:
        return {"skipped": why}
    pids = {
        "etcd": window_cpu.process_tree(lab.etcd.pid),
        "agents": set().union(*(window_cpu.process_tree(n.agent.pid) for n in lab.nodes)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sampler = window_cpu.Sampler(Path(tmp) / "perf.data")
        with sampler:
            spans = [fleet_cycle(lab)["span_ns"] for _ in range(runs)]
        rows = window_cpu.attribute(sampler.samples(), spans, pids, sampler.hz)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {"runs": len(rows), "hz": sampler.hz, "cpus": os.cpu_count() or 1, **mean}


def render(doc: dict[str, Any]) -> str:
    """The markdown report."""
    out = [
        "# Fleet figures",
        "",
        "Written by `bench/fleet.py`. Each table is one run on one machine: compare within it.",
        "",
        f"- machine: {doc['machine']}",
        f"- command: `{doc['command']}`",
        f"- load average at start {doc['load_start']}, at end {doc['load_end']} "
        "(a shared 2-core machine: other people's tests were running)",
        f"- duration: {doc['duration_s']:.0f} s",
        "",
    ]
    for variant in doc["variants"]:
        out += [
            f"## rcu_expedited {variant['rcu']}",
            "",
            "| agents | skew p50 / p99 | fleet window p50 / p99 | ready→frozen p50 / p99 "
            "| node window p50 / p99 | single-node window p50 / p99 | node/single p50 "
            "| per-VM sequential span p50 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in variant["rows"]:

            def pp(k: str, row: dict[str, Any] = r) -> str:
                return f"{row[k]['p50']:.1f} / {row[k]['p99']:.1f}"

            seq = r["sequential_span"]
            out.append(
                f"| {r['agents']} | {pp('skew')} | {pp('window')} | {pp('overhead')} | {pp('node_window')} "
                f"| {pp('single_window')} | {r['node_vs_single_p50']:.1f}x "
                f"| {'-' if seq is None else format(seq['p50'], '.0f')} |"
            )
        out.append("")
        seen = [f"{r['agents']} agents: " + _reads(r["rcu_seen"]) for r in variant["rows"] if "rcu_seen" in r]
        if seen:
            out += [
                "`/sys/kernel/rcu_expedited` as read before and after each fleet run and single-node "
                "run (other people's tests on this machine change it; the table is only as clean as "
                f"this): {'; '.join(seen)}.",
                "",
            ]
        steps = {**STEPS, "node_cpu": "one node's CPU while frozen (its agent, all threads)"}
        if all(k in r for r in variant["rows"] for k in steps):
            out += [
                "Where the window goes after the last FIFREEZE (p50 / p99, ms), and what one "
                "node's part of it costs the machine:",
                "",
                "| agents | " + " | ".join(steps.values()) + " |",
                "|---:|" + "---:|" * len(steps),
            ]
            for r in variant["rows"]:
                cells = " | ".join(f"{r[k]['p50']:.1f} / {r[k]['p99']:.1f}" for k in steps)
                out.append(f"| {r['agents']} | {cells} |")
            out.append("")
        out += _cpu_table(variant["rows"])
        big = next(r for r in variant["rows"] if r["agents"] == max(x["agents"] for x in variant["rows"]))
        out += [
            f"Goals at {big['agents']} agents (ms, p99 over {big['cycles']} runs): fleet window "
            f"{big['window']['p99']:.1f} (goal ≤ 50: {'met' if big['window']['p99'] <= 50 else 'NOT met'}), "
            f"skew {big['skew']['p99']:.1f} (goal ≤ 20: {'met' if big['skew']['p99'] <= 20 else 'NOT met'}), "
            f"node window p50 {big['node_vs_single_p50']:.1f}x the single-node one (goal ≤ 2x: "
            f"{'met' if big['node_vs_single_p50'] <= 2 else 'NOT met'}).",
            "",
        ]
    base = doc.get("baseline")
    if base:
        out += [
            f"## Against the baseline ({base['label']})",
            "",
            f"Baseline: `{base['command']}`, load average at start {base['load_start']}, at end "
            f"{base['load_end']}. Ratios now / baseline of the p50 (p99), below 1 is faster:",
            "",
            "| rcu_expedited | agents | fleet window | skew | ready→frozen | node window |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for variant in doc["variants"]:
            old = next((v for v in base["variants"] if v["rcu"] == variant["rcu"]), None)
            for r in variant["rows"]:
                rows = [] if old is None else old["rows"]
                o = next((x for x in rows if x["agents"] == r["agents"]), None)
                if o is None:
                    continue

                def ratio(k: str, r: dict[str, Any] = r, o: dict[str, Any] = o) -> str:
                    return f"{r[k]['p50'] / o[k]['p50']:.2f} ({r[k]['p99'] / o[k]['p99']:.2f})"

                out.append(
                    f"| {variant['rcu']} | {r['agents']} | {ratio('window')} | {ratio('skew')} "
                    f"| {ratio('overhead')} | {ratio('node_window')} |"
                )
        out.append("")
    out.append(
        "All times in ms, CLOCK_MONOTONIC of this one machine (the agents share it here; on real "
        "machines the verdict uses etcd revisions, never clocks)."
    )
    return "\n".join(out) + "\n"


def _cpu_table(rows: list[dict[str, Any]]) -> list[str]:
    """Whose CPU the fleet window took, when perf sampled it."""
    split = {r["agents"]: r.get("window_cpu") or {"skipped": "not measured"} for r in rows}
    skipped = [f"{n} agents: {c['skipped']}" for n, c in split.items() if "skipped" in c]
    if skipped:
        return [f"CPU inside the fleet window: not sampled ({'; '.join(skipped)}).", ""]
    out = [
        "Whose CPU each fleet window took (`perf record -a`, mean ms per window over runs sampled "
        "after the timed ones; perf's own cost makes these windows a little longer). On one machine "
        "the window cannot be shorter than the busy CPU time inside it divided by the CPUs:",
        "",
        "| agents | runs sampled | window | etcd | agents | everything else | idle | busy ÷ CPUs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in split.items():
        busy = c["etcd"] + c["agents"] + c["other"]
        out.append(
            f"| {n} | {c['runs']} | {c['window']:.1f} | {c['etcd']:.1f} | {c['agents']:.1f} "
            f"| {c['other']:.1f} | {c['idle']:.1f} | {busy / c['cpus']:.1f} |"
        )
    return [*out, ""]


def main() -> int:
    """Measure and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="4,8,16")
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--single", type=int, default=10)
    p.add_argument("--sequential", type=int, default=2)
    p.add_argument(
        "--perf-cycles",
        type=int,
        default=10,
        metavar="N",
        help="runs per size sampled by perf for whose CPU the window takes (0: none)",
    )
    p.add_argument("--rcu", choices=("off", "on", "both"), default="both")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--out", default=str(Path(__file__).with_name("FLEET.md")), metavar="PATH")
    p.add_argument("--no-out", action="store_true")
    p.add_argument(
        "--baseline", metavar="JSON", help="an earlier run's --json: its ratios to this one are reported"
    )
    p.add_argument("--baseline-label", default="the code before", metavar="TEXT")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/fleet.py: must run as root (namespaces, loop devices, FIFREEZE)", file=sys.stderr)
        return 2
    from quiesce.sandbox import enter_private_mount_namespace

    enter_private_mount_namespace()
    started = time.monotonic()
    load_start = os.getloadavg()
    original = RCU.read_text().strip() if RCU.exists() else None
    variants = []
    try:
        for rcu in ["off", "on"] if args.rcu == "both" else [args.rcu]:
            # "on": the agents' own freezes find the knob held (the lock every freeze takes)
            # and leave it alone, instead of reading this 1 as the machine's value.
            with knob_claimed() if rcu == "on" else contextlib.nullcontext():
                if original is not None:
                    RCU.write_text("1" if rcu == "on" else original)
                rows = [measure(int(n), args) for n in args.agents.split(",")]
                variants.append({"rcu": rcu, "rows": rows})
                if original is not None:
                    RCU.write_text(original)
    finally:
        if original is not None:
            RCU.write_text(original)
    doc = {
        "machine": f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}",
        "command": shlex.join(["python", *sys.argv]),
        "load_start": " ".join(f"{x:.2f}" for x in load_start),
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "duration_s": time.monotonic() - started,
        "variants": variants,
    }
    if args.baseline:
        doc["baseline"] = {**json.loads(Path(args.baseline).read_text()), "label": args.baseline_label}
        doc["baseline"].pop("baseline", None)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    text = render(doc)
    if not args.no_out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
