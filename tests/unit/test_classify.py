"""Result classes by Azure's documented rules (REFERENCE.md 1.3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.azure.verdict import APPLICATION, CRASH, FAILED, FILESYSTEM, RANK, Outcomes, classify

ALL_OK = Outcomes(
    pre_ok=True, freeze_enabled=True, froze=True, snapshot_taken=True, post_ok=True, continue_on_failure=True
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, APPLICATION),
        ({"pre_ok": False}, FILESYSTEM),  # pre failed, continue: frozen snapshot
        ({"pre_ok": False, "continue_on_failure": False, "snapshot_taken": False, "froze": False}, FAILED),
        ({"pre_ok": False, "continue_on_failure": False}, FAILED),
        ({"froze": False}, CRASH),  # freeze failed or cut short, continue: unfrozen snapshot
        ({"froze": False, "continue_on_failure": False}, FAILED),
        ({"post_ok": False}, FILESYSTEM),  # post failed, continue: falls back (the document)
        ({"post_ok": False, "continue_on_failure": False}, FAILED),
        ({"post_ok": False, "froze": False}, CRASH),
        ({"snapshot_taken": False}, FAILED),
        ({"freeze_enabled": False, "froze": False}, APPLICATION),
        ({"freeze_enabled": False, "froze": False, "pre_ok": False}, CRASH),  # the document, not Azure's code
        ({"freeze_enabled": False, "froze": False, "post_ok": False}, CRASH),
        ({"freeze_enabled": False, "froze": False, "pre_ok": False, "continue_on_failure": False}, FAILED),
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
    """Application-consistent needs every script, the snapshot, and the freeze (unless freeze is off)."""
    if classify(o) == APPLICATION:
        assert o.pre_ok and o.post_ok and o.snapshot_taken
        assert o.froze or not o.freeze_enabled


@given(outcomes)
def test_any_failure_without_continue_fails_the_backup(o):
    """With continueBackupOnFailure false, anything short of application-consistent is failed."""
    if not o.continue_on_failure:
        assert classify(o) in (APPLICATION, FAILED)


@given(outcomes)
def test_file_system_consistent_needs_a_freeze_that_held(o):
    """File-system-consistent only when the snapshot was taken inside a freeze that held."""
    if classify(o) == FILESYSTEM:
        assert o.freeze_enabled and o.froze and o.snapshot_taken


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
