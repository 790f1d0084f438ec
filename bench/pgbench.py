"""A real client's view of a freeze: pgbench transactions around cold freezes, per contender.

    sudo python bench/pgbench.py [--scale 20] [--clients 4] [--freezes 5] [--spacing 3]
                                 [--warmup 5] [--variant NAME=ARGS ...] [--alt NAME=SRC ...]
                                 [--no-qemu-ga]
                                 [--json out.json] [--results PATH | --no-results]

One PostgreSQL 15 server (the one ``tests/db`` starts: ``tests/db/servers.py``)
runs in a private mount namespace with PGDATA on an ext4 loop filesystem and
pg_wal on an xfs loop filesystem (``initdb --waldir``). pgbench, initialised at
``--scale``, runs ``--clients`` clients (``-j`` one thread per CPU, at most the
clients) for the whole benchmark, logging every transaction (``-l``): its
latency and the time it completed. Its log, the server's socket and log live
on /tmp, which is never frozen.

While it runs, the contenders freeze both filesystems at fixed times,
``--spacing`` seconds apart (long enough that every freeze is cold: the RCU
grace period of the last freeze has lapsed), interleaved round-robin, the
starting contender rotating each round:

  quiesce    ``quiesce freeze --json TARGETS`` (the console script next to this
             interpreter: Python start-up included, as a user runs it), released
             as soon as it prints ``frozen`` by a line on its stdin. Its window
             is its own report's (first FIFREEZE to last FITHAW); its lead-in
             is from just before the spawn to that first FIFREEZE.
  NAME       ``--variant NAME=ARGS``: the same with ARGS added (e.g.
             ``nopf=--no-preflush``).
  NAME       ``--alt NAME=SRC``: ``python -m quiesce freeze`` of another source
             tree (``PYTHONPATH=SRC``), e.g. the code before a change.
  qemu_ga    qemu-ga 7.2 (``$QEMU_GA``, else from PATH), ``guest-fsfreeze-freeze-list``
             of both mounts then ``guest-fsfreeze-thaw`` over its unix socket
             (bench/qga.py). Window: CLOCK_MONOTONIC just before the first
             request and just after the second answer; no lead-in.
  fsfreeze   util-linux ``fsfreeze -f`` on each, then ``fsfreeze -u`` on each in
             reverse. Window: CLOCK_MONOTONIC before the first spawn and after
             the last exit; no lead-in.

Per freeze, each transaction is placed by its interval [end - latency, end]
(pgbench logs its completion on CLOCK_MONOTONIC plus a constant epoch shift,
which this script measures as CLOCK_REALTIME - CLOCK_MONOTONIC): the worst
latency among transactions that overlap the window, and the transactions over
``--slow-ms`` that overlap the window (inside), else the lead-in (before),
else the ``--after`` seconds following the window or the command's end
(after). The baseline is the rate of such transactions in the quiet part of
every gap between freezes, scaled to the same length.

The tables and goals go to the ``pgbench`` section of bench/RESULTS.md.
Only filesystems this script created are ever frozen.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import glob
import itertools
import json
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
from qga import GuestAgent, agent_binary, agent_version
from results import Check
from safety import enter_private_namespace, rcu_left_as_found, refusal, sandbox_targets, sigterm_exits

from quiesce.bench.stats import median
from quiesce.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.db.servers import PG_BIN, Postgres, missing_servers, private_dir, run  # noqa: E402

TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "mkfs.xfs", "fsfreeze", "pgbench", "runuser")
#: Goals: the worst overlapping transaction of a default freeze within this factor of qemu-ga's.
WORST_GOAL = 0.1

Sample = dict[str, Any]


@dataclass(frozen=True)
class Txn:
    """One pgbench transaction: its interval on CLOCK_MONOTONIC, ns."""

    start_ns: int
    end_ns: int

    @property
    def latency_ns(self) -> int:
        """How long it took."""
        return self.end_ns - self.start_ns


# ---------------------------------------------------------------------------
# the server and pgbench


class WalPostgres(Postgres):
    """tests/db's PostgreSQL server, its WAL directory on another filesystem."""

    options = (
        "-c listen_addresses='' -c max_wal_size=1GB -c shared_buffers=128MB -c fsync=on"
        " -c checkpoint_timeout=300"
    )

    def __init__(self, datadir: Path, waldir: Path, rundir: Path) -> None:
        super().__init__(datadir, rundir)
        self.waldir = waldir

    def init(self) -> None:
        """initdb with ``--waldir``, then start."""
        run(
            [
                "runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"),
                "-D", str(self.datadir), "-X", str(self.waldir),
                "-A", "peer", "-E", "UTF8", "--locale=C", "-U", "postgres",
            ],
            timeout=120,
        )  # fmt: skip
        self.start()
        self.sql("CREATE DATABASE loadtest", db="postgres")

    def pgbench(self, *extra: str) -> list[str]:
        """pgbench's argv as the postgres user, on the server's socket."""
        return [
            "runuser", "-u", "postgres", "--", "pgbench",
            "-h", str(self.rundir), "-p", str(self.port), *extra, "loadtest",
        ]  # fmt: skip


