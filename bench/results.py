"""Writing one benchmark's section of ``bench/RESULTS.md``.

Each script of ``bench/`` owns one section of the file, between
``<!-- section: NAME -->`` and ``<!-- /section: NAME -->``, and rewrites only
that one: the other scripts' sections, and anything written outside the
markers, are kept as they are. A section says what the figures were measured
on (nproc, CPU model, kernel, date), the exact command that produced them,
medians and ratios as markdown tables, and every goal of the benchmark issue
with its verdict: met, or NOT met and by how much.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from quiesce.bench.plot import PlotUnavailable, Timeline, draw, require_matplotlib, spans_of
from quiesce.bench.stats import median, summarize

#: Where the scripts write unless told otherwise (``--results PATH``).
DEFAULT_PATH = Path(__file__).resolve().parent / "RESULTS.md"

#: The order of the sections in the file, one per script.
ORDER = ("compare_window", "supervise", "scaling", "stall", "pgbench", "release", "rcu_cost")

HEADER = """\
# Benchmark results

Written by the scripts in `bench/`; each one rewrites only its own section
(between `<!-- section: NAME -->` markers) and keeps the others. Regenerate a
section by running the command it names, as root, from the repository root
(`bench/README.md` says what each script measures and needs). Each section is
one run on one machine: compare contenders within a section, not across
sections or machines.
"""


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPUs, CPU model, kernel, Python, load, date."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def command_line(argv: Sequence[str]) -> str:
    """The command as it was run (the interpreter's full path, then ``argv``)."""
    return shlex.join([sys.executable, *argv])


@dataclass(frozen=True)
class Check:
    """One goal of the benchmark issue, checked against one measured figure.

    ``value`` must be at most ``limit``; both are in ``unit`` (``"x"`` for a
    ratio, ``"ms"`` for a duration).
    """

    goal: str
    measured: str
    value: float
    limit: float
    unit: str = "x"

    @property
    def met(self) -> bool:
        """True when the figure is within the goal."""
        return self.value <= self.limit

    def _fmt(self, v: float) -> str:
        return f"{v:.2f}x" if self.unit == "x" else f"{v:.3f} ms"

    @property
    def verdict(self) -> str:
        """``met`` with the margin, or ``NOT met`` with how far off, as text."""
        if self.met:
            return f"met ({self._fmt(self.value)} <= {self._fmt(self.limit)})"
        over = self.value - self.limit
        factor = self.value / self.limit if self.limit else float("inf")
        return f"**NOT met**: {self._fmt(self.value)}, {self._fmt(over)} over the limit ({factor:.2f}x it)"

    def line(self) -> str:
        """The check on one terminal line."""
        return f"goal: {self.goal}: {self.measured}: {self.verdict.replace('*', '')}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON document."""
        return {**asdict(self), "met": self.met, "verdict": self.verdict}


def ms(ns: float, digits: int = 3) -> str:
    """Nanoseconds as milliseconds, for a table cell."""
    return f"{ns / 1e6:.{digits}f}"


def summary(values: Sequence[int]) -> dict[str, int]:
    """``quiesce bench``'s summary of a sample as JSON data: n, and min/median/p90/p99/max in ns.

    Nearest-rank (:mod:`quiesce.bench.stats`): every figure is a measured value.
    """
    return asdict(summarize(values))


def ratio(x: float) -> str:
    """A ratio, for a table cell."""
    return f"{x:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` left-aligned, the figures after them right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(headers) - text_columns)
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def checks_table(checks: Sequence[Check]) -> str:
    """The goal checks as a markdown table."""
    return table(
        ["goal", "measured", "verdict", "value", "limit"],
        [[c.goal, c.measured, c.verdict, c._fmt(c.value), c._fmt(c.limit)] for c in checks],
        text_columns=3,
    )


def section(
    title: str,
    *,
    doc: Mapping[str, Any],
    parts: Sequence[str],
    checks: Sequence[Check],
    extra_machine: str = "",
) -> str:
    """A whole section: title, machine, command, duration, the parts, the goal checks."""
    m = doc["machine"]
    lines = [
        f"## {title}",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"Python {m['python']}{extra_machine}; load average {m['loadavg'][0]:.2f} at start",
        f"- date: {m['date_utc']}",
        f"- command: `{doc['command']}`",
    ]
    if "duration_s" in doc:
        lines.append(f"- duration: {doc['duration_s']:.0f} s")
    if doc.get("plots"):
        lines.append("- pictures: " + ", ".join(f"[`{name}`]({name})" for name in doc["plots"]))
    out = "\n".join(lines) + "\n"
    for part in parts:
        out += "\n" + part.rstrip("\n") + "\n"
    if checks:
        missed = sum(not c.met for c in checks)
        summary = "all met" if not missed else f"{missed} of {len(checks)} NOT met"
        out += f"\n### Goals ({summary})\n\n" + checks_table(checks) + "\n"
    return out


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ValueError(f"section name {name!r}: lower-case letters, digits, '_' and '-' only")
    return f"<!-- section: {name} -->", f"<!-- /section: {name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` set to ``body``.

    A section not in the file yet goes before the first section that
    :data:`ORDER` puts after it, else at the end.
    """
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    if not text.strip():
        text = HEADER
    later = ORDER[ORDER.index(name) + 1 :] if name in ORDER else ()
    for other in later:
        at = text.find(_markers(other)[0])
        if at >= 0:
            return text[:at] + block + "\n" + text[at:]
    return text.rstrip("\n") + "\n\n" + block


def write_section(path: str | os.PathLike[str], name: str, body: str) -> None:
    """Set section ``name`` of the results file at ``path`` to ``body``, keeping the rest.

    The file is locked while it is read and rewritten, so two scripts
    finishing at once do not drop each other's section.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        new = replace_section(f.read(), name, body)
        f.seek(0)
        f.write(new)
        f.truncate()


def write_outputs(args: argparse.Namespace, name: str, body: str | None, doc: Mapping[str, Any]) -> None:
    """The end of every script: section ``name`` of the results file (unless ``--no-results``)
    and the whole document as JSON (with ``--json``), its goal checks as plain data."""
    if not args.no_results and body is not None:
        write_section(args.results, name, body)
        print(f"\nresults written to {args.results} (section {name})")
    if args.json:
        out = dict(doc)
        if "checks" in out:
            out["checks"] = [c.to_dict() if isinstance(c, Check) else c for c in out["checks"]]
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"\nJSON written to {args.json}")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every bench script shares: --json, --results, --no-results."""
    parser.add_argument("--json", metavar="PATH", help="write every sample and summary here")
    parser.add_argument(
        "--results",
        metavar="PATH",
        default=str(DEFAULT_PATH),
        help="write this run's section of the results file here (default bench/RESULTS.md)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write the results file")
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="draw the pictures (SVG) into DIR (default: next to the results file when it is "
        "written and matplotlib is installed)",
    )
    parser.add_argument("--no-plot", action="store_true", help="draw no picture")


def plot_dir(args: argparse.Namespace) -> Path | None:
    """Where this run draws its pictures, or None; checked before anything is measured.

    ``--plot DIR`` needs matplotlib and an existing directory (SystemExit 2
    otherwise); by default the pictures go next to the results file when it
    is written, and are skipped with a note when matplotlib is missing.
    """
    if args.no_plot or (args.plot is None and args.no_results):
        return None
    try:
        require_matplotlib()
    except PlotUnavailable as err:
        if args.plot is not None:
            raise SystemExit(f"error: {err}") from None
        print(f"note: no pictures: {err}", file=sys.stderr)
        return None
    where = Path(args.plot) if args.plot is not None else Path(args.results).resolve().parent
    if not where.is_dir():
        raise SystemExit(f"error: --plot {where}: not a directory")
    return where


def draw_phase(
    directory: str | os.PathLike[str],
    name: str,
    title: str,
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    labels: Mapping[str, str],
    timeline_key: str | None = None,
) -> str:
    """Draw one phase to ``directory/NAME.svg``: the windows per contender, and a timeline.

    The timeline is the median-window repetition of ``timeline_key``, whose
    samples carry ``filesystems`` (the freeze report's per-filesystem
    stamps). Returns the file's name.
    """
    series = {labels.get(k, k): [int(s["window_ns"]) for s in v] for k, v in samples.items()}
    timeline = None
    runs = samples.get(timeline_key or "", [])
    if runs and all("filesystems" in s for s in runs):
        windows = [int(s["window_ns"]) for s in runs]
        pick = runs[windows.index(median(windows))]
        stamps = [SimpleNamespace(**fs) for fs in pick["filesystems"]]
        timeline = Timeline(
            f"{labels.get(timeline_key or '', timeline_key)}: the median repetition "
            f"({pick['window_ns'] / 1e6:.3f} ms)",
            spans_of(stamps),
        )
    filename = f"{name}.svg"
    draw(Path(directory) / filename, series, title=title, timeline=timeline)
    return filename
