"""The API's arguments checked before anything is opened or frozen: a clear exception for a bad one."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

import quiesce
from quiesce.engine.mountinfo import Mount


def target(mount_point: str, dev: str) -> quiesce.Target:
    """A planned Target for a made-up mount (nothing is opened: the checks come first)."""
    major, minor = (int(x) for x in dev.split(":"))
    mount = Mount(
        mount_id=len(mount_point),
        parent_id=1,
        major=major,
        minor=minor,
        root="/",
        mount_point=mount_point,
        mount_options=("rw",),
        optional_fields=(),
        fstype="ext4",
        source="/dev/x",
        super_options=("rw",),
    )
    return quiesce.Target(mount, None, None)


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, -1, 0, 0.0, 3600.5, 1e12, 1e300])
@pytest.mark.parametrize("field", ["timeout_s", "step_timeout_s"])
def test_a_timeout_out_of_range_is_a_value_error(field, seconds):
    """NaN, infinities, zero, negatives, past an hour: ValueError, never an OverflowError later."""
    with pytest.raises(ValueError, match="positive number of seconds"):
        quiesce.FreezeOptions(**{field: seconds})


def test_the_range_is_named():
    """The error names the hour the command line and the config allow too."""
    with pytest.raises(ValueError, match="at most 3600"):
        quiesce.FreezeOptions(timeout_s=1e12)


@pytest.mark.parametrize("seconds", [True, False, "10", b"10", None, [10]])
def test_a_timeout_that_is_no_number_is_a_type_error(seconds):
    """A bool, a string or None is not a number of seconds (``True`` is not one second)."""
    with pytest.raises(TypeError, match="number of seconds"):
        quiesce.FreezeOptions(timeout_s=seconds)
    if seconds is not None:  # None is step_timeout_s's "the default"
        with pytest.raises(TypeError, match="number of seconds"):
            quiesce.FreezeOptions(step_timeout_s=seconds)


@pytest.mark.parametrize("seconds", [1e-3, 1, 10.5, 3600, Fraction(1, 2)])
def test_timeouts_in_range_are_taken(seconds):
    """Any real number above 0 and at most an hour: ints, floats, fractions."""
    opts = quiesce.FreezeOptions(timeout_s=seconds, step_timeout_s=seconds)
    assert opts.timeout_ns == max(1, round(seconds * 1e9))


def test_frozen_timeout_is_checked_the_same_way():
    """``frozen(..., timeout=)`` goes through the same checks, before anything is planned."""
    with pytest.raises(ValueError):
        with quiesce.frozen(["/nonexistent"], timeout=math.nan):
            pytest.fail("ran")
    with pytest.raises(TypeError):
        with quiesce.frozen(["/nonexistent"], timeout="5"):  # type: ignore[arg-type]
            pytest.fail("ran")
