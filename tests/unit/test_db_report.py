"""The database tests' summary labels negative controls, so a passing log never reads as a failure."""

from __future__ import annotations

from tests.db.checks import NEGATIVE_PREFIX, Cycle
from tests.db.report import summary


def test_negative_control_lines_say_the_failure_is_expected():
    """'0 of 3 restored whole' of a copy without quiesce is labelled a control with expected outcomes."""
    control = [
        Cycle("postgresql", f"{NEGATIVE_PREFIX} file copy in name order", i, problems=["server log: x"])
        for i in (1, 2, 3)
    ]
    good = [Cycle("postgresql", "quiesce: session hook", 1, started=True, check_ok=True)]
    lines = summary(good + control)
    assert lines[0] == "postgresql / quiesce: session hook: 1 of 1 restored whole"
    assert lines[1] == (
        "postgresql / no quiesce: file copy in name order (negative control: not restoring whole is the "
        "expected outcome): 0 of 3 restored whole; expected: did not start 3"
    )
