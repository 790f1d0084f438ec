"""quiesce.qga.qjson: JSON written as qemu-ga 7.2 writes it (the expected bytes are its, recorded)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.qga.qjson import QDICT_BUCKETS, dumps, qdict_bucket


def test_members_come_in_qemus_hash_table_order():
    """qemu-ga answered these ids with their members in this order."""
    obj = {"a": 1, "b": 2, "c": 3, "zz": 4, "id": 5, "return": 6}
    assert dumps(obj) == '{"a": 1, "zz": 4, "b": 2, "return": 6, "c": 3, "id": 5}'
    assert dumps({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'
    # The replies' own members: "return" before "id", "id" before "error", "class" before "desc".
    assert dumps({"return": {}, "id": 1}) == '{"return": {}, "id": 1}'
    assert dumps({"error": {"class": "C", "desc": "D"}, "id": 1}) == (
        '{"id": 1, "error": {"class": "C", "desc": "D"}}'
    )


def test_a_bucket_is_within_the_table():
    assert {qdict_bucket(k) for k in ("", "a", "\u00e9", "x" * 1000)} <= set(range(QDICT_BUCKETS))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.10000000000000001"),
        (100000.0, "100000"),
        (-0.0, "-0"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (1.8446744073709552e19, "1.8446744073709552e+19"),
        (18446744073709551615, "18446744073709551615"),
        (True, "true"),
        (None, "null"),
        ("\u00e9\U0001f600\x00", '"\\u00E9\\uD83D\\uDE00\\u0000"'),
        ([], "[]"),
        ({}, "{}"),
        ([1, [2, {}], "a"], '[1, [2, {}], "a"]'),
    ],
)
def test_scalars_and_containers(value, text):
    assert dumps(value) == text


def test_any_depth_the_reader_takes_is_written_back():
    """1024 levels (qemu's nesting limit) need no recursion."""
    deep: object = 1
    for _ in range(1024):
        deep = {"k": [deep]}
    text = dumps(deep)
    assert text.startswith('{"k": [' * 3) and text.count("[") == 1024


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_what_is_written_reads_back_as_the_same_value(value):
    """Whatever the member order, the text is JSON that holds the same value."""
    assert json.loads(dumps(value)) == value


def test_a_key_holding_u0000_is_hashed_as_qemu_holds_it():
    """U+0000 in a key is C0 80 to qemu (modified UTF-8): its bucket, hence the order, follows that."""
    ident = {"\0": 1, "a": 2, "b": 3, "c": 4, "x\0y": 5, "\u00e9": 6}
    # Recorded from Debian's qemu-ga 7.2 echoing this id.
    want = '{"\\u00E9": 6, "\\u0000": 1, "a": 2, "x\\u0000y": 5, "b": 3, "c": 4}'
    assert dumps(ident) == want
