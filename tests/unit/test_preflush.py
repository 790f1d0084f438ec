"""The pre-flush policy's decision and the reading of /proc/meminfo (no root)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.cli.render import preflush_text
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.preflush import (
    CLEAN,
    DEFAULT_SKIP_BELOW_BYTES,
    DIRTY,
    DISABLED,
    UNKNOWN,
    PreflushDecision,
    PreflushPolicy,
    decide,
    decide_now,
    parse_dirty,
    read_dirty,
)
from quiesce.engine.report import FreezeReport

KB = st.integers(min_value=0, max_value=1 << 40)
BYTES = st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 50))
POLICY = st.builds(PreflushPolicy, st.integers(min_value=0, max_value=1 << 40))

MEMINFO = """MemTotal:       24683500 kB
MemFree:        22200000 kB
Dirty:             {dirty} kB
Writeback:         {wb} kB
WritebackTmp:          7 kB
"""


@given(dirty=KB, wb=KB)
def test_parse_sums_dirty_and_writeback_in_bytes(dirty, wb):
    """Dirty + Writeback, kB to bytes; WritebackTmp and the rest are not counted."""
    assert parse_dirty(MEMINFO.format(dirty=dirty, wb=wb)) == (dirty + wb) * 1024


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Dirty: 12 kB\n",  # no Writeback
        "Writeback: 12 kB\n",  # no Dirty
        "Dirty: 12 MB\nWriteback: 0 kB\n",  # not kB
        "Dirty: -3 kB\nWriteback: 0 kB\n",
        "Dirty: twelve kB\nWriteback: 0 kB\n",
        "Dirty:\nWriteback: 0 kB\n",
    ],
)
def test_parse_refuses_what_it_cannot_read(text):
    """A missing or odd figure gives None (the caller then pre-flushes), never a guess."""
    assert parse_dirty(text) is None


def test_read_dirty_reads_this_machine_and_none_for_a_missing_file(tmp_path):
    """/proc/meminfo parses here; an unreadable file gives None."""
    assert isinstance(read_dirty(), int)
    assert read_dirty(str(tmp_path / "absent")) is None
    (tmp_path / "m").write_text(MEMINFO.format(dirty=3, wb=4))
    assert read_dirty(str(tmp_path / "m")) == 7 * 1024


@given(dirty=BYTES, policy=POLICY)
def test_disabled_never_flushes(dirty, policy):
    """``--no-preflush`` wins over any figure."""
    d = decide(False, dirty, policy)
    assert (d.flush, d.reason, d.dirty_bytes) == (False, DISABLED, dirty)


@given(policy=POLICY)
def test_unknown_dirty_flushes(policy):
    """With no figure the window is protected: pre-flush."""
    assert decide(True, None, policy) == PreflushDecision(True, UNKNOWN, None)


@given(dirty=st.integers(min_value=0, max_value=1 << 50), policy=POLICY)
def test_flushes_exactly_from_the_threshold_up(dirty, policy):
    """Below the threshold skipped as clean, at or above it flushed as dirty; the figure is kept."""
    d = decide(True, dirty, policy)
    flush = dirty >= policy.skip_below_bytes
    assert (d.flush, d.reason, d.dirty_bytes) == (flush, DIRTY if flush else CLEAN, dirty)


SIZE = st.integers(min_value=0, max_value=1 << 50)


@given(a=SIZE, b=SIZE, policy=POLICY)
def test_more_dirty_never_flushes_less(a, b, policy):
    """Monotonic: if a figure is flushed, every larger one is too."""
    lo, hi = sorted((a, b))
    assert decide(True, lo, policy).flush <= decide(True, hi, policy).flush


@given(dirty=st.integers(min_value=0, max_value=1 << 50))
def test_zero_threshold_always_flushes(dirty):
    """``skip_below_bytes=0`` is the old behaviour: always pre-flush."""
    assert decide(True, dirty, PreflushPolicy(0)).flush


def test_the_goal_case_is_flushed_by_default():
    """150 MiB dirty on a target (the dirty-window goal) is far above the default threshold."""
    assert DEFAULT_SKIP_BELOW_BYTES == 4 << 20
    assert FreezeOptions().preflush_policy == PreflushPolicy()
    assert decide(True, 150 << 20, FreezeOptions().preflush_policy).reason == DIRTY


def test_negative_threshold_is_refused():
    """A negative threshold is a programming error."""
    with pytest.raises(ValueError, match="skip_below_bytes"):
        PreflushPolicy(-1)


def test_decide_now_reads_nothing_when_disabled():
    """With the pre-flush off the figure is not read (and not reported)."""
    assert decide_now(False, PreflushPolicy()) == PreflushDecision(False, DISABLED, None)
    live = decide_now(True, PreflushPolicy())
    assert live.dirty_bytes is not None and live.reason in (DIRTY, CLEAN)


def test_report_carries_the_decision_as_plain_data():
    """The decision serialises with the report, and the terminal line says why it was skipped."""
    report = FreezeReport(run_id="r", preflush_ns=None, preflush=PreflushDecision(False, CLEAN, 3 << 20))
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["preflush"] == {"flush": False, "reason": CLEAN, "dirty_bytes": 3 << 20}
    assert preflush_text(report) == "skipped (3.0 MiB dirty machine-wide)"
    off = dataclasses.replace(report, preflush=PreflushDecision(False, DISABLED, None))
    assert preflush_text(off) == "off"
    ran = dataclasses.replace(report, preflush_ns=2_500_000, preflush=PreflushDecision(True, DIRTY, 1 << 30))
    assert preflush_text(ran) == "2.50 ms"
