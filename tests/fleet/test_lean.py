"""The lean connection of a Store: one kept-open connection, each request sent once, failover kept.

A fake gateway on the loopback (a thread) answers like etcd's: it counts the
requests it got, and can close the kept-open connection after answering,
or read a request and never answer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from quiesce.fleet import FleetError

pytest.importorskip("etcd3gw")


class _Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict]] = []
        self.connections = 0
        self.close_after_answer = False
        self.silent = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Gateway

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.server.silent:
            time.sleep(5)
            return
        answer = json.dumps({"header": {"revision": str(len(self.server.requests))}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        if self.server.close_after_answer:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    """A fake etcd gateway on the loopback."""
    server = _Gateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: _Gateway) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _dead_url() -> str:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_lean_requests_share_one_connection(gateway):
    """Three puts: three requests on one connection, the gateway's paths and bodies, revisions read."""
    from quiesce.fleet.store import Store

    with Store([_url(gateway)], lean=True) as store:
        revs = [store.put("/quiesce/g/runs/r/cut", {"i": i}) for i in range(3)]
    assert revs == [1, 2, 3]
    assert [path for path, _ in gateway.requests] == ["/v3/kv/put"] * 3
    assert gateway.connections == 1


def test_a_connection_the_server_closed_is_reopened_and_nothing_is_sent_twice(gateway):
    """The gateway closes after each answer: every request still goes through, once each."""
    from quiesce.fleet.store import Store

    gateway.close_after_answer = True
    with Store([_url(gateway)], lean=True) as store:
        for i in range(3):
            store.put("/quiesce/g/k", {"i": i})
            time.sleep(0.05)  # the close reaches the client before the next request
    assert [body["value"] for _, body in gateway.requests] == [store_value(i) for i in range(3)]
    assert gateway.connections == 3


def store_value(i: int) -> str:
    """A put's value as the gateway gets it."""
    from quiesce.fleet.wire import b64

    return b64(json.dumps({"i": i}, sort_keys=True))


def test_an_endpoint_that_refuses_fails_over_to_the_next(gateway):
    """First endpoint refuses connections: the request goes to the second, once."""
    from quiesce.fleet.store import Store

    with Store([_dead_url(), _url(gateway)], lean=True) as store:
        assert store.put("/quiesce/g/k", {"i": 0}) == 1
        assert store.put("/quiesce/g/k", {"i": 1}) == 2  # and stays there
    assert len(gateway.requests) == 2


def test_one_endpoint_that_refuses_is_an_error():
    """A single endpoint refusing connections: 'etcd does not answer'."""
    from quiesce.fleet.store import Store

    with Store([_dead_url()], lean=True) as store, pytest.raises(FleetError, match="does not answer"):
        store.put("/quiesce/g/k", {})


def test_a_request_without_an_answer_is_an_error_and_not_sent_again(gateway):
    """Sent, no answer within the timeout: an error after about the timeout, and etcd got it once."""
    from quiesce.fleet.store import Store

    gateway.silent = True
    with Store([_url(gateway)], timeout_s=0.3, lean=True) as store:
        start = time.monotonic()
        with pytest.raises(FleetError, match="does not answer"):
            store.put("/quiesce/g/k", {})
        took = time.monotonic() - start
    assert 0.25 <= took < 2.0
    assert len(gateway.requests) == 1