def read_logs(prefix: str, shift_ns: int) -> list[Txn]:
    """Every transaction in pgbench's per-thread logs, sorted by start, on CLOCK_MONOTONIC.

    A line is ``client txn latency_us script epoch_s epoch_us [lag]``; the
    completion time is pgbench's monotonic clock plus its epoch shift, which
    ``shift_ns`` (CLOCK_REALTIME - CLOCK_MONOTONIC) undoes.
    """
    txns = []
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or parts[2] == "skipped":
                    continue
                end = (int(parts[4]) * 1_000_000 + int(parts[5])) * 1000 - shift_ns
                txns.append(Txn(end - int(float(parts[2])) * 1000, end))
    txns.sort(key=lambda t: t.start_ns)
    return txns


# ---------------------------------------------------------------------------
# the analysis (pure)


@dataclass
class Timeline:
    """Transactions sorted by start, with a lookup of those overlapping an interval."""

    txns: Sequence[Txn]
    starts: list[int] = field(init=False)
    longest: int = field(init=False)

    def __post_init__(self) -> None:
        self.starts = [t.start_ns for t in self.txns]
        self.longest = max((t.latency_ns for t in self.txns), default=0)

    def overlapping(self, a: int, b: int) -> list[Txn]:
        """Transactions with start < b and end > a."""
        lo = bisect.bisect_right(self.starts, a - self.longest - 1)
        hi = bisect.bisect_left(self.starts, b)
        return [t for t in self.txns[lo:hi] if t.end_ns > a]


def classify(tl: Timeline, s: Sample, slow_ns: int, after_ns: int) -> dict[str, Any]:
    """One freeze's effect: worst overlapping latency, slow transactions before/inside/after."""
    lead_a, win_a = s["cmd_start_ns"], s["window_start_ns"]
    win_b = win_a + s["window_ns"]
    tail_b = max(win_b, s["cmd_end_ns"]) + after_ns
    inside = tl.overlapping(win_a, win_b + 1)
    seen = {id(t) for t in inside}
    slow_inside = sum(t.latency_ns > slow_ns for t in inside)
    before = [t for t in tl.overlapping(lead_a, win_a) if id(t) not in seen]
    seen |= {id(t) for t in before}
    after = [t for t in tl.overlapping(win_b, tail_b) if id(t) not in seen]
    # The pre-flush ends just before the first FIFREEZE (only the RCU knob is written between).
    flush_a = win_a - (s.get("preflush_ns") or 0)
    worst = max(inside, key=lambda t: t.latency_ns, default=None)
    return {
        # A check of the clock alignment: a transaction held by the freeze ends just after the thaw.
        "worst_end_after_window_ns": None if worst is None else worst.end_ns - win_b,
        "slow_preflush": sum(t.latency_ns > slow_ns and t.end_ns > flush_a for t in before),
        "preflush_span_ns": win_a - flush_a,
        "startup_span_ns": flush_a - lead_a,
        "worst_ns": 0 if worst is None else worst.latency_ns,
        "overlapping": len(inside),
        "slow_before": sum(t.latency_ns > slow_ns for t in before),
        "slow_inside": slow_inside,
        "slow_after": sum(t.latency_ns > slow_ns for t in after),
        "span_ns": tail_b - lead_a,
    }


