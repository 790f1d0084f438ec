"""Micro-benchmarks of quiesce's native engine on one ext4 loop filesystem.

Run as root: ``python -m pytest bench -q --benchmark-only``. They report
figures and assert only behaviour (every filesystem ends thawed by quiesce,
the guardian never had to act): this shared VM is too noisy for timing
thresholds. The native windows and the floor's windows are in each
benchmark's ``extra_info`` (``--benchmark-json`` keeps them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from floorprog import run_floor

from quiesce.bench.stats import median
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.native import FsRecord, Session, now_ns
from quiesce.engine.plan import Target

TIMEOUT_NS = 10_000_000_000
STEP_TIMEOUT_NS = 5_000_000_000
ROUNDS = 200


def window_ns(records: Sequence[FsRecord]) -> int:
    """First FIFREEZE start to last FITHAW end."""
    return max(r.thaw_end_ns for r in records) - min(r.freeze_start_ns for r in records)


def figures(prefix: str, values: Sequence[int]) -> dict[str, float]:
    """min / median / max of a sample, in microseconds, for extra_info."""
    return {
        f"{prefix}_min_us": min(values) / 1e3,
        f"{prefix}_median_us": median(values) / 1e3,
        f"{prefix}_max_us": max(values) / 1e3,
        f"{prefix}_n": len(values),
    }


class CycleRounds:
    """Setup and teardown for pedantic rounds: one fresh session per freeze.

    Each setup first runs the floor for one window in its own process (so the
    floor and the engine alternate, with a similar idle gap before each),
    then creates the session and, when ``guarded``, arms the guardian.
    Teardown disarms, records and closes; :meth:`close` does it for any
    session a failed (or disabled) run left behind.
    """

    def __init__(self, fd: int, label: str, floor_bin: Path, guarded: bool) -> None:
        self.fd, self.label, self.floor_bin, self.guarded = fd, label, floor_bin, guarded
        self.live: list[Session] = []
        self.windows: list[int] = []
        self.floor: list[int] = []
        self.states: list[str] = []
        self.guardian_reasons: list[str | None] = []

    def setup(self) -> tuple[tuple[Session], dict[str, object]]:
        self.floor.extend(run_floor(self.floor_bin, 1, [self.label]))
        s = Session([self.fd], [self.label])
        try:
            if self.guarded:
                s.arm(TIMEOUT_NS, STEP_TIMEOUT_NS)
        except BaseException:
            s.close()
            raise
        self.live.append(s)
        return (s,), {}

    def teardown(self, s: Session) -> None:
        self.live.remove(s)
        try:
            if self.guarded:
                s.disarm()
                self.guardian_reasons.append(s.guardian().reason)
            records = s.records()
            self.states.extend(r.state for r in records)
            if all(r.thaw_end_ns for r in records):
                self.windows.append(window_ns(records))
        finally:
            s.close()

    def close(self) -> None:
        for s in list(self.live):
            self.teardown(s)


@pytest.mark.parametrize("guarded", [True, False], ids=["guardian-armed", "no-guardian"])
def test_engine_cycle_vs_floor(
    benchmark, report_figures, ext4_fd: int, ext4_target: Target, floor_bin: Path, guarded: bool
) -> None:
    """Session.cycle() on one ext4, next to the floor's windows on the same filesystem.

    The timed call is cycle() as Python sees it (the cffi call, the
    guardian's begin message, the window). extra_info has the native window;
    the floor's windows taken one per process, alternating with the engine's
    rounds (``floor_paired``); and the floor's windows taken back to back in
    one process (``floor_b2b``), the least a window costs here.
    """
    label = ext4_target.mount.mount_point
    rounds = CycleRounds(ext4_fd, label, floor_bin, guarded)
    b2b = run_floor(floor_bin, ROUNDS // 2, [label])
    try:
        benchmark.pedantic(
            Session.cycle,
            setup=rounds.setup,
            teardown=rounds.teardown,
            rounds=ROUNDS,
            warmup_rounds=5,
        )
    finally:
        rounds.close()
    b2b += run_floor(floor_bin, ROUNDS // 2, [label])

    assert rounds.states and set(rounds.states) == {"thawed"}
    if guarded:
        assert rounds.guardian_reasons and set(rounds.guardian_reasons) == {None}
    info = benchmark.extra_info
    info.update(figures("engine_window", rounds.windows))
    info.update(figures("floor_paired_window", rounds.floor))
    info.update(figures("floor_b2b_window", b2b))
    engine_median = median(rounds.windows)
    info["engine_over_floor_paired"] = engine_median / median(rounds.floor)
    info["engine_over_floor_b2b"] = engine_median / median(b2b)
    report_figures(info)


def test_session_arm_disarm(benchmark, ext4_fd: int, ext4_target: Target) -> None:
    """Session creation, arm (the guardian's fork) and disarm (reaping it), nothing frozen."""
    label = ext4_target.mount.mount_point
    statuses: list[int | None] = []

    def arm_disarm() -> None:
        with Session([ext4_fd], [label]) as s:
            s.arm(TIMEOUT_NS, STEP_TIMEOUT_NS)
            s.disarm()
            statuses.append(s.guardian().exit_status)

    benchmark(arm_disarm)
    assert statuses and set(statuses) == {0}


def test_freeze_path_total(benchmark, report_figures, ext4_target: Target, root_run_dir: str) -> None:
    """The whole Freeze: lock, ledger, guardian, pre-flush, cycle, disarm, report."""
    opts = FreezeOptions(timeout_s=TIMEOUT_NS / 1e9, run_dir=root_run_dir)
    windows: list[int] = []
    states: list[str] = []

    def one_freeze() -> None:
        with Freeze([ext4_target], opts) as f:
            f.prepare()
            f.cycle()
        assert f.report.ok, f.report.to_dict()
        states.extend(t.state for t in f.report.targets)
        if f.report.window_ns is not None:
            windows.append(f.report.window_ns)

    benchmark.pedantic(one_freeze, rounds=ROUNDS // 2, warmup_rounds=3)
    assert set(states) == {"thawed"}
    benchmark.extra_info.update(figures("freeze_path_window", windows))
    report_figures(benchmark.extra_info)


def test_now_ns_through_cffi(benchmark) -> None:
    """quiesce.engine.native.now_ns(): one cffi call to clock_gettime(CLOCK_MONOTONIC)."""
    before = time.monotonic_ns()
    value = benchmark(now_ns)
    assert value >= before  # the same clock as time.monotonic_ns()


def test_monotonic_ns_reference(benchmark) -> None:
    """time.monotonic_ns(), the same clock without cffi: the reference for the call above."""
    value = benchmark(time.monotonic_ns)
    assert value > 0
