"""What etcd answers is read strictly: a malformed answer is a FleetError (or a lost watch), never a guess.

A small HTTP server on 127.0.0.1 stands in for etcd's gateway and answers
whatever the test sets, raw: a Content-Length that is not one, a body too
long to hold, too many headers, JSON of the wrong shape.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("etcd3gw")

from quiesce.fleet import FleetError, http1, wire
from quiesce.fleet.store import Security, Store
from quiesce.fleet.transport import LeanSession
from quiesce.fleet.wire import b64


class RawGateway:
    """Answers every request on 127.0.0.1 with ``self.answer`` (bytes, the whole HTTP answer)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = b""
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def json(self, body: Any, status: str = "200 OK") -> None:
        data = json.dumps(body).encode()
        self.answer = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(data), data)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    buf = buf[length:]
                    conn.sendall(self.answer)
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def gateway() -> Iterator[RawGateway]:
    g = RawGateway()
    yield g
    g.close()


@pytest.fixture
def store(gateway: RawGateway) -> Iterator[Store]:
    s = Store([f"http://127.0.0.1:{gateway.port}"], timeout_s=1.0)
    yield s
    s.close()


def _head(*lines: str) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


GOOD = json.dumps({"header": {"revision": "9"}}).encode()


@pytest.mark.parametrize(
    "answer",
    [
        # int() takes these; a negative length returned the buffer but its last bytes as the body
        _head("Content-Length: -5") + GOOD + b"     ",
        _head(f"Content-Length: +{len(GOOD)}") + GOOD,
        _head("Content-Length: {}_{}".format(*divmod(len(GOOD), 10))) + GOOD,
        _head(f"Content-Length: {http1.ANSWER_MAX + 1}") + GOOD,  # refused before reading it
        _head(*[f"X-Header-{i}: 1" for i in range(http1.HEADERS_MAX + 1)], f"Content-Length: {len(GOOD)}")
        + GOOD,
        _head(f"Content-Length: {200_000}") + b"[" * 200_000,  # json.loads raises RecursionError
    ],
    ids=["negative", "plus", "underscore", "over-max", "too-many-headers", "too-deep"],
)
def test_a_malformed_or_oversized_answer_is_etcd_not_answering(
    gateway: RawGateway, store: Store, answer: bytes
) -> None:
    gateway.answer = answer
    with pytest.raises(FleetError, match="etcd does not answer"):
        store.put("/k", {})


def test_an_answer_longer_than_the_limit_is_not_held(
    gateway: RawGateway, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunked or read to the connection's end: past ANSWER_MAX the answer is broken, however it comes."""
    monkeypatch.setattr(http1, "ANSWER_MAX", len(GOOD) - 1)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(GOOD), GOOD)
    for answer in (_head("Transfer-Encoding: chunked") + chunked, _head("Connection: close") + GOOD):
        gateway.answer = answer
        with pytest.raises(FleetError, match="etcd does not answer"):
            store.put("/k", {})
    monkeypatch.setattr(http1, "ANSWER_MAX", len(GOOD))  # exactly the limit is read
    gateway.answer = _head("Transfer-Encoding: chunked") + chunked
    assert store.put("/k", {}) == 9


def test_content_length_is_decimal_digits_within_the_limit() -> None:
    assert [http1.content_length(v) for v in (b"0", b" 12 ", b"007")] == [0, 12, 7]
    over = str(http1.ANSWER_MAX + 1).encode()
    for bad in (b"-1", b"+1", b"1_0", b"0x10", b"", b"1 2", b"\xd9\xa1", over):
        with pytest.raises(ValueError, match="Content-Length"):
            http1.content_length(bad)


def test_numbers_are_decimal_int64_strings_or_ints() -> None:
    assert wire.number("12", "revision") == 12
    assert wire.number(12, "revision") == 12
    assert wire.number("-1", "lease TTL", minimum=-1) == -1
    for bad in ("1_0", " 5", "5.0", "", "0x5", True, 5.0, None, [5], "-1", str(2**63), "1" * 20):
        with pytest.raises(FleetError, match="etcd answered a"):
            wire.number(bad, "revision")


def test_a_commit_is_true_and_nothing_else(gateway: RawGateway, store: Store) -> None:
    """etcd leaves a false ``succeeded`` out; a string "false" is not true (bool() would say it is)."""
    for succeeded, committed in ((True, True), ("false", False), ("true", False), (1, False), (None, False)):
        body: dict[str, Any] = {"header": {"revision": "4"}}
        if succeeded is not None:
            body["succeeded"] = succeeded
        gateway.json(body)
        assert store.put_if({"/k": {}}, absent=["/k"]) == (committed, 4)


KV = {"key": b64("/quiesce/g/runs/r1/spec"), "value": b64("{}"), "mod_revision": "5", "create_revision": "3"}


