"""The session under etcd3gw: requests on a kept-open connection, answers and errors as etcd3gw expects.

A small HTTP server on 127.0.0.1 stands in for etcd's gateway; etcd3gw's own
client is what calls the session, as in the fleet.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

etcd3gw = pytest.importorskip("etcd3gw")
requests = pytest.importorskip("requests")

from quiesce.fleet import FleetError, http1  # noqa: E402
from quiesce.fleet.transport import LeanSession  # noqa: E402
from quiesce.fleet.watch import Watch  # noqa: E402
from quiesce.fleet.wire import b64  # noqa: E402


class _Gateway(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, body, dict(self.headers), self.client_address[1]))
        if self.path.endswith("/slow"):
            time.sleep(0.5)
        if self.path.endswith(("/watch", "/watch-hold")):
            self._stream()
            return
        if self.path.endswith(("/watch-garbage", "/watch-at-once")):
            # The headers and the whole body in one write, then silence: nothing more to wake a reader.
            kv = {"key": b64("/k1"), "value": b64("{}"), "mod_revision": "3"}
            line = json.dumps({"result": {"events": [{"kv": kv}]}}).encode() + b"\n"
            chunk = b"zz\r\n{}\r\n" if self.path.endswith("garbage") else b"%x\r\n%s\r\n" % (len(line), line)
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            self.wfile.write(head + chunk)
            self.wfile.flush()
            time.sleep(1.0)
            self.close_connection = True
            return
        status = 404 if self.path.endswith("/missing") else 200
        answer = json.dumps({"header": {"revision": "7"}, "echo": body}).encode()
        if self.path.endswith(("/chunked", "/to-close", "/bad-chunk")):
            self._unsized(answer)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if self.path.endswith("/close"):
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)

    def _unsized(self, answer: bytes) -> None:
        """The answer without a Content-Length: chunked (in two chunks, with a trailer), or to the end."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.endswith("/bad-chunk"):  # a negative size: int(.., 16) alone would take it
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"-5\r\n" + answer + b"\r\n0\r\n\r\n")
        elif self.path.endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(answer) // 2
            for part in (answer[:half], answer[half:]):
                self.wfile.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        else:
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer)
            self.close_connection = True

    def _stream(self) -> None:
        """A watch's answer, etcd-shaped, cut so that chunks split lines and chunk sizes stand apart."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        messages: list[dict[str, Any]] = [{"result": {"created": True}}]
        for n in (1, 2):
            kv = {"key": b64(f"/k{n}"), "value": b64(json.dumps({"n": n})), "mod_revision": str(10 + n)}
            messages.append({"result": {"events": [{"kv": kv}]}})
        data = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
        cuts = [0, 5, len(data) // 2, len(data) - 3, len(data)]
        for a, b in itertools.pairwise(cuts):
            self.wfile.write(f"{b - a:x}\r\n".encode())
            self.wfile.flush()
            time.sleep(0.02)
            self.wfile.write(data[a:b] + b"\r\n")
            self.wfile.flush()
            time.sleep(0.02)
        if self.path.endswith("/watch-hold"):
            time.sleep(1.0)  # open, and silent
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    server.seen = []
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sessions() -> Iterator[list[LeanSession]]:
    made: list[LeanSession] = []
    yield made
    for s in made:
        s.close()


def _client(port: int, session: LeanSession, timeout: float = 2.0) -> Any:
    return etcd3gw.client(host="127.0.0.1", port=port, timeout=timeout, api_path="/v3/", session=session)


def test_requests_share_one_kept_open_connection_and_answers_read_as_etcd3gw_expects(
    gateway: Any, sessions: list[LeanSession]
) -> None:
    session = LeanSession()
    sessions.append(session)
    session.headers["Authorization"] = "token-1"
    client = _client(gateway.server_address[1], session)
    answers = [client.post(client.get_url("/kv/put"), json={"key": f"k{i}"}) for i in range(3)]
    assert [a["echo"]["key"] for a in answers] == ["k0", "k1", "k2"]
    assert answers[0]["header"]["revision"] == "7"
    ports = {port for _, _, _, port in gateway.seen}
    assert len(ports) == 1, "each request opened a new connection"
    path, body, headers, _ = gateway.seen[0]
    assert path == "/v3/kv/put" and body == {"key": "k0"}
    assert headers["Authorization"] == "token-1" and headers["Content-Type"] == "application/json"


def test_each_thread_has_its_own_connection(gateway: Any, sessions: list[LeanSession]) -> None:
    session = LeanSession()
    sessions.append(session)
    client = _client(gateway.server_address[1], session)
    client.post(client.get_url("/kv/range"), json={})
    other = threading.Thread(target=lambda: client.post(client.get_url("/kv/range"), json={}))
    other.start()
    other.join()
    assert len({port for _, _, _, port in gateway.seen}) == 2
    # The ended thread's connection is closed when the next connection is made.
    client.post(client.get_url("/close"), json={})
    time.sleep(0.05)
    client.post(client.get_url("/kv/range"), json={})
    assert len(session._conns) == 1


def test_a_connection_the_server_closed_is_opened_again(gateway: Any, sessions: list[LeanSession]) -> None:
    session = LeanSession()
    sessions.append(session)
    client = _client(gateway.server_address[1], session)
    client.post(client.get_url("/close"), json={})
    time.sleep(0.05)
    assert client.post(client.get_url("/kv/put"), json={"key": "after"})["echo"] == {"key": "after"}
    assert len({port for _, _, _, port in gateway.seen}) == 2


def test_errors_are_etcd3gws_own(gateway: Any, sessions: list[LeanSession]) -> None:
    session = LeanSession()
    sessions.append(session)
    client = _client(gateway.server_address[1], session, timeout=0.2)
    with pytest.raises(etcd3gw.exceptions.Etcd3Exception):  # a 404 from the gateway
        client.post(client.get_url("/missing"), json={})
    with pytest.raises(etcd3gw.exceptions.ConnectionTimeoutError):
        client.post(client.get_url("/slow"), json={})
    # After a timeout the connection is not reused: the next answer is the next request's.
    time.sleep(0.5)
    client.timeout = 2.0
    assert client.post(client.get_url("/kv/put"), json={"key": "next"})["echo"] == {"key": "next"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    sessions.append(LeanSession())
    nobody = _client(free, sessions[-1])
    with pytest.raises(etcd3gw.exceptions.ConnectionFailedError):
        nobody.post(nobody.get_url("/kv/put"), json={})


def test_streamed_requests_go_through_requests(gateway: Any, sessions: list[LeanSession]) -> None:
    session = LeanSession()
    sessions.append(session)
    session.headers["Authorization"] = "token-2"
    url = f"http://127.0.0.1:{gateway.server_address[1]}/v3/watch"
    response = session.post(url, json={"create_request": {}}, stream=True, timeout=(2, None))
    try:
        lines = [json.loads(x) for x in response.iter_lines() if x]
    finally:
        response.close()
    assert [x["result"].get("created") for x in lines] == [True, None, None]
    assert gateway.seen[0][2]["Authorization"] == "token-2"


class _Client:
    """What a watch uses of etcd3gw's client: its session and its URLs."""

    def __init__(self, port: int, session: LeanSession, watch_path: str) -> None:
        self.session, self.port, self.watch_path = session, port, watch_path

    def get_url(self, path: str) -> str:
        assert path == "/watch"
        return f"http://127.0.0.1:{self.port}/v3{self.watch_path}"


