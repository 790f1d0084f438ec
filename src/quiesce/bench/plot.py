"""Pictures of a benchmark: the window distribution per contender, and one repetition's timeline.

Drawn with matplotlib, an optional extra (``pip install 'quiesce[plot]'``):
it is imported only inside :func:`draw`, so ``import quiesce`` never loads
it and the core's only runtime dependency stays cffi. The figure is built on
a bare :class:`matplotlib.figure.Figure` and saved through the Agg (PNG) or
SVG canvas: no display, no pyplot state. ``quiesce bench --plot`` and the
scripts of ``bench/`` in the repository share it.

In an SVG, every drawn series carries an id (``dist-N`` for the Nth
distribution, ``span-KIND-N`` for the timeline's bars) and text stays text,
so the file can be checked and searched.
"""

from __future__ import annotations

import importlib
import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from quiesce.bench.results import BenchResult
from quiesce.engine.rundir import open_safe_dir
from quiesce.errors import UnsafeRunDirError

#: The file formats ``--plot`` writes, by file name suffix.
FORMATS = {".svg": "svg", ".png": "png"}

#: What to install when matplotlib is missing.
INSTALL_HINT = "pip install 'quiesce[plot]'"

#: The phases of a timeline, in the order a repetition goes through them, with their colours.
KINDS = {
    "pre-flush": "#9e9e9e",
    "FIFREEZE": "#1f77b4",
    "frozen": "#d62728",
    "FITHAW": "#2ca02c",
}


class PlotUnavailable(ValueError):
    """``--plot`` cannot be honoured: matplotlib is not installed (a usage error: nothing ran)."""


def plot_format(path: str | os.PathLike[str]) -> str:
    """``"svg"`` or ``"png"`` from the file name; ValueError (a usage error) for anything else."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"--plot {os.fspath(path)}: the file name must end in .svg or .png (the format is taken from it)"
        )
    return FORMATS[suffix]


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` naming the extra to install when matplotlib cannot be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as err:
        raise PlotUnavailable(
            f"--plot needs matplotlib, which is not installed ({err}): {INSTALL_HINT}"
        ) from None


def check_plot_path(path: str | os.PathLike[str]) -> str:
    """Everything ``--plot PATH`` needs, checked before anything is frozen; the format.

    The suffix must be .svg or .png, matplotlib must be importable, and the
    directory must exist. Raises ValueError (a usage error) otherwise.
    """
    fmt = plot_format(path)
    require_matplotlib()
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise ValueError(f"--plot {os.fspath(path)}: the directory {directory} does not exist")
    os.close(plot_directory(path)[1])
    return fmt


def plot_directory(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The file name of ``--plot PATH`` and an fd of its directory, if only root can change it.

    The plot is written through that fd (a random temp name, renamed), like
    the ``--metrics`` file: run by root, a directory another user can write,
    or a link there, could otherwise turn the write onto any file. Raises
    ValueError (a usage error) naming the directory otherwise.
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        if os.geteuid() != 0:  # another user's plot is that user's business (and cannot be root's file)
            return name, os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return name, open_safe_dir(directory, create=False, what="--plot directory")[1]
    except (UnsafeRunDirError, OSError) as err:
        raise ValueError(f"--plot {os.fspath(path)}: {err}") from err


class FsStamps(Protocol):
    """One filesystem's stamps in one repetition, from the first FIFREEZE start (ns)."""

    @property
    def mount_point(self) -> str: ...

    @property
    def preflush_at_ns(self) -> int | None: ...

    @property
    def preflush_ns(self) -> int | None: ...

    @property
    def freeze_at_ns(self) -> int | None: ...

    @property
    def freeze_ns(self) -> int | None: ...

    @property
    def thaw_at_ns(self) -> int | None: ...

    @property
    def thaw_ns(self) -> int | None: ...


@dataclass(frozen=True)
class Span:
    """One bar of a timeline: ``kind`` (a key of :data:`KINDS`) on ``row``, from the first FIFREEZE."""

    row: str
    kind: str
    start_ns: int
    end_ns: int


