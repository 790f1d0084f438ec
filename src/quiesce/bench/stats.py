"""Statistics of a benchmark's samples: nearest-rank percentiles and round-width histograms.

Percentiles are nearest-rank: the p-th percentile of n sorted values is the
value of rank ``ceil(p * n / 100)``, and the median is the 50th percentile
(the lower middle value when n is even). Every statistic is therefore a value
that was measured. ``quiesce bench`` and the comparisons under ``bench/`` in
the repository use these same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

#: A measured quantity: nanoseconds, or a ratio of them.
Number = TypeVar("Number", int, float)

#: The percentiles a :class:`Summary` holds besides min and max.
PERCENTILES = (50, 90, 99)
#: How the percentiles are taken, as the JSON and the tables name it.
PERCENTILE_METHOD = "nearest-rank"


@dataclass(frozen=True)
class Summary:
    """min / median / p90 / p99 / max of a sample in ns, nearest-rank (all measured values)."""

    n: int
    min_ns: int
    median_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int


def percentile(ordered: Sequence[Number], p: int) -> Number:
    """The nearest-rank ``p``-th percentile (0..100) of values sorted ascending.

    The value of rank ``ceil(p * n / 100)`` (rank 1 for p = 0): at least p % of
    the sample is at or below it, and less than p % strictly below it.
    """
    if not ordered:
        raise ValueError("percentile of an empty sample")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[rank - 1]


def median(values: Iterable[Number]) -> Number:
    """The nearest-rank median (50th percentile) of a non-empty sample: a value of the sample."""
    return percentile(sorted(values), 50)


def summarize(values: Iterable[int]) -> Summary:
    """The :class:`Summary` of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("summary of an empty sample")
    median, p90, p99 = (percentile(ordered, p) for p in PERCENTILES)
    return Summary(len(ordered), ordered[0], median, p90, p99, ordered[-1])


def summarize_or_none(values: Iterable[int | None]) -> Summary | None:
    """The summary of the values that are not None, or None when there are none."""
    present = [v for v in values if v is not None]
    return summarize(present) if present else None


@dataclass(frozen=True)
class Bucket:
    """Values in ``[lo_ns, hi_ns)``."""

    lo_ns: int
    hi_ns: int
    count: int


def nice_step(at_least: int) -> int:
    """The smallest 1, 2 or 5 x 10^k that is >= ``at_least`` (and >= 1)."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale >= at_least:
                return m * scale
        scale *= 10


def histogram(values: Sequence[int], buckets: int = 10) -> list[Bucket]:
    """Equal-width buckets of a round width (1, 2 or 5 x 10^k ns) covering ``values``.

    About ``buckets`` of them (never more than ``buckets + 2``); the first holds
    the minimum, the last the maximum. The width is at least a thousandth of
    the maximum, so labels need no more than three significant digits.
    """
    if not values:
        return []
    if buckets < 1:
        raise ValueError("a histogram needs at least one bucket")
    lo, hi = min(values), max(values)
    step = nice_step(max(1, -(-(hi - lo) // buckets), -(-hi // 1000)))
    first = lo // step * step
    counts = [0] * (hi // step - lo // step + 1)
    for v in values:
        counts[(v - first) // step] += 1
    return [Bucket(first + i * step, first + (i + 1) * step, c) for i, c in enumerate(counts)]


_UNITS = ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us"), (1, "ns"))


def _unit(ns: int) -> tuple[int, str]:
    for size, name in _UNITS:
        if ns >= size:
            return size, name
    return 1, "ns"


def bucket_labels(buckets: Sequence[Bucket]) -> list[tuple[str, str]]:
    """Human edges for each bucket: one unit for all, as few decimals as the width needs."""
    if not buckets:
        return []
    size, name = _unit(buckets[-1].hi_ns)
    step = buckets[0].hi_ns - buckets[0].lo_ns
    decimals = 0
    while step * 10**decimals < size:
        decimals += 1

    def fmt(ns: int) -> str:
        return f"{ns / size:.{decimals}f} {name}"

    return [(fmt(b.lo_ns), fmt(b.hi_ns)) for b in buckets]


def render_histogram(buckets: Sequence[Bucket], width: int = 40) -> list[str]:
    """One text line per bucket: its range, a bar scaled to the fullest bucket, the count."""
    if not buckets:
        return []
    labels = bucket_labels(buckets)
    lw = max(len(lo) for lo, _ in labels)
    hw = max(len(hi) for _, hi in labels)
    most = max(b.count for b in buckets)
    lines = []
    for b, (lo, hi) in zip(buckets, labels, strict=True):
        bar = "#" * (max(1, round(b.count * width / most)) if b.count else 0)
        lines.append(f"  {lo:>{lw}} - {hi:<{hw}} |{bar:<{width}} {b.count}")
    return lines
