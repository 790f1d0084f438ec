"""The wire format: values and errors split out of a byte stream as qemu-ga 7.2 splits them.

The expected results are what Debian's qemu-ga 7.2.22 answered to the same
bytes (its reply's ``desc`` for each error: ``JSON parse error, <message>``, or a limit's
message alone, ``JSON nesting depth limit exceeded``;
``tests/qga/test_parity.py`` replays several of them against it live).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiesce.qga.jsonstream import MAX_NESTING, PARSE_ERROR, JsonStream, Parsed

E = PARSE_ERROR  # before a lexer's or a parser's message; a limit's stands alone


def results(data: bytes) -> list[tuple[object, str | None]]:
    return [(p.value, p.error) for p in JsonStream().feed(data)]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"execute":"guest-ping"}\n', [({"execute": "guest-ping"}, None)]),
        # Values need no newline, may share a line, and may span lines.
        (b'{"execute":"guest-ping"}', [({"execute": "guest-ping"}, None)]),
        (b'{"a":1}{"b":2}\n', [({"a": 1}, None), ({"b": 2}, None)]),
        (b'{"a":1,\n"id":7}\n', [({"a": 1, "id": 7}, None)]),
        # A bare word is a complete (wrong) value; each word is one error.
        (b"garbage\n", [(None, E + "invalid keyword 'garbage'")]),
        (b"foo bar\n", [(None, E + "invalid keyword 'foo'"), (None, E + "invalid keyword 'bar'")]),
        (b"12abc\n", [(12, None), (None, E + "invalid keyword 'abc'")]),
        (b'x{"a":1}\n', [(None, E + "invalid keyword 'x'"), ({"a": 1}, None)]),
        # A stray character is one error; recovery skips to the next line or bracket.
        (b"GARBAGE\n", [(None, E + "stray 'G'")]),
        (b"-\n", [(None, E + "stray '-\n'")]),
        (b'"a\x01b"\n', [(None, E + "stray '\"a\x01'")]),
        (b'"unterminated\n', [(None, E + "stray '\"unterminated\n'")]),
        (b"\xff", [(None, E + "stray '\ufffd'")]),
        (b"\xc3\xa9\n", [(None, E + "stray '\ufffd'")]),
        (b"1.5e3 1e 0.x\n", [(1500.0, None), (None, E + "stray '1e '")]),
        # Parser errors.
        (b'{"a": }\n', [(None, E + "expecting value")]),
        (b"}\n", [(None, E + "expecting value")]),
        (b'{"execute":"a","execute":"b"}\n', [(None, E + "duplicate key")]),
        (b'"\\q"\n', [(None, E + "invalid escape sequence in string")]),
        (b'"\xc3"\n', [(None, E + "invalid UTF-8 sequence in string")]),
        # QEMU's JSON extensions and escapes.
        (b"{'execute':'guest-ping'}\n", [({"execute": "guest-ping"}, None)]),
        (b'{"x":"\\u00e9\\ud83d\\ude00\\n"}\n', [({"x": "\u00e9\U0001f600\n"}, None)]),
        (b'"\xc3\xa9"\n', [("\u00e9", None)]),
        (b"true null [1,2]\n", [(True, None), (None, None), ([1, 2], None)]),
        (b'[{}, "a", {"b": [{}]}]\n', [([{}, "a", {"b": [{}]}], None)]),
        (b"[1 2]\n", [(None, E + "expected separator in list")]),
        (b'{"a" 1}\n', [(None, E + "missing : in object pair")]),
        (b"{1: 2}\n", [(None, E + "key is not a string in object")]),
        # Too long for a 64-bit integer: a double (so never a valid "int" argument).
        (b"123456789012345678901234567890\n", [(1.2345678901234568e29, None)]),
        (b"\n  \r\n\t", []),
        # Incomplete input waits for more.
        (b'{"execute":"guest-ping"\n', []),
        (b"[[[\n", []),
        (b'"unfinished', []),
        # What qemu-ga 7.2.22 answered to these (recorded): a bare 0 takes no digit and no exponent,
        (b"00012\n", [(None, E + "stray '00'")]),
        (b"0e5\n", [(0, None), (None, E + "invalid keyword 'e'"), (5, None)]),
        (b"0.5e1 -0\n", [(5.0, None), (0, None)]),
        # an integer is int64, else uint64, else a double,
        (b"18446744073709551615 18446744073709551616\n", [(2**64 - 1, None), (2.0**64, None)]),
        (b"-9223372036854775809\n", [(-9223372036854775809.0, None)]),
        # recovery resumes at ':' and ',' too,
        (
            b'-u"arguments"true:xe\n',
            [(None, E + "stray '-u'"), (None, E + "expecting value"), (None, E + "invalid keyword 'xe'")],
        ),
        # a missing key is a missing value; a key that is a value but no string, said after it,
        (b'{"a":1,}\n', [(None, E + "expecting value")]),
        (b"{,}\n", [(None, E + "expecting value")]),
        (b"{[1]:1}\n", [(None, E + "key is not a string in object")]),
        (b'{{"a":}:1}\n', [(None, E + "expecting value")]),
        (b"{foo:1}\n", [(None, E + "invalid keyword 'foo'")]),
        # surrogates pair up or are refused, naming the escape,
        (b'"\\ud83d\\ude00"\n', [("\U0001f600", None)]),
        (b'"\\ud83d"\n', [(None, E + "\\ud83d is not a valid Unicode character")]),
        (b'"\\ude00\\ud83d"\n', [(None, E + "\\ude00 is not a valid Unicode character")]),
        (b'"\\u12"\n', [(None, E + '\\u12" is not a valid Unicode character')]),
        (b"'\\u12zz'\n", [(None, E + "\\u12zz is not a valid Unicode character")]),
        # strings are modified UTF-8 (C0 80 is U+0000); a token is named up to a NUL, as a C string,
        (b'"a\xc0\x80b"\n', [("a\x00b", None)]),
        (b"ab\x00cd\n", [(None, E + "invalid keyword 'ab'"), (None, E + "stray ''")]),
        (b"'x\xc0\x80\x01", [(None, E + "stray ''x\x00\x01'")]),
        # and a backslash's error token takes the byte it could not escape.
        (b"'x\\\n", [(None, E + "stray ''x\\\n'")]),
    ],
)
def test_stream_splits_like_qemu_ga(data, expected):
    """Each input gives exactly the values and errors qemu-ga's lexer and parser give."""
    assert results(data) == expected