def baseline_rate(tl: Timeline, quiet: Sequence[tuple[int, int]], slow_ns: int) -> float:
    """Slow transactions per second ending in the quiet intervals."""
    total_ns = sum(b - a for a, b in quiet)
    if total_ns <= 0:
        return 0.0
    count = sum(
        sum(t.latency_ns > slow_ns and a <= t.end_ns < b for t in tl.overlapping(a, b)) for a, b in quiet
    )
    return count / (total_ns / 1e9)


# ---------------------------------------------------------------------------
# the contenders


def quiesce_command() -> list[str]:
    """The ``quiesce`` a user runs: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("quiesce")
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "quiesce"]


def meminfo_dirty_kb() -> int:
    """Machine-wide Dirty + Writeback from /proc/meminfo, in kB."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Dirty", "Writeback"):
                total += int(rest.split()[0])
    return total


@dataclass
class Contenders:
    """Both sandbox mounts and one method per way of freezing them."""

    mounts: list[str]
    run_dir: str
    agent: GuestAgent | None = None

    def quiesce(self, extra: Sequence[str] = (), src: str | None = None) -> Sample:
        """``quiesce freeze --json`` released on stdin once frozen; window from its report.

        With ``src``, ``python -m quiesce`` of that source tree (``PYTHONPATH``) instead.
        """
        command = quiesce_command() if src is None else [sys.executable, "-m", "quiesce"]
        env = None if src is None else {**os.environ, "PYTHONPATH": src}
        argv = [
            *command, "freeze", "--json", "--run-dir", self.run_dir,
            "--no-vmbackup-conf", "--timeout", "30", *extra, *self.mounts,
        ]  # fmt: skip
        t0 = time.monotonic_ns()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdin is not None and proc.stdout is not None
        first = proc.stdout.readline()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write("\n")  # the release
            proc.stdin.close()
        proc.stdin = None  # closed: communicate() must not flush it
        rest, err = proc.communicate(timeout=60)
        t1 = time.monotonic_ns()
        lines = [ln for ln in (first + rest).splitlines() if ln.strip()]
        if proc.returncode != 0 or not lines or json.loads(lines[0]).get("event") != "frozen":
            raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {err.strip()} {lines}")
        report = json.loads(lines[-1])
        sample = {
            "cmd_start_ns": t0,
            "cmd_end_ns": t1,
            "window_start_ns": report["window_start_ns"],
            "window_ns": report["window_ns"],
            "preflush_ns": report.get("preflush_ns"),
            "clock": "quiesce's report (native CLOCK_MONOTONIC stamps)",
        }
        if "preflush" in report:
            sample["preflush"] = report["preflush"]
        return sample

    def qemu_ga(self) -> Sample:
        """freeze-list of both mounts, then thaw; CLOCK_MONOTONIC around the two requests."""
        if self.agent is None:
            raise RuntimeError("qemu-ga was not started")
        t0 = time.monotonic_ns()
        done = self.agent.window(self.mounts)
        t1 = time.monotonic_ns()
        return {
            "cmd_start_ns": t0,
            "cmd_end_ns": t1,
            "window_start_ns": t0,
            "window_ns": t1 - t0,
            "freeze_rtt_ns": done["freeze_rtt_ns"],
            "clock": "CLOCK_MONOTONIC around the two requests",
        }

    def fsfreeze(self) -> Sample:
        """``fsfreeze -f`` each, ``fsfreeze -u`` each in reverse; CLOCK_MONOTONIC around the commands."""
        frozen: list[str] = []
        t0 = time.monotonic_ns()
        try:
            for mp in self.mounts:
                subprocess.run(["fsfreeze", "-f", mp], check=True)
                frozen.append(mp)
        finally:
            for mp in reversed(frozen):
                subprocess.run(["fsfreeze", "-u", mp], check=True)
        t1 = time.monotonic_ns()
        return {
            "cmd_start_ns": t0,
            "cmd_end_ns": t1,
            "window_start_ns": t0,
            "window_ns": t1 - t0,
            "clock": "CLOCK_MONOTONIC around the fsfreeze commands",
        }


Contender = tuple[str, str, Callable[[], Sample]]