@pytest.mark.parametrize(
    "body",
    [
        {"header": {"revision": "x"}, "kvs": []},
        {"header": "7", "kvs": []},
        {"header": {"revision": "7"}, "kvs": {"a": 1}},
        {"header": {"revision": "7"}, "kvs": ["kv"]},
        {"header": {"revision": "7"}, "kvs": [{**KV, "key": "not base64!"}]},
        {"header": {"revision": "7"}, "kvs": [{**KV, "key": 5}]},
        {"header": {"revision": "7"}, "kvs": [{**KV, "mod_revision": "1e3"}]},
        {"header": {"revision": "7"}, "kvs": [{k: v for k, v in KV.items() if k != "mod_revision"}]},
        {"header": {"revision": "7"}, "kvs": [{**KV, "value": 5}]},
    ],
)
def test_a_malformed_range_answer_is_a_fleet_error(gateway: RawGateway, store: Store, body: Any) -> None:
    gateway.json(body)
    with pytest.raises(FleetError, match="etcd answered"):
        store.get_prefix("/quiesce/g/")


def test_a_malformed_event_ends_the_watch_saying_what_was_wrong(gateway: RawGateway, store: Store) -> None:
    bad = json.dumps({"result": {"events": [{"kv": {**KV, "mod_revision": "x"}}]}}).encode() + b"\n"
    gateway.answer = _head("Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(bad), bad)
    watch = store.watch("/quiesce/g/", 1)
    try:
        ev = watch.get(5.0)
    finally:
        watch.close()
    assert ev is not None and ev.kind == "lost"
    assert ev.why == "the watch stream broke: etcd answered a malformed mod_revision: 'x'"


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "", "a b", 5, None, "\u00e9t\u00e9"])
def test_a_login_answer_without_a_well_formed_token_is_refused(gateway: RawGateway, token: Any) -> None:
    """The token goes into every later request's header lines: a line break would add a header."""
    gateway.json({"header": {"revision": "1"}} if token is None else {"token": token})
    with pytest.raises(FleetError, match="without a well-formed token"):
        Store([f"http://127.0.0.1:{gateway.port}"], Security(user="agent", password="pw"), timeout_s=1.0)


def test_a_header_value_with_a_line_break_is_never_sent(gateway: RawGateway) -> None:
    session = LeanSession()
    session.headers["Authorization"] = "t\r\nX-Injected: 1"
    try:
        with pytest.raises(ValueError, match="cannot go in a header line"):
            session.post(f"http://127.0.0.1:{gateway.port}/v3/kv/put", json={})
    finally:
        session.close()


def test_a_well_formed_range_answer_is_read(gateway: RawGateway, store: Store) -> None:
    gateway.json({"header": {"revision": "7"}, "kvs": [KV]})
    revision, records = store.get_prefix("/quiesce/g/")
    assert revision == 7
    rec = records["/quiesce/g/runs/r1/spec"]
    assert (rec.value, rec.mod_revision, rec.create_revision) == ({}, 5, 3)


def test_malformed_lease_answers_are_fleet_errors(gateway: RawGateway, store: Store) -> None:
    for body in ({"ID": "0"}, {"ID": "abc"}, {}, {"ID": True}):
        gateway.json(body)
        with pytest.raises(FleetError, match="lease ID"):
            store.grant(2)
    for body in ({"result": "alive"}, {"result": {"TTL": "two"}}, {"result": {"TTL": "-2"}}):
        gateway.json(body)
        with pytest.raises(FleetError, match=r"keepalive|lease TTL"):
            store.keepalive(1)
    gateway.json({"result": {"TTL": "-1"}})
    assert store.keepalive(1) == -1


@pytest.mark.parametrize("result", [{}, {"TTL": "0"}, {"TTL": "-1"}])
def test_a_lease_answered_with_no_time_left_is_lost(gateway: RawGateway, store: Store, result: Any) -> None:
    """TTL 0 (written out, or left out as the gateway does) or -1: the lease expired."""
    gateway.json({"result": result})
    lost = threading.Event()
    stop = store.keep_alive(1, 1, lambda why: lost.set())
    try:
        assert lost.wait(5.0)
    finally:
        stop()
    gateway.json({"result": {"TTL": "1"}})
    assert store.keepalive(1) == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["7", "-1", b64("/k")]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_answers = st.fixed_dictionaries(
    {},
    optional={
        "header": st.fixed_dictionaries({}, optional={"revision": _json}) | _json,
        "kvs": st.lists(st.fixed_dictionaries({}, optional={k: _json for k in KV}), max_size=2) | _json,
        "responses": _json,
        "succeeded": _json,
        "ID": _json,
        "result": _json,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_answers)
def test_any_answer_gives_a_result_or_a_fleet_error(gateway: RawGateway, store: Store, body: Any) -> None:
    gateway.json(body)
    for call in (
        lambda: store.get_prefix("/q/"),
        lambda: store.get_prefixes(["/q/", "/r/"]),
        lambda: store.put_if({"/k": {}}),
        lambda: store.put("/k", {}),
        lambda: store.grant(2),
        lambda: store.keepalive(1),
    ):
        with contextlib.suppress(FleetError):
            call()
