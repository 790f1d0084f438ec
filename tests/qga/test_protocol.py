"""Requests, replies and argument errors: qemu-ga 7.2's exact texts, classes and key order."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.qga.jsonstream import JsonStream
from quiesce.qga.protocol import (
    BadRequest,
    QgaError,
    Request,
    check_arguments,
    disabled_while_frozen,
    not_found,
    parse_request,
    reply_error,
    reply_ok,
)


@pytest.mark.parametrize(
    ("value", "desc", "ident"),
    [
        ([1, 2], "QMP input must be a JSON object", None),
        ("str", "QMP input must be a JSON object", None),
        ({}, "QMP input lacks member 'execute'", None),
        ({"id": 1}, "QMP input lacks member 'execute'", 1),
        ({"execute": 5}, "QMP input member 'execute' must be a string", None),
        (
            {"execute": "guest-ping", "arguments": None},
            "QMP input member 'arguments' must be an object",
            None,
        ),
        ({"execute": "guest-ping", "arguments": []}, "QMP input member 'arguments' must be an object", None),
        ({"foo": 1}, "QMP input member 'foo' is unexpected", None),
        ({"execute": "guest-ping", "exec-oob": "x"}, "QMP input member 'exec-oob' is unexpected", None),
        ({"execute": "guest-ping", "control": {}}, "QMP input member 'control' is unexpected", None),
    ],
)
def test_bad_requests(value, desc, ident):
    """What qemu-ga's dispatcher says about a value that is not a request; the id is kept."""
    with pytest.raises(BadRequest) as info:
        parse_request(value)
    assert info.value.desc == desc and info.value.error_class == "GenericError"
    line = reply_error(info.value, info.value.ident)
    expected = {"error": {"class": "GenericError", "desc": desc}}
    if ident is not None:
        expected = {"id": ident, **expected}
    assert json.loads(line) == expected


def test_request_id_any_value_echoed():
    """Any JSON value is an id; a success echoes it after "return", an error before "error"."""
    req = parse_request({"execute": "guest-ping", "id": {"x": [1]}})
    assert req == Request("guest-ping", {}, {"x": [1]}, True)
    assert reply_ok({}, req) == b'{"return": {}, "id": {"x": [1]}}\n'
    assert reply_error(not_found("guest-x"), req.id) == (
        b'{"id": {"x": [1]}, "error": {"class": "CommandNotFound", '
        b'"desc": "The command guest-x has not been found"}}\n'
    )
    null_id = parse_request({"execute": "guest-ping", "id": None})
    assert reply_ok({}, null_id) == b'{"return": {}, "id": null}\n'


def test_delimited_reply_has_the_sentinel_first():
    """guest-sync-delimited's reply starts with 0xFF."""
    req = parse_request({"execute": "guest-sync-delimited", "arguments": {"id": 3}, "id": "q"})
    assert reply_ok(3, req, delimited=True) == b'\xff{"return": 3, "id": "q"}\n'


def test_disabled_text():
    """The frozen-state refusal, word for word."""
    err = disabled_while_frozen("guest-get-osinfo")
    assert (err.error_class, err.desc) == (
        "CommandNotFound",
        "Command guest-get-osinfo has been disabled: the agent is in frozen state",
    )


SYNC = {"id": "int"}
LIST = {"*mountpoints": "[str]"}


@pytest.mark.parametrize(
    ("arguments", "spec", "desc"),
    [
        ({}, SYNC, "Parameter 'id' is missing"),
        ({"id": "x"}, SYNC, "Invalid parameter type for 'id', expected: integer"),
        ({"id": 1.5}, SYNC, "Invalid parameter type for 'id', expected: integer"),
        ({"id": True}, SYNC, "Invalid parameter type for 'id', expected: integer"),
        ({"id": 1 << 64}, SYNC, "Invalid parameter type for 'id', expected: integer"),
        ({"id": 1, "extra": 2}, SYNC, "Parameter 'extra' is unexpected"),
        ({"a": 1}, {}, "Parameter 'a' is unexpected"),
        ({"mountpoints": "x"}, LIST, "Invalid parameter type for 'mountpoints', expected: array"),
        ({"mountpoints": None}, LIST, "Invalid parameter type for 'mountpoints', expected: array"),
        ({"mountpoints": [1]}, LIST, "Invalid parameter type for 'mountpoints[0]', expected: string"),
    ],
)
def test_argument_errors(arguments, spec, desc):
    """Arguments are checked as QAPI checks them; null never stands for an absent list."""
    with pytest.raises(QgaError) as info:
        check_arguments(arguments, spec)
    assert info.value.desc == desc and info.value.error_class == "GenericError"


def test_good_arguments():
    """Valid arguments come back; an absent optional member is absent."""
    assert check_arguments({"id": -5}, SYNC) == {"id": -5}
    assert check_arguments({}, LIST) == {}
    assert check_arguments({"mountpoints": []}, LIST) == {"mountpoints": []}


def test_forwarded_request_keeps_arguments_and_id():
    """A forwarded request is re-encoded with its arguments and id."""
    req = parse_request({"execute": "guest-exec", "arguments": {"path": "/bin/true"}, "id": 9})
    assert json.loads(req.to_json()) == {"execute": "guest-exec", "arguments": {"path": "/bin/true"}, "id": 9}
    assert req.to_json().endswith(b"\n")


def test_a_forwarded_request_keeps_the_order_the_host_sent():
    """Members reach the other agent in the host's order: in one of qemu's buckets, that orders the reply."""
    from quiesce.qga.qjson import qdict_bucket

    assert qdict_bucket("k10") == qdict_bucket("k11")  # the later one is written first in a reply
    request = parse_request(
        {
            "execute": "guest-get-osinfo",
            "arguments": {"k10": 1, "k11": 2},
            "id": {"k10": [{"k10": 1, "k11": 2}], "k11": 3},
        }
    )
    assert request.to_json() == (
        b'{"execute": "guest-get-osinfo", "arguments": {"k10": 1, "k11": 2}, '
        b'"id": {"k10": [{"k10": 1, "k11": 2}], "k11": 3}}\n'
    )


def _same(a: object, b: object) -> bool:
    """Equal, and of the same JSON types: 1 is not 1.0, and -0.0 is not 0.0."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) is float and (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


ids = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.sampled_from([-0.0, 1e5, float("inf"), float("-inf"), 5e-324])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@given(ids)
def test_a_forwarded_request_reads_back_as_the_same_request(ident):
    """The other agent reads the id it is passed as the host sent it: -0.0, 1e5 and infinities included."""
    request = Request("guest-get-osinfo", {}, ident, True)
    (parsed,) = JsonStream().feed(request.to_json())
    assert parsed.error is None
    assert _same(parsed.value, {"execute": "guest-get-osinfo", "id": ident})