def contender_list(c: Contenders, args: argparse.Namespace) -> list[Contender]:
    """The contenders of this run, in their first round's order."""
    out: list[Contender] = [("quiesce", "quiesce freeze (defaults)", c.quiesce)]
    for name, extra in args.variant:
        out.append((name, f"quiesce freeze {' '.join(extra)}", lambda e=extra: c.quiesce(e)))
    for name, src in args.alt:
        out.append((name, f"python -m quiesce freeze, source {src}", lambda s=src: c.quiesce(src=s)))
    if c.agent is not None:
        out.append(("qemu_ga", "qemu-ga freeze-list + thaw", c.qemu_ga))
    out.append(("fsfreeze", "util-linux fsfreeze -f / -u", c.fsfreeze))
    return out


# ---------------------------------------------------------------------------
# the run


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=ARGS`` for --variant."""
    name, sep, rest = text.partition("=")
    if not sep or not name.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: NAME=ARGS, NAME of letters, digits, _ or -")
    return name, rest.split()


def parse_alt(text: str) -> tuple[str, str]:
    """``NAME=SRC`` for --alt: SRC a directory holding the quiesce package."""
    name, sep, src = text.partition("=")
    if not sep or not name or not os.path.isdir(os.path.join(src, "quiesce")):
        raise argparse.ArgumentTypeError(f"--alt {text!r}: NAME=SRC, SRC a directory with quiesce/ in it")
    return name, os.path.abspath(src)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked."""
    p = argparse.ArgumentParser(prog="pgbench.py", description="pgbench transactions around cold freezes.")
    p.add_argument("--scale", type=int, default=20, help="pgbench -s (default 20)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    p.add_argument("--freezes", type=int, default=5, help="freezes per contender (default 5)")
    p.add_argument("--spacing", type=float, default=3.0, help="seconds between freezes (default 3)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of pgbench before the first freeze")
    p.add_argument("--slow-ms", type=float, default=10.0, help="a slow transaction (default 10 ms)")
    p.add_argument("--after", type=float, default=0.5, help="seconds after a freeze still its own")
    p.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=ARGS")
    p.add_argument(
        "--alt",
        type=parse_alt,
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also `python -m quiesce freeze` from the source tree SRC (e.g. before a change)",
    )
    p.add_argument("--no-qemu-ga", action="store_true", help="leave the QEMU guest agent out")
    results.add_output_arguments(p)
    args = p.parse_args(argv)
    if min(args.scale, args.clients, args.freezes) < 1 or args.spacing < 1 or args.warmup < 0:
        p.error("--scale, --clients, --freezes >= 1; --spacing >= 1 s; --warmup >= 0")
    return args


def build(sb: Sandbox, scale: int) -> tuple[Any, Any]:
    """PGDATA's ext4 and pg_wal's xfs, sized for the scale."""
    data = sb.add("ext4", max(1024, 64 * scale + 512), name="pgdata")
    wal = sb.add("xfs", 2048, name="pgwal")
    return data, wal


def clock_shift_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few bracketed reads."""
    best = None
    for _ in range(20):
        a = time.monotonic_ns()
        r = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, r - (a + b) // 2)
    assert best is not None
    return best[1]


def freeze_loop(
    contenders: Sequence[Contender], args: argparse.Namespace, t0: int
) -> dict[str, list[Sample]]:
    """Each contender ``--freezes`` times at fixed times from ``t0``, interleaved, rotating."""
    samples: dict[str, list[Sample]] = {key: [] for key, _, _ in contenders}
    k = len(contenders)
    slot = 0
    for rep in range(args.freezes):
        for i in range(k):
            key, _, fn = contenders[(rep + i) % k]
            due = t0 + int((args.warmup + slot * args.spacing) * 1e9)
            slot += 1
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            dirty = meminfo_dirty_kb()
            sample = fn()
            sample.update(rep=rep, slot=slot - 1, dirty_kb=dirty, loadavg=os.getloadavg()[0])
            samples[key].append(sample)
            print(
                f"  {key:<12} window {results.ms(sample['window_ns'])} ms, lead-in "
                f"{results.ms(sample['window_start_ns'] - sample['cmd_start_ns'])} ms, dirty {dirty} kB",
                flush=True,
            )
    return samples


def analyse(
    samples: dict[str, list[Sample]], tl: Timeline, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], float]:
    """Per contender: medians and means of each freeze's effect; and the baseline rate."""
    slow_ns, after_ns = int(args.slow_ms * 1e6), int(args.after * 1e9)
    every = sorted((s for ss in samples.values() for s in ss), key=lambda s: s["cmd_start_ns"])
    quiet = []
    for prev, nxt in itertools.pairwise(every):
        a = max(prev["cmd_end_ns"], prev["window_start_ns"] + prev["window_ns"]) + 2 * after_ns
        if nxt["cmd_start_ns"] - a > 0:
            quiet.append((a, nxt["cmd_start_ns"]))
    rate = baseline_rate(tl, quiet, slow_ns)
    out: dict[str, dict[str, Any]] = {}
    for key, ss in samples.items():
        effects = [classify(tl, s, slow_ns, after_ns) for s in ss]
        for s, e in zip(ss, effects, strict=True):
            s.update(e)
        n = len(ss)

        def mean(name: str, effects: list[dict[str, Any]] = effects, n: int = n) -> float:
            return sum(e[name] for e in effects) / n

        flushed = [s["preflush_ns"] for s in ss if s.get("preflush_ns")]
        lead = [s["window_start_ns"] - s["cmd_start_ns"] for s in ss]
        out[key] = {
            "n": n,
            "window_ns": median(s["window_ns"] for s in ss),
            "lead_in_ns": median(lead),
            "command_ns": median(s["cmd_end_ns"] - s["cmd_start_ns"] for s in ss),
            "worst_ns": median(e["worst_ns"] for e in effects),
            "worst_max_ns": max(e["worst_ns"] for e in effects),
            "worst_end_after_window_ns": median(
                e["worst_end_after_window_ns"] for e in effects if e["worst_end_after_window_ns"] is not None
            )
            if any(e["worst_end_after_window_ns"] is not None for e in effects)
            else None,
            "slow_before": mean("slow_before"),
            "slow_inside": mean("slow_inside"),
            "slow_after": mean("slow_after"),
            "slow_total": mean("slow_before") + mean("slow_inside") + mean("slow_after"),
            "slow_preflush": mean("slow_preflush"),
            # Slow transactions per second of the lead-in's two parts: start-up, pre-flush.
            "rate_startup": _rate(effects, "slow_before", "startup_span_ns", minus="slow_preflush"),
            "rate_preflush": _rate(effects, "slow_preflush", "preflush_span_ns"),
            "baseline": rate * mean("span_ns") / 1e9,
            "startup_ns": median(x - (s.get("preflush_ns") or 0) for x, s in zip(lead, ss, strict=True)),
            "preflush_ns": median(flushed) if flushed else None,
            "preflushed": len(flushed),
            "clock": ss[0]["clock"],
        }
    return out, rate


def _rate(effects: Sequence[dict[str, Any]], count: str, span: str, minus: str | None = None) -> float | None:
    """Events per second over the summed spans, None when there is no such span."""
    total = sum(e[span] for e in effects)
    if total <= 0:
        return None
    n = sum(e[count] - (e[minus] if minus else 0) for e in effects)
    return n / (total / 1e9)


def _per_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def table_rows(summary: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[list[str]]:
    """One row per contender for the markdown and terminal tables."""
    rows = []
    for key, s in summary.items():
        pf = (
            "-"
            if s["preflush_ns"] is None
            else f"{results.ms(s['preflush_ns'], 1)} ({s['preflushed']} of {s['n']})"
        )
        rows.append(
            [
                f"{key} ({labels[key]})",
                str(s["n"]),
                results.ms(s["window_ns"], 2),
                results.ms(s["lead_in_ns"], 1),
                results.ms(s["startup_ns"], 1),
                pf,
                results.ms(s["worst_ns"], 1),
                results.ms(s["worst_max_ns"], 1),
                f"{s['slow_before']:.1f} ({s['slow_preflush']:.1f})",
                f"{_per_s(s['rate_startup'])} / {_per_s(s['rate_preflush'])}",
                f"{s['slow_inside']:.1f}",
                f"{s['slow_after']:.1f}",
                f"{s['slow_total']:.1f}",
                f"{s['baseline']:.1f}",
                f"{s['slow_total'] - s['baseline']:+.1f}",
            ]
        )
    return rows


HEADERS = [
    "contender",
    "freezes",
    "window ms (median)",
    "lead-in ms",
    "lead-in but the pre-flush ms",
    "pre-flush ms",
    "worst overlapping txn ms (median)",
    "worst (max)",
    "slow before (in the pre-flush)",
    "slow/s in start-up / pre-flush",
    "slow inside",
    "slow after",
    "slow per freeze",
    "baseline",
    "excess",
]


def checks(summary: dict[str, dict[str, Any]]) -> list[Check]:
    """The issue's two pgbench goals, when qemu-ga ran."""
    q, g = summary.get("quiesce"), summary.get("qemu_ga")
    if q is None or g is None or not g["worst_ns"]:
        return []
    return [
        Check(
            "pgbench: worst txn overlapping a default freeze <= 0.1x qemu-ga's",
            "median worst overlapping txn, quiesce / qemu-ga",
            q["worst_ns"] / g["worst_ns"],
            WORST_GOAL,
        ),
        Check(
            "pgbench: txns > 10 ms per default freeze (lead-in included) <= qemu-ga's",
            "mean slow txns per freeze, quiesce / qemu-ga",
            q["slow_total"] / g["slow_total"] if g["slow_total"] else float("inf") * q["slow_total"],
            1.0,
        ),
    ]


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Build the world, run pgbench and the freezes, analyse; the JSON document."""
    started = time.monotonic()
    agent_bin = None if args.no_qemu_ga else agent_binary()
    doc: dict[str, Any] = {
        "command": results.command_line(argv),
        "machine": {
            **results.machine(),
            "qemu_ga": agent_version(agent_bin) if agent_bin else None,
            "pgbench": run(["pgbench", "--version"]).stdout.strip(),
        },
        "config": {k: v for k, v in vars(args).items()},
    }
    m = doc["machine"]
    print(f"machine: {m['nproc']} CPUs, kernel {m['kernel']}, load {m['loadavg'][0]:.2f}; {m['pgbench']}")
    enter_private_namespace()
    with contextlib.ExitStack() as stack:
        tmp = private_dir("quiesce-pgbench-")
        stack.callback(shutil.rmtree, tmp, True)
        os.chmod(tmp, 0o711)
        run_dir = tempfile.mkdtemp(prefix="quiesce-pgbench-run-", dir="/run")
        stack.callback(shutil.rmtree, run_dir, True)
        sb = stack.enter_context(Sandbox())
        os.chmod(sb.base, 0o711)
        data_fs, wal_fs = build(sb, args.scale)
        targets = sandbox_targets([data_fs, wal_fs])
        mounts = [t.mount.mount_point for t in targets]
        datadir, waldir = data_fs.mount_point / "data", wal_fs.mount_point / "wal"
        for d in (datadir, waldir):
            d.mkdir(mode=0o700)
            shutil.chown(d, "postgres", "postgres")
        server = WalPostgres(datadir, waldir, private_dir("server-", "postgres", str(tmp)))
        stack.callback(server.stop)
        server.init()
        t = time.monotonic()
        run(server.pgbench("-i", "-q", "-s", str(args.scale)), timeout=1800)
        server.sql("CHECKPOINT")
        print(f"pgbench -i -s {args.scale}: {time.monotonic() - t:.1f} s; filesystems {' + '.join(mounts)}")
        c = Contenders(mounts, run_dir)
        if agent_bin is not None:
            c.agent = stack.enter_context(
                GuestAgent(agent_bin, str(tmp), {t.mount.mount_point: t.mount.source for t in targets})
            )
            c.agent.start()
        contenders = contender_list(c, args)
        labels = {key: label for key, label, _ in contenders}
        total = len(contenders) * args.freezes
        duration = int(args.warmup + total * args.spacing + 2 + 0.999)
        logdir = private_dir("log-", "postgres", str(tmp))
        prefix = str(logdir / "pgbench_log")
        jobs = min(args.clients, len(os.sched_getaffinity(0)))
        pg_argv = server.pgbench(
            "-n",
            "-c",
            str(args.clients),
            "-j",
            str(jobs),
            "-T",
            str(duration),
            "-l",
            f"--log-prefix={prefix}",
        )
        doc["pgbench_argv"] = pg_argv
        out = open(logdir / "pgbench.out", "w")  # noqa: SIM115 (closed by the stack)
        stack.callback(out.close)
        shift_before = clock_shift_ns()
        t0 = time.monotonic_ns()
        bench = subprocess.Popen(pg_argv, stdout=out, stderr=subprocess.STDOUT, cwd=logdir)
        stack.callback(lambda: bench.poll() is None and bench.kill())
        print(
            f"pgbench: {args.clients} clients, {jobs} threads, {duration} s; "
            f"{total} freezes, {args.spacing} s apart"
        )
        samples = freeze_loop(contenders, args, t0)
        rc = bench.wait(timeout=duration + 120)
        shift_after = clock_shift_ns()
        out.flush()
        summary_text = (logdir / "pgbench.out").read_text()
        if rc != 0:
            raise RuntimeError(f"pgbench exited {rc}: {summary_text[-2000:]}")
        doc["pgbench_summary"] = [ln for ln in summary_text.splitlines() if "tps" in ln or "latency" in ln]
        doc["clock_shift_drift_ns"] = shift_after - shift_before
        tl = Timeline(read_logs(prefix, shift_before))
        if not tl.txns:
            raise RuntimeError(f"no transaction in pgbench's logs {prefix}.*")
        summary, rate = analyse(samples, tl, args)
        doc.update(samples=samples, summary=summary, labels=labels, baseline_per_s=rate, txns=len(tl.txns))
        doc["checks"] = checks(summary)
        doc["preflush_decisions"] = {
            key: dict(collections.Counter(s["preflush"]["reason"] for s in ss if s.get("preflush")))
            for key, ss in samples.items()
            if any(s.get("preflush") for s in ss)
        }
    doc["duration_s"] = time.monotonic() - started
    doc["loadavg_end"] = os.getloadavg()
    return doc


def print_summary(doc: dict[str, Any]) -> None:
    """The table and the goals on the terminal."""
    print()
    for line in doc["pgbench_summary"]:
        print(line)
    print(f"{doc['txns']} transactions; baseline {doc['baseline_per_s']:.2f} slow txns/s without a freeze")
    print(results.table(HEADERS, table_rows(doc["summary"], doc["labels"])))
    for c in doc["checks"]:
        print(c.line())


def results_section(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """The ``pgbench`` section of RESULTS.md."""
    clocks = "; ".join(f"{k}: {s['clock']}" for k, s in doc["summary"].items())
    parts = [
        f"PostgreSQL 15, PGDATA on ext4 and pg_wal on xfs (loop filesystems), `pgbench -s {args.scale}`, "
        f"{args.clients} clients, {doc['txns']} transactions; {' '.join(doc['pgbench_summary'])}. "
        f"Load average {doc['loadavg_end'][0]:.2f} at the end (a shared machine: others' work runs too). "
        f"Cold freezes of both filesystems every {args.spacing} s, interleaved. Slow: > {args.slow_ms} ms; "
        f"before = overlapping the lead-in (command start to first FIFREEZE), inside = overlapping the "
        f"window, after = the {args.after} s after the window or command end; per freeze, mean. "
        f"Baseline: the slow transactions a quiet interval of the same length has "
        f"({doc['baseline_per_s']:.2f}/s); excess: slow per freeze minus baseline. The lead-in is split in "
        "start-up (command start to the pre-flush) and pre-flush (its reported span, ending at the first "
        "FIFREEZE): slow transactions per second in each. "
        "Medians over the freezes except the slow counts (means). Windows from: "
        f"{clocks}. Pre-flush decisions (quiesce): {doc.get('preflush_decisions', {})}.",
        results.table(HEADERS, table_rows(doc["summary"], doc["labels"])),
    ]
    return results.section(
        "pgbench.py: a database client's view of a freeze",
        doc=doc,
        parts=parts,
        checks=doc["checks"],
        extra_machine=f"; {doc['machine']['pgbench']}; {doc['machine'].get('qemu_ga') or 'no qemu-ga'}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse unless root and the tools are there, run, write the results; the exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    refused = refusal(
        "pgbench.py", "it creates loop devices, mounts filesystems, starts PostgreSQL and freezes", TOOLS
    ) or missing_servers("postgresql")
    if refused:
        print(refused, file=sys.stderr)
        return 2
    with sigterm_exits(), rcu_left_as_found():
        doc = run_bench(args, argv)
    print_summary(doc)
    body = None if args.no_results else results_section(args, doc)
    results.write_outputs(args, "pgbench", body, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