def spans_of(filesystems: Iterable[FsStamps]) -> list[Span]:
    """A repetition's timeline from its per-filesystem stamps: pre-flush, FIFREEZE, frozen, FITHAW.

    A phase whose stamps are missing (no pre-flush, a failed freeze) is left out.
    """
    out: list[Span] = []
    for fs in filesystems:
        row = fs.mount_point
        if fs.preflush_at_ns is not None and fs.preflush_ns is not None:
            out.append(Span(row, "pre-flush", fs.preflush_at_ns, fs.preflush_at_ns + fs.preflush_ns))
        if fs.freeze_at_ns is None or fs.freeze_ns is None:
            continue
        frozen_at = fs.freeze_at_ns + fs.freeze_ns
        out.append(Span(row, "FIFREEZE", fs.freeze_at_ns, frozen_at))
        if fs.thaw_at_ns is not None and fs.thaw_ns is not None:
            out.append(Span(row, "frozen", frozen_at, fs.thaw_at_ns))
            out.append(Span(row, "FITHAW", fs.thaw_at_ns, fs.thaw_at_ns + fs.thaw_ns))
    return out


@dataclass(frozen=True)
class Timeline:
    """One repetition to draw: its title and its bars."""

    title: str
    spans: Sequence[Span]


def _ms(ns: float) -> float:
    return ns / 1e6


def _distributions(ax: Any, series: Mapping[str, Sequence[int]], title: str, xlabel: str) -> None:
    """Box plots of each series (ms, one row each), every sample drawn over its box."""
    labels = list(series)
    data = [[_ms(v) for v in series[k]] for k in labels]
    positions = list(range(len(labels), 0, -1))  # the first series on top
    ax.boxplot(
        data,
        positions=positions,
        orientation="horizontal",
        widths=0.6,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for i, (pos, values) in enumerate(zip(positions, data, strict=True)):
        # A deterministic spread around the row, so that the same data gives the same picture.
        n = len(values)
        ys = [pos + 0.25 * ((j * 0.618034) % 1.0 - 0.5) for j in range(n)]
        points = ax.scatter(values, ys, s=9, alpha=0.6, color=f"C{i % 10}", zorder=3)
        points.set_gid(f"dist-{i}")
    ax.set_yticks(positions, labels)
    flat = [v for values in data for v in values if v > 0]
    if flat and max(flat) / min(flat) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(textwrap.fill(title, 90))
    ax.grid(axis="x", alpha=0.3)


def _timeline(ax: Any, timeline: Timeline, zoom: tuple[float, float] | None = None) -> None:
    """Horizontal bars, one row per filesystem, times in ms from the first FIFREEZE start."""
    rows = list(dict.fromkeys(s.row for s in timeline.spans))
    where = {row: len(rows) - i for i, row in enumerate(rows)}
    suffix = "-zoom" if zoom else ""
    for i, s in enumerate(timeline.spans):
        width = max(_ms(s.end_ns - s.start_ns), 0.0)
        (bar,) = ax.barh(where[s.row], width, left=_ms(s.start_ns), height=0.6, color=KINDS[s.kind])
        bar.set_gid(f"span-{s.kind.lower()}-{i}{suffix}")
    ax.set_yticks([where[r] for r in rows], rows)
    # Bars stick to the axis' edge otherwise: a short pre-flush there would hide under the spine.
    ax.use_sticky_edges = False
    ax.margins(x=0.02)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("ms from the first FIFREEZE")
    if zoom is not None:
        ax.set_xlim(*zoom)
        ax.set_title("the window itself (zoomed)")
    else:
        ax.set_title(textwrap.fill(timeline.title, 90))
    handles = [
        _patch(kind, colour) for kind, colour in KINDS.items() if any(s.kind == kind for s in timeline.spans)
    ]
    ax.legend(handles=handles, loc="best", fontsize="small")
    ax.grid(axis="x", alpha=0.3)


def _patch(label: str, colour: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def _needs_zoom(spans: Sequence[Span]) -> tuple[float, float] | None:
    """The window's range (ms) when the pre-flush makes it too thin to see at full scale."""
    window = [s for s in spans if s.kind != "pre-flush"]
    if not window or len(window) == len(spans):
        return None
    lo = min(s.start_ns for s in window)
    hi = max(s.end_ns for s in window)
    total = max(s.end_ns for s in spans) - min(s.start_ns for s in spans)
    if total <= 0 or (hi - lo) * 5 >= total:
        return None
    pad = max((hi - lo) * 0.05, 1_000)
    return (_ms(lo - pad), _ms(hi + pad))


def draw(
    path: str | os.PathLike[str],
    series: Mapping[str, Sequence[int]],
    *,
    title: str,
    timeline: Timeline | None = None,
    xlabel: str = "window (ms)",
    into: BinaryIO | None = None,
) -> None:
    """Write the picture to ``path`` (.svg or .png): the distributions, then the timeline if any.

    With ``into``, the picture goes there instead (``path`` names only the format).

    ``series`` maps a label (a contender, an option set) to its windows in ns;
    empty series are left out. Raises :class:`PlotUnavailable` without matplotlib.
    """
    fmt = plot_format(path)
    require_matplotlib()
    import matplotlib
    from matplotlib.figure import Figure

    shown = {k: v for k, v in series.items() if v}
    zoom = _needs_zoom(timeline.spans) if timeline is not None and timeline.spans else None
    panels = int(bool(shown)) + (0 if timeline is None or not timeline.spans else 1 + int(zoom is not None))
    if panels == 0:
        raise ValueError("nothing to draw: no sample")
    heights = []
    if shown:
        heights.append(max(2.0, 0.45 * len(shown) + 1.2))
    if timeline is not None and timeline.spans:
        n_rows = len({s.row for s in timeline.spans})
        heights += [max(1.8, 0.45 * n_rows + 1.2)] * (panels - len(heights))
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "quiesce"}):
        fig = Figure(figsize=(9, sum(heights) + 0.6), layout="constrained")
        axes = fig.subplots(panels, 1, squeeze=False, height_ratios=heights)[:, 0]
        i = 0
        if shown:
            _distributions(axes[0], shown, title, xlabel)
            i = 1
        if timeline is not None and timeline.spans:
            _timeline(axes[i], timeline)
            if zoom is not None:
                _timeline(axes[i + 1], timeline, zoom)
        target = into if into is not None else os.fspath(path)
        fig.savefig(target, format=fmt, dpi=100, metadata=_metadata(fmt))