@pytest.fixture
def open_watch(gateway: Any, sessions: list[LeanSession]) -> Iterator[Callable[..., Watch]]:
    """Opens a Watch of "/k" on the stand-in gateway's ``path`` (on a session of its own); closes them all."""
    made: list[Watch] = []

    def open_one(path: str, start: int = 1, token: str | None = None, port: int | None = None) -> Watch:
        session = LeanSession()
        sessions.append(session)
        if token is not None:
            session.headers["Authorization"] = token
        watch = Watch(_Client(port or gateway.server_address[1], session, path), 2.0, ["/k"], start)
        made.append(watch)
        return watch

    yield open_one
    for watch in made:
        watch.close()


def test_a_watch_reads_events_across_chunks_then_reports_the_streams_end(
    gateway: Any, open_watch: Callable[..., Watch]
) -> None:
    """Lines split across chunks and reads come out whole; the stream's end is a lost event, every time."""
    watch = open_watch("/watch", start=5, token="token-3")
    events = [watch.get(5.0) for _ in range(4)]
    assert [(e.kind, e.key, e.value, e.revision) for e in events[:2] if e] == [
        ("put", "/k1", {"n": 1}, 11),
        ("put", "/k2", {"n": 2}, 12),
    ]
    assert events[2] is not None and events[2].kind == "lost"
    assert events[2].why == "the watch stream ended" and events[3] is events[2]
    assert watch.get(0) is events[2]
    path, body, headers, _ = gateway.seen[0]
    assert path == "/v3/watch" and headers["Authorization"] == "token-3"
    assert body["create_request"]["start_revision"] == 5 and body["create_request"]["key"] == b64("/k")


