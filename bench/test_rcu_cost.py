"""rcu_cost.py: the spinner runs past both the window and its control interval (no root needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rcu_cost import CONTROL_GAP_NS, control_interval, spin_until

MS = 1_000_000


@given(
    started=st.integers(0, 10**12),
    lead=st.integers(0, 500 * MS),
    length=st.integers(1, 100 * MS),
)
def test_the_spinner_outlives_the_window_and_the_control(started, lead, length):
    """Whichever side the control falls on, the spinner is stopped only after both intervals ended."""
    a = started + lead
    b = a + length
    control = control_interval(started, a, b)
    until = spin_until(control, b)
    assert until >= b + CONTROL_GAP_NS
    assert until >= control[1] + CONTROL_GAP_NS
    assert control[1] - control[0] == b - a


def test_a_control_before_the_window_still_keeps_the_spinner_past_it():
    """The case that stopped the spinner inside the window: a control that ends before it starts."""
    started, a, b = 0, 100 * MS, 106 * MS
    control = control_interval(started, a, b)
    assert control[1] < a  # before the window
    assert spin_until(control, b) == b + CONTROL_GAP_NS