def test_sentinel_discards_a_partial_request():
    """0xFF mid-request is an error that drops the partial value (the protocol's resync)."""
    s = JsonStream()
    assert s.feed(b'{"execute":"guest-ping", "id": 1') == []
    out = s.feed(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":5}}\n')
    assert out == [
        Parsed(error=E + "stray '\ufffd'"),
        Parsed(value={"execute": "guest-sync-delimited", "arguments": {"id": 5}}),
    ]


def test_unbalanced_closer_after_waiting_opener():
    """'[[[' waits; ']]]' completes it: one value, as qemu-ga does."""
    s = JsonStream()
    assert s.feed(b"[[[\n") == []
    assert s.feed(b"]]]\n") == [Parsed(value=[[[]]])]


def test_nesting_limit_is_one_error_and_the_stream_recovers():
    """Deeper than qemu's nesting limit: one error, then requests work again."""
    s = JsonStream()
    out = s.feed(b"[" * (MAX_NESTING + 5))
    assert out == [Parsed(error="JSON nesting depth limit exceeded")]
    rest = s.feed(b"]" * (MAX_NESTING + 5) + b'\n\xff{"execute":"guest-ping"}\n')
    assert rest[-1] == Parsed(value={"execute": "guest-ping"})


def test_nesting_up_to_the_limit_parses():
    """1024 levels, qemu's limit, make one value (a recursive parser would overflow Python's stack)."""
    depth = MAX_NESTING - 2  # the object and its list are two more levels
    out = JsonStream().feed(b"[" * depth + b'{"a": [1, "b"]}' + b"]" * depth + b"\n")
    assert len(out) == 1 and out[0].error is None
    value = out[0].value
    for _ in range(depth):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == {"a": [1, "b"]}


def test_reset_forgets_partial_input():
    """A new client starts with a fresh parser."""
    s = JsonStream()
    s.feed(b'{"execute":')
    s.reset()
    assert s.feed(b'{"execute":"guest-ping"}') == [Parsed(value={"execute": "guest-ping"})]


@pytest.mark.parametrize("token", [b'"' + b"x" * (4 << 20) + b'"', b"7" * (4 << 20), b"a" * (4 << 20)])
def test_a_long_token_in_small_chunks_costs_linear_time(token):
    """4 MiB of one token in 512-byte chunks: each chunk is scanned once, not the whole token again.

    Rescanning from the token's start would take minutes (8192 scans of up
    to 4 MiB): a host trickling a long string must not make the agent spin.
    """
    data = b'{"execute":"guest-file-write","arguments":{"buf-b64":' + token + b"}}\n"
    s = JsonStream()
    out: list[Parsed] = []
    start = time.monotonic()
    for i in range(0, len(data), 512):
        out += s.feed(data[i : i + 512])
    assert time.monotonic() - start < 10
    assert len(out) == 1
    if token[:1] == b"a":
        assert out[0].error == f"{E}invalid keyword '{token.decode()}'"
    else:
        value = out[0].value["arguments"]["buf-b64"]  # type: ignore[index]
        assert value == ("x" * (4 << 20) if token[:1] == b'"' else float("inf"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_chunking_never_changes_the_result(data, step):
    """Fed in any chunk sizes, the stream gives what it gives for the whole input."""
    whole = JsonStream().feed(data)
    s = JsonStream()
    pieces: list[Parsed] = []
    for i in range(0, len(data), step):
        pieces += s.feed(data[i : i + step])
    assert pieces == whole
