"""Result classes by Azure's documented rules (REFERENCE.md 1.3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.run import APPLICATION, CRASH, FAILED, FILESYSTEM, Outcomes, classify

RANK = {FAILED: 0, CRASH: 1, FILESYSTEM: 2, APPLICATION: 3}

ALL_OK = Outcomes(
    pre_ok=True, freeze_enabled=True, froze=True, snapshot_taken=True, post_ok=True, continue_on_failure=True
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, APPLICATION),
        ({"pre_ok": False}, FILESYSTEM),  # pre failed, continue: frozen snapshot
        ({"pre_ok": False, "continue_on_failure": False, "snapshot_taken": False, "froze": False}, FAILED),
        ({"froze": False}, CRASH),  # freeze failed, continue: unfrozen snapshot
        ({"post_ok": False}, APPLICATION),  # post failure with continue: a warning
        ({"post_ok": False, "continue_on_failure": False}, FAILED),
        ({"snapshot_taken": False}, FAILED),
        ({"freeze_enabled": False, "froze": False}, APPLICATION),
        ({"freeze_enabled": False, "froze": False, "pre_ok": False}, FAILED),
        ({"freeze_enabled": False, "froze": False, "post_ok": False}, FAILED),
    ],
)
def test_documented_rules(changes, expected):
    """Each documented rule gives its result class."""
    assert classify(replace(ALL_OK, **changes)) == expected


outcomes = st.builds(
    Outcomes,
    pre_ok=st.booleans(),
    freeze_enabled=st.booleans(),
    froze=st.booleans(),
    snapshot_taken=st.booleans(),
    post_ok=st.booleans(),
    continue_on_failure=st.booleans(),
)


@given(outcomes)
def test_application_consistent_needs_every_step(o):
    """Application-consistent needs the pre-script, the snapshot, and the freeze (unless freeze is off)."""
    if classify(o) == APPLICATION:
        assert o.pre_ok and o.snapshot_taken
        assert o.froze or not o.freeze_enabled


@given(outcomes, st.sampled_from(["pre_ok", "froze", "snapshot_taken", "post_ok"]))
def test_a_step_succeeding_never_lowers_the_class(o, step):
    """Turning any one step from failure to success never gives a worse result class."""
    better = replace(o, **{step: True})
    assert RANK[classify(better)] >= RANK[classify(o)]


@given(outcomes)
def test_no_snapshot_is_always_failed(o):
    """Without a snapshot the backup failed, whatever else happened."""
    if not o.snapshot_taken:
        assert classify(o) == FAILED