def test_a_silent_watch_times_out_and_a_closed_one_returns_at_once(open_watch: Callable[..., Watch]) -> None:
    watch = open_watch("/watch-hold")
    assert [e.key for e in (watch.get(5.0), watch.get(5.0)) if e] == ["/k1", "/k2"]
    started = time.monotonic()
    assert watch.get(0.3) is None
    assert time.monotonic() - started >= 0.3
    assert watch.get(0) is None
    watch.close()
    started = time.monotonic()
    assert watch.get(5.0) is None, "a closed watch reported an event"
    assert time.monotonic() - started < 1.0


def test_a_refused_watch_is_an_error_naming_the_status(open_watch: Callable[..., Watch]) -> None:
    with pytest.raises(FleetError, match="etcd refused the watch: 404"):
        open_watch("/missing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(FleetError, match="etcd watch failed"):
        open_watch("/watch", port=free)


def test_answers_without_a_length_are_read_whole(gateway: Any, sessions: list[LeanSession]) -> None:
    """A chunked answer (extensions, trailer) and one that ends with the connection read whole."""
    session = LeanSession()
    sessions.append(session)
    client = _client(gateway.server_address[1], session)
    assert client.post(client.get_url("/chunked"), json={"key": "c"})["echo"] == {"key": "c"}
    # A chunked answer keeps the connection: the next request goes on it.
    assert client.post(client.get_url("/kv/put"), json={"key": "d"})["echo"] == {"key": "d"}
    assert len({port for _, _, _, port in gateway.seen}) == 1
    assert client.post(client.get_url("/to-close"), json={"key": "e"})["echo"] == {"key": "e"}
    assert client.post(client.get_url("/kv/put"), json={"key": "f"})["echo"] == {"key": "f"}
    assert len({port for _, _, _, port in gateway.seen}) == 2


def test_a_chunk_size_is_hex_digits_and_nothing_else(gateway: Any, sessions: list[LeanSession]) -> None:
    """Extensions and blanks around it are fine; a sign, 0x, an underscore or nothing is a broken answer."""
    assert [http1.chunk_size(x) for x in (b"1a", b"1A;ext=1", b" 5 ", b"0")] == [26, 26, 5, 0]
    for bad in (b"-5", b"+5", b"0x5", b"1_0", b"", b"zz", b"1" * 16):
        with pytest.raises(ValueError, match="malformed chunk size"):
            http1.chunk_size(bad)
    session = LeanSession()
    sessions.append(session)
    client = _client(gateway.server_address[1], session)
    with pytest.raises(etcd3gw.exceptions.ConnectionFailedError):
        client.post(client.get_url("/bad-chunk"), json={"key": "c"})


def test_events_that_came_with_the_headers_are_read_without_more_data(
    open_watch: Callable[..., Watch],
) -> None:
    ev = open_watch("/watch-at-once").get(0.5)
    assert ev is not None and (ev.kind, ev.key, ev.revision) == ("put", "/k1", 3)


def test_a_malformed_or_oversized_stream_is_a_lost_watch(
    open_watch: Callable[..., Watch], monkeypatch: pytest.MonkeyPatch
) -> None:
    ev = open_watch("/watch-garbage").get(5.0)
    assert ev is not None and ev.kind == "lost" and ev.why == "the watch stream broke: ValueError"
    monkeypatch.setattr(http1, "STREAM_LINE_MAX", 40)  # every line of /watch is longer
    ev = open_watch("/watch").get(5.0)
    assert ev is not None and ev.kind == "lost" and "ValueError" in ev.why


def test_a_watch_works_when_its_socket_is_above_fd_1023(open_watch: Callable[..., Watch]) -> None:
    """An agent with many files open: the watch's fd is past select's limit, and events still come."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open("/dev/null", os.O_RDONLY))
        watch = open_watch("/watch")
        assert watch._streams[0].fileno() > 1023
        ev = watch.get(5.0)
        assert ev is not None and (ev.kind, ev.key) == ("put", "/k1")
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
