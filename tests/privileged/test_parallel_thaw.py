"""Parallel thaw: independent filesystems thaw at once, a loop stack still thaws holder first."""

from __future__ import annotations

import pytest

from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.report import FilesystemResult
from tests.privileged.conftest import targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

CYCLES = 30


def _thaw_span(t: FilesystemResult) -> tuple[int, int]:
    assert t.thaw_at_ns is not None and t.thaw_ns is not None
    return t.thaw_at_ns, t.thaw_at_ns + t.thaw_ns


def _overlapping(ts: list[FilesystemResult]) -> bool:
    """Two FITHAW calls of the list were in the kernel at the same time."""
    spans = sorted(_thaw_span(t) for t in ts)
    return any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))


def _cycles(fs, run_dir, parallel: bool) -> list[list[FilesystemResult]]:
    reports = []
    for _ in range(CYCLES):
        opts = FreezeOptions(timeout_s=20, run_dir=run_dir, parallel=parallel, preflush=False)
        with frozen(targets(fs["ext4"], fs["xfs"], fs["btrfs"]), opts) as f:
            pass
        assert f.report.ok, f.report
        reports.append(f.report.targets)
    return reports


def test_independent_filesystems_thaw_at_once(fs, run_dir):
    """Parallel (the default): in some cycle two FITHAW calls overlap; sequential ones never do.

    Whether two threads are in FITHAW together depends on the scheduler (two
    cores, shared), so the parallel side needs one overlapping cycle of
    thirty; the sequential side may never show one.
    """
    parallel = _cycles(fs, run_dir, parallel=True)
    sequential = _cycles(fs, run_dir, parallel=False)
    assert not any(_overlapping(ts) for ts in sequential)
    assert sum(_overlapping(ts) for ts in parallel) >= 1


def test_stacked_filesystem_thaws_after_its_holder(fs, run_dir):
    """Parallel with a loop stack: the outer (holding the image) thaws before the inner starts to."""
    for _ in range(5):
        order = targets(fs["ext4"], fs["inner"], fs["outer"], fs["xfs"], fs["btrfs"])
        opts = FreezeOptions(timeout_s=20, step_timeout_s=5, run_dir=run_dir)
        with frozen(order, opts) as f:
            pass
        r = f.report
        assert r.ok and r.guardian_reason is None, r
        by = {t.mount_point: t for t in r.targets}
        inner, outer = by[str(fs["inner"].mount_point)], by[str(fs["outer"].mount_point)]
        # Freeze: the upper first. Thaw: the holder first, the upper only after it returned.
        assert inner.freeze_at_ns + inner.freeze_ns <= outer.freeze_at_ns
        assert _thaw_span(outer)[1] <= _thaw_span(inner)[0]
        assert {t.state for t in r.targets} == {"thawed"}
