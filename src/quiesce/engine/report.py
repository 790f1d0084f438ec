"""A freeze's report: what happened to each filesystem, the window, the guardian; plain data.

Assembled from the native records after the thaw (:func:`build_report`):
nothing is written while filesystems are frozen.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quiesce.engine.native import FsRecord, GuardianRecord, thaw_error
from quiesce.engine.plan import Target
from quiesce.engine.preflush import PreflushDecision
from quiesce.errors import QuiesceError, ThawError


@dataclass(frozen=True)
class FilesystemResult:
    """What happened to one filesystem. Durations in ns; ``*_at_ns`` from the window start.

    For a filesystem someone else thawed (``thawed-externally``), ``thaw_at_ns``
    and ``thaw_ns`` time quiesce's FITHAW that found it already thawed
    (``thaw_errno`` EINVAL), not that thaw, which nobody recorded; it never
    counts in the window.
    """

    mount_point: str
    dev: str
    fstype: str
    mount_id: int
    state: str
    preflush_ns: int | None
    preflush_errno: int
    freeze_at_ns: int | None
    freeze_ns: int | None
    freeze_errno: int
    thaw_at_ns: int | None
    thaw_ns: int | None
    thaw_errno: int
    #: The pre-flush's start from the window start (negative: it runs before the window).
    preflush_at_ns: int | None = None


@dataclass
class FreezeReport:
    """The outcome of one freeze; plain data that serialises to JSON."""

    run_id: str
    targets: list[FilesystemResult] = field(default_factory=list)
    #: CLOCK_MONOTONIC of the first FIFREEZE (``time.monotonic_ns()`` scale), so a
    #: caller can line its own events up with the window.
    window_start_ns: int | None = None
    #: First FIFREEZE start to the end of the last FITHAW that thawed (quiesce's or the
    #: guardian's); None when none did (nothing frozen, or every target thawed by someone else).
    window_ns: int | None = None
    preflush_ns: int | None = None
    guardian_pid: int | None = None
    guardian_reason: str | None = None
    guardian_fired_at_ns: int | None = None
    guardian_deadline_at_ns: int | None = None
    error: str | None = None
    error_type: str | None = None
    rcu_expedited: bool = False
    warnings: list[str] = field(default_factory=list)
    #: Whether the pre-flush ran, why, and the dirty figure it was decided on.
    preflush: PreflushDecision | None = None

    @property
    def ok(self) -> bool:
        """Every filesystem was frozen and then thawed by quiesce itself."""
        return self.error is None and all(t.state == "thawed" for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _span(start: int, end: int) -> int | None:
    return end - start if start and end else None


def _since(origin: int | None, t: int) -> int | None:
    return t - origin if origin is not None and t else None


def build_report(
    run_id: str,
    targets: Sequence[Target],
    records: Sequence[FsRecord],
    guardian: GuardianRecord | None,
    guardian_pid: int | None,
) -> FreezeReport:
    """Assemble a report from the native records (after the window)."""
    starts = [r.freeze_start_ns for r in records if r.freeze_start_ns]
    origin = min(starts) if starts else None
    # Only a FITHAW that thawed ends the window: one that failed (EINVAL: someone else thawed
    # first, at a time nobody recorded; EIO: maybe still frozen) says nothing of when it ended.
    thaw_ends = [r.thaw_end_ns for r in records if r.thaw_end_ns and r.thaw_errno == 0]
    flush = [(r.flush_start_ns, r.flush_end_ns) for r in records if r.flush_start_ns]
    report = FreezeReport(run_id=run_id, guardian_pid=guardian_pid, window_start_ns=origin)
    if origin is not None and thaw_ends:
        report.window_ns = max(thaw_ends) - origin
    if flush:
        report.preflush_ns = max(e for _, e in flush) - min(s for s, _ in flush)
    if guardian is not None:
        report.guardian_reason = guardian.reason
        if guardian.deadline_ns:
            report.guardian_deadline_at_ns = _since(origin, guardian.deadline_ns)
        if guardian.reason is not None:
            report.guardian_fired_at_ns = _since(origin, guardian.fired_ns)
    for target, rec in zip(targets, records, strict=True):
        m = target.mount
        report.targets.append(
            FilesystemResult(
                mount_point=m.mount_point,
                dev=m.dev,
                fstype=m.fstype,
                mount_id=m.mount_id,
                state=_state_of(rec),
                preflush_ns=_span(rec.flush_start_ns, rec.flush_end_ns),
                preflush_errno=rec.flush_errno,
                freeze_at_ns=_since(origin, rec.freeze_start_ns),
                freeze_ns=_span(rec.freeze_start_ns, rec.freeze_end_ns),
                freeze_errno=rec.freeze_errno,
                thaw_at_ns=_since(origin, rec.thaw_start_ns),
                thaw_ns=_span(rec.thaw_start_ns, rec.thaw_end_ns),
                thaw_errno=rec.thaw_errno,
                preflush_at_ns=_since(origin, rec.flush_start_ns),
            )
        )
    return report


def real_thaw_failure(targets: Sequence[Target], records: Sequence[FsRecord]) -> ThawError | None:
    """A FITHAW that failed for another reason than "not frozen" (which is reported per target)."""
    for rec in records:
        if rec.thaw_errno not in (0, errno.EINVAL):
            return thaw_error(rec.thaw_errno, targets[rec.index].mount.mount_point)
    return None


def _state_of(rec: FsRecord) -> str:
    # FITHAW's EINVAL on a filesystem we froze: someone else thawed it while
    # the window was open. The snapshot may not have been taken frozen.
    if rec.state in ("thawed", "thawed-by-guardian") and rec.thaw_errno == errno.EINVAL:
        return "thawed-externally"
    return rec.state


def expiry(report: FreezeReport) -> str | None:
    """Why a window ended before its release, or None if quiesce thawed it as asked."""
    if report.guardian_reason is not None:
        at = report.guardian_fired_at_ns
        when = f" {at / 1e9:.3f} s after the first FIFREEZE" if at is not None else ""
        return f"the guardian thawed before the release ({report.guardian_reason}){when}"
    external = [t.mount_point for t in report.targets if t.state == "thawed-externally"]
    if external:
        return f"thawed by someone else while held: {', '.join(external)}"
    return None


class WindowExpiredError(QuiesceError):
    """The frozen window ended before its release: what was taken inside it is not trusted.

    The guardian thawed first (the deadline passed, or a FIFREEZE blocked),
    or someone else thawed a target while it was held. Raised when leaving
    :func:`quiesce.frozen`'s block; ``report`` is the freeze's report.
    """

    def __init__(self, message: str, report: FreezeReport) -> None:
        super().__init__(message)
        self.report = report
