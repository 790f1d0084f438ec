"""A benchmark's results as plain data: samples, probe stalls, what ended it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quiesce.bench.stats import PERCENTILE_METHOD, Summary, histogram, summarize_or_none
from quiesce.engine.report import FreezeReport
from quiesce.errors import QuiesceError


class BenchError(QuiesceError):
    """The benchmark could not run: a helper failed, or a repetition ended badly."""


class BenchAborted(QuiesceError):
    """The operator did not confirm ``--all``; nothing was frozen."""


@dataclass(frozen=True)
class FsTiming:
    """One filesystem in one repetition; durations in ns, ``*_at_ns`` from the window start."""

    mount_point: str
    state: str
    freeze_ns: int | None
    thaw_ns: int | None
    preflush_ns: int | None
    freeze_at_ns: int | None = None
    thaw_at_ns: int | None = None
    preflush_at_ns: int | None = None


@dataclass(frozen=True)
class RepSample:
    """One repetition. ``cycle_*_ns`` bracket the native cycle call, from the bench's start."""

    rep: int
    run_id: str
    window_ns: int
    preflush_ns: int | None
    dirty_write_ns: int | None
    cycle_start_ns: int
    cycle_end_ns: int
    filesystems: tuple[FsTiming, ...]
    rcu_expedited: bool = False


@dataclass(frozen=True)
class Stall:
    """One long probe iteration: when it began (from the bench's start), how long, which window it met."""

    start_ns: int
    duration_ns: int
    rep: int | None


@dataclass
class ProbeResult:
    """What one probe saw: every iteration's duration summarised, and its longest ones."""

    mount_point: str
    pid: int
    iterations: int = 0
    stall: Summary | None = None
    longest: list[Stall] = field(default_factory=list)
    error: str | None = None


@dataclass
class BenchResult:
    """A benchmark's samples (complete or partial) and what ended it; plain data."""

    options: dict[str, Any]
    targets: list[dict[str, Any]]
    samples: list[RepSample] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    interrupted_by: str | None = None
    error: str | None = None
    error_type: str | None = None
    failed_report: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def requested(self) -> int:
        """How many repetitions were asked for."""
        return int(self.options["reps"])

    def summary(self) -> dict[str, Any]:
        """Summaries of the window, pre-flush, dirty write, and per filesystem freeze/thaw/pre-flush."""
        s = self.samples
        per_fs: dict[str, dict[str, Summary | None]] = {}
        for i, target in enumerate(self.targets):
            fs = [sample.filesystems[i] for sample in s]
            per_fs[target["mount_point"]] = {
                "freeze": summarize_or_none(f.freeze_ns for f in fs),
                "thaw": summarize_or_none(f.thaw_ns for f in fs),
                "preflush": summarize_or_none(f.preflush_ns for f in fs),
            }
        return {
            "window": summarize_or_none(x.window_ns for x in s),
            "preflush": summarize_or_none(x.preflush_ns for x in s),
            "dirty_write": summarize_or_none(x.dirty_write_ns for x in s),
            "filesystems": per_fs,
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data; durations in ns."""

        def plain(v: Any) -> Any:
            if isinstance(v, Summary):
                return asdict(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {
            "command": "bench",
            "percentile_method": PERCENTILE_METHOD,
            "options": self.options,
            "targets": self.targets,
            "requested": self.requested,
            "completed": len(self.samples),
            "interrupted_by": self.interrupted_by,
            "error": self.error,
            "error_type": self.error_type,
            "failed_report": self.failed_report,
            "warnings": self.warnings,
            "samples": [asdict(x) for x in self.samples],
            "summary": plain(self.summary()),
            "window_histogram": [asdict(b) for b in histogram([x.window_ns for x in self.samples])],
            "probes": [asdict(p) for p in self.probes],
        }


def sample_from_report(
    rep: int, report: FreezeReport, dirty_write_ns: int | None, cycle_start_ns: int, cycle_end_ns: int
) -> RepSample:
    """A repetition's sample from its (complete, successful) freeze report."""
    if report.window_ns is None:
        raise BenchError(f"repetition {rep}: the report has no window")
    return RepSample(
        rep=rep,
        run_id=report.run_id,
        window_ns=report.window_ns,
        preflush_ns=report.preflush_ns,
        dirty_write_ns=dirty_write_ns,
        cycle_start_ns=cycle_start_ns,
        cycle_end_ns=cycle_end_ns,
        filesystems=tuple(
            FsTiming(
                t.mount_point,
                t.state,
                t.freeze_ns,
                t.thaw_ns,
                t.preflush_ns,
                t.freeze_at_ns,
                t.thaw_at_ns,
                t.preflush_at_ns,
            )
            for t in report.targets
        ),
        rcu_expedited=report.rcu_expedited,
    )


def rep_at(samples: Sequence[RepSample], start_ns: int, duration_ns: int) -> int | None:
    """The repetition whose cycle overlaps ``[start_ns, start_ns + duration_ns]``, if any."""
    for s in samples:
        if start_ns <= s.cycle_end_ns and start_ns + duration_ns >= s.cycle_start_ns:
            return s.rep
    return None
