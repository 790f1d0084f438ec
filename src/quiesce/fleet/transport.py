"""The session under etcd3gw's client: its requests on one kept-open connection per thread.

etcd3gw makes every request through the session it is given, with
``session.post(url, json=..., timeout=...)``, and reads the answer's
``status_code``, ``reason``, ``text`` and ``json()``. A ``requests.Session``
costs about 0.7 ms of CPU per request here (settings merging, hooks,
urllib3's pool), and ``http.client`` parses every answer's headers through
the ``email`` package (0.2 ms more); a fleet node makes two requests while
frozen, and in the lab sixteen nodes share two CPUs, so that cost is window time.

:class:`LeanSession` is what the fleet hands etcd3gw instead: etcd3gw still
builds every request and reads every answer; the session writes a plain
HTTP/1.1 request on a :class:`Connection` kept open per thread (closed once
its thread ended), with the same TLS files, and raises ``requests``' own
exceptions, which etcd3gw maps to its own. Anything else etcd3gw asks
(``stream=True``, ``get``) goes to a ``requests.Session``. The HTTP itself,
read strictly and bounded, is :mod:`quiesce.fleet.http1`'s.

A watch is one long answer: :meth:`LeanSession.stream` opens it on a
connection of its own and returns a :class:`Stream`, which the watch reads
in its caller's thread as lines arrive (:mod:`quiesce.fleet.watch`).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from quiesce.fleet.http1 import Connection, Stream


def _timeout(timeout: Any) -> float | None:
    """requests' timeout (a number, or a (connect, read) pair) as one socket timeout."""
    if isinstance(timeout, tuple):
        known = [t for t in timeout if t is not None]
        return max(known) if known else None
    return None if timeout is None else float(timeout)


_T = TypeVar("_T")


def _attempt(connect: Callable[[], Connection], act: Callable[[Connection], _T]) -> tuple[Connection, _T]:
    """``act`` on the connection ``connect`` gives; errors as requests' exceptions, the connection closed."""
    conn: Connection | None = None
    try:
        conn = connect()
        return conn, act(conn)
    except TimeoutError as err:
        if conn is not None:
            conn.close()
        raise requests.exceptions.Timeout(str(err)) from err
    except (OSError, http.client.HTTPException, ValueError) as err:
        if conn is not None:
            conn.close()
        raise requests.exceptions.ConnectionError(str(err) or type(err).__name__) from err


class LeanResponse:
    """An answer, with what etcd3gw reads of it."""

    def __init__(self, url: str, status: int, reason: str, content: bytes) -> None:
        self.url = url
        self.status_code = status
        self.reason = reason
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON (a ValueError if it is not, or is nested too deep to read)."""
        try:
            return jsonlib.loads(self.content)
        except RecursionError as err:
            raise ValueError("an answer nested too deep to read") from err


class LeanSession:
    """The session etcd3gw's client is given (see the module doc)."""

    def __init__(self, verify: str | bool = True, cert: tuple[str, str] | None = None) -> None:
        self._streams = requests.Session()
        self._streams.trust_env = False  # no proxy or netrc lookups: etcd is reached directly
        self._streams.verify = verify
        self._streams.cert = cert
        #: Sent with every request, streamed or not (the auth token goes here).
        self.headers = self._streams.headers
        self._conns: dict[tuple[int | None, str, str, int], Connection] = {}
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self.verify, self.cert = verify, cert

    def _ssl(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                ctx = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
                if self.verify is False:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                if self.cert:
                    ctx.load_cert_chain(*self.cert)
                ctx.set_alpn_protocols(["http/1.1"])
                self._context = ctx
            return self._context

    def _connect(self, scheme: str, host: str, port: int, timeout: float | None) -> Connection:
        """A new connection to the endpoint (TLS for https)."""
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._ssl().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return Connection(sock)

    def _connection(self, scheme: str, host: str, port: int, timeout: float | None) -> Connection:
        """This thread's connection to the endpoint: the kept-open one, or a new one if it was closed."""
        key = (threading.get_ident(), scheme, host, port)
        conn = self._conns.get(key)
        if conn is not None and not conn.dropped():
            conn.sock.settimeout(timeout)
            return conn
        if conn is not None:
            conn.close()
        conn = self._connect(scheme, host, port, timeout)
        with self._lock:
            # The connections of threads that ended (a run's probe thread) are closed here,
            # so a long-running agent does not gather one per run.
            alive = {t.ident for t in threading.enumerate()}
            for old in [k for k in self._conns if k[0] not in alive]:
                self._conns.pop(old).close()
            self._conns[key] = conn
        return conn

    def _request(self, url: str, json: Any) -> tuple[str, str, int, bytes]:
        """The endpoint (scheme, host, port) of ``url`` and the bytes of a POST of ``json`` to it."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        body = jsonlib.dumps(json).encode()
        head = [
            f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        if "Authorization" in self.headers:
            auth = str(self.headers["Authorization"])
            if not auth.isprintable() or not auth.isascii():  # a line break would start a header of its own
                raise ValueError("an Authorization value that cannot go in a header line")
            head.append(f"Authorization: {auth}")
        return scheme, parts.hostname or "", port, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    def stream(self, url: str, json: Any, timeout: float | None) -> Stream:
        """POST ``json`` on a connection of its own and return the answer as a :class:`Stream`.

        ``timeout`` bounds the connect and the answer's headers; the stream
        itself is read without blocking. Errors are requests' exceptions.
        """
        scheme, host, port, request = self._request(url, json)
        conn, (status, reason, headers, _) = _attempt(
            lambda: self._connect(scheme, host, port, timeout), lambda c: c.head(request)
        )
        chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        return Stream(conn, status, reason, chunked)

    def post(self, url: str, json: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        """POST a JSON body; a request with other options (``stream=True``...) goes to requests."""
        if kwargs:
            return self._streams.post(url, json=json, timeout=timeout, **kwargs)
        scheme, host, port, request = self._request(url, json)
        # Not sent again if it fails: a transaction that reached etcd before the connection broke
        # must not be applied twice (requests' own adapter does not retry either).
        conn, (status, reason, content, closes) = _attempt(
            lambda: self._connection(scheme, host, port, _timeout(timeout)), lambda c: c.exchange(request)
        )
        if closes:
            conn.close()
        return LeanResponse(url, status, reason, content)

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        """What etcd3gw gets (its version and health calls): through requests."""
        return self._streams.get(url, *args, **kwargs)

    def close(self) -> None:
        """Close every connection (the session is not used again) and the streams'."""
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        self._streams.close()
