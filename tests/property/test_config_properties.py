"""Properties of Azure's config parsing over generated values: accepted exactly when meant, named when not.

Every generated document goes through the public ``parse_config``; the only
outcomes allowed are a config or ``IncorrectJSONConfigFile`` naming the key.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quiesce.azure.config import MAX_ARG_BYTES, MAX_ARGV_BYTES, MAX_POLL_S, MAX_RETRIES, MAX_TIMEOUT_S
from quiesce.azure.configparse import parse_config
from quiesce.azure.text import MAX_CONFIG_BYTES
from quiesce.engine.freeze import FreezeOptions
from quiesce.errors import IncorrectJSONConfigFile

BASE = {"preScriptLocation": "/opt/pre.sh", "postScriptLocation": "/opt/post.sh"}
#: Each integer key, its PluginConfig field and its inclusive range.
INTEGER_KEYS = {
    "timeoutInSeconds": ("timeout_s", 1, MAX_TIMEOUT_S),
    "preScriptNoOfRetries": ("pre_retries", 0, MAX_RETRIES),
    "postScriptNoOfRetries": ("post_retries", 0, MAX_RETRIES),
    "ScriptsExecutionPollTimeSeconds": ("poll_s", 1, MAX_POLL_S),
}


def outcome(text: str) -> Any:
    """The parsed config, or the message of the IncorrectJSONConfigFile; anything else fails the test."""
    try:
        return parse_config(text, source="cfg").config
    except IncorrectJSONConfigFile as err:
        return str(err)


def spelled(value: int, style: int) -> str:
    """The integer ``value`` as JSON can write it: 30, 30.0, 3e1, 3.0E+1, 300e-1."""
    if style == 0:
        return str(value)
    if style == 1:
        return f"{value}.0"
    if style == 2:
        return f"{value}e0"
    if style == 3:
        return f"{value * 10}e-1"
    return f"{value / 10!r}E+1" if value % 10 == 0 else f"{value}.000E0"


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(sorted(INTEGER_KEYS)), value=st.integers(-5, 2000), style=st.integers(0, 4))
def test_an_integer_key_reads_the_number_not_its_spelling(key, value, style):
    """However a whole number is written, it is accepted exactly when in range, as that int."""
    field, low, high = INTEGER_KEYS[key]
    result = outcome(json.dumps(BASE)[:-1] + f', "{key}": {spelled(value, style)}}}')
    if low <= value <= high:
        assert not isinstance(result, str), result
        assert getattr(result, field) == value and type(getattr(result, field)) is int
    else:
        assert isinstance(result, str) and f"{key} = " in result and f"from {low} to {high}" in result


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from(sorted(INTEGER_KEYS)),
    value=st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()),
)
def test_an_integer_key_refuses_every_fraction(key, value):
    """No fraction is rounded into a count or whole seconds: refused naming the key."""
    result = outcome(json.dumps({**BASE, key: value}))
    assert isinstance(result, str) and f"{key} = " in result and "an integer from" in result


JSON_NON_NUMBERS = st.recursive(
    st.none() | st.booleans() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(INTEGER_KEYS)), value=JSON_NON_NUMBERS)
def test_an_integer_key_refuses_every_other_json_type(key, value):
    """Strings ("30"), booleans, null, lists and objects are refused naming the key, never coerced."""
    result = outcome(json.dumps({**BASE, key: value}))
    assert isinstance(result, str) and f"{key} = " in result


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["preScriptParams", "postScriptParams"]),
    sizes=st.lists(st.integers(0, 2 * MAX_ARG_BYTES), max_size=8),
    empties=st.integers(0, 130_000),
)
def test_parameters_are_accepted_exactly_when_execve_takes_them(key, sizes, empties):
    """A parameter list is accepted iff each argument and the whole list fit the kernel's limits."""
    sizes = sizes + [0] * empties
    # Within the config file's own size limit ("x...", is 4 bytes more than x...).
    assume(sum(size + 4 for size in sizes) + 200 <= MAX_CONFIG_BYTES)
    params = ["x" * size for size in sizes]
    result = outcome(json.dumps({**BASE, key: params}))
    fits = all(size <= MAX_ARG_BYTES for size in sizes) and sum(s + 9 for s in sizes) <= MAX_ARGV_BYTES
    if fits:
        assert not isinstance(result, str), result
        assert (result.pre_params if key == "preScriptParams" else result.post_params) == tuple(params)
    else:
        assert isinstance(result, str) and f"{key}" in result and "bytes" in result


@settings(max_examples=300, deadline=None)
@given(seconds=st.floats(min_value=0, max_value=3600, exclude_min=True))
def test_any_positive_freeze_timeout_is_a_real_deadline(seconds):
    """FreezeOptions never hand the guardian 0 ns (its "no deadline"), nor less than was asked."""
    options = FreezeOptions(timeout_s=seconds)
    assert options.timeout_ns >= 1 and options.step_timeout_ns >= 1
    assert options.timeout_ns >= math.floor(seconds * 1e9)
    assert options.step_timeout_ns <= options.timeout_ns