def _metadata(fmt: str) -> dict[str, Any]:
    # No creation date: the same data gives the same file.
    return {"Date": None} if fmt == "svg" else {}


def median_rep(windows: Sequence[int]) -> int:
    """The index of the nearest-rank median window: the repetition a timeline shows."""
    if not windows:
        raise ValueError("no window")
    order = sorted(range(len(windows)), key=lambda i: windows[i])
    return order[max(1, math.ceil(len(order) / 2)) - 1]


def bench_series(result: BenchResult, mode: str) -> dict[str, list[int]]:
    """``quiesce bench``'s distributions: the window, then each filesystem's FIFREEZE and FITHAW."""
    o = result.options
    how = [mode]
    if o.get("expedite_rcu"):
        how.append("expedited RCU")
    if o.get("parallel"):
        how.append("parallel")
    series = {f"window, {', '.join(how)}": [s.window_ns for s in result.samples]}
    for i, t in enumerate(result.targets):
        mp = t["mount_point"]
        for kind, attr in (("FIFREEZE", "freeze_ns"), ("FITHAW", "thaw_ns")):
            values = [getattr(s.filesystems[i], attr) for s in result.samples]
            series[f"{kind} {mp}"] = [v for v in values if v is not None]
    return series


def draw_bench(
    result: BenchResult, path: str | os.PathLike[str], mode: str, into: BinaryIO | None = None
) -> None:
    """``quiesce bench --plot``: the distributions and the median repetition's timeline (to ``into``)."""
    if not result.samples:
        raise ValueError("nothing to draw: no repetition completed")
    windows = [s.window_ns for s in result.samples]
    sample = result.samples[median_rep(windows)]
    what = ", ".join(f"{t['mount_point']} ({t['fstype']})" for t in result.targets)
    timeline = Timeline(
        f"repetition {sample.rep} (the median window, {_ms(sample.window_ns):.3f} ms)",
        spans_of(sample.filesystems),
    )
    draw(
        path,
        bench_series(result, mode),
        title=f"quiesce bench: {len(windows)} freezes of {what}",
        timeline=timeline,
        xlabel="duration (ms)",
        into=into,
    )
