"""The session under etcd3gw's client: its requests on one kept-open connection per thread.

etcd3gw makes every request through the session it is given, with
``session.post(url, json=..., timeout=...)``, and reads the answer's
``status_code``, ``reason``, ``text`` and ``json()``. A ``requests.Session``
costs about 0.7 ms of CPU per request here (its settings merging, hooks and
urllib3's pool), three times what the request itself costs with
``http.client``. A fleet node makes two requests while frozen, and in the
lab sixteen nodes share two CPUs, so that cost is window time.

:class:`LeanSession` is what the fleet hands etcd3gw instead: etcd3gw still
builds every request and reads every answer (its URLs, its error classes,
its JSON); the session carries a plain HTTP/1.1 request on a
connection kept open per thread (:class:`Connection`: ``http.client`` parses
every answer's headers through the ``email`` package, another 0.2 ms a
request) (an agent's main thread, its lease keeper
and its probe each have their own; a thread's is closed once it ended), with the same TLS files, and raises
``requests``' own exceptions, which etcd3gw maps to its own. Anything
else etcd3gw asks (``stream=True``, ``get``) goes to a ``requests.Session``
with the same settings and headers.

A watch is one long answer: :meth:`LeanSession.stream` opens it on a
connection of its own and returns a :class:`Stream`, which the watch reads
in its caller's thread as lines arrive (:mod:`quiesce.fleet.watch`).
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests


def _timeout(timeout: Any) -> float | None:
    """requests' timeout (a number, or a (connect, read) pair) as one socket timeout."""
    if isinstance(timeout, tuple):
        known = [t for t in timeout if t is not None]
        return max(known) if known else None
    return None if timeout is None else float(timeout)


_T = TypeVar("_T")

_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


def chunk_size(line: bytes | bytearray) -> int:
    """The size a chunk's header line gives (extensions after ``;`` ignored).

    ValueError for anything but hex digits (``int(..., 16)`` alone would take
    ``-5``, ``0x5`` or ``1_0``).
    """
    size = line.split(b";", 1)[0].strip()
    if not _HEX.fullmatch(size):
        raise ValueError(f"a malformed chunk size: {bytes(line[:40])!r}")
    return int(size, 16)


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


class Connection:
    """One kept-open HTTP/1.1 connection: a request out, its whole answer in.

    The answer's body is read by its ``Content-Length``, chunked, or to the
    connection's end; nothing else of HTTP is needed to talk to etcd's gateway.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def close(self) -> None:
        """Close the socket (again is harmless)."""
        self.sock.close()

    def dropped(self) -> bool:
        """The server closed it, or it was closed (readable while no request is out means EOF)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise http.client.RemoteDisconnected("the server closed the connection")
        self._buf += data

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > 65536:
                raise http.client.LineTooLong("an answer's header line")
            self._more()
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._more()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def head(self, request: bytes) -> tuple[int, str, dict[bytes, bytes], bool]:
        """Send ``request``; the answer's status, reason, headers, and whether the server closes after it."""
        self._buf.clear()
        self.sock.sendall(request)
        status = self._line()
        version, _, rest = status.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/") or not code.isdigit():
            raise http.client.BadStatusLine(repr(status))
        headers: dict[bytes, bytes] = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        closes = version == b"HTTP/1.0" or headers.get(b"connection", b"").lower() == b"close"
        return int(code), reason.decode("latin-1"), headers, closes

    def exchange(self, request: bytes) -> tuple[int, str, bytes, bool]:
        """Send ``request``; the answer's status, reason, body, and whether the server closes now."""
        code, reason, headers, closes = self.head(request)
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while size := chunk_size(self._line()):
                parts.append(self._take(size))
                self._take(2)
            while self._line():  # trailers
                pass
            body = b"".join(parts)
        elif b"content-length" in headers:
            body = self._take(int(headers[b"content-length"]))
        else:
            with contextlib.suppress(http.client.RemoteDisconnected):
                while True:
                    self._more()
            body, closes = bytes(self._buf), True
            self._buf.clear()
        return code, reason, body, closes


#: The most a stream may hold of one line (a watch message): more is a broken stream.
STREAM_LINE_MAX = 64 * 1024 * 1024


class Stream:
    """A streamed answer (a watch's) read in its caller's thread, line by line as it arrives.

    Opened by :meth:`LeanSession.stream`. :meth:`lines` never blocks: the
    caller waits until :meth:`fileno` is readable, or :meth:`buffered` says
    TLS already holds decrypted bytes (which no ``select`` would see).
    """

    def __init__(self, conn: Connection, status: int, reason: str, chunked: bool) -> None:
        self.status, self.reason = status, reason
        #: True once the answer ended (its last chunk, or the connection closed).
        self.ended = False
        self._sock = conn.sock
        self._raw = bytearray(conn._buf)  # what came with the headers
        self._body = bytearray()
        self._chunked = chunked
        #: Bytes came with the headers: read them before waiting on the socket.
        self._unread = bool(self._raw)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        """The socket's fd, to wait on."""
        return self._sock.fileno()

    def buffered(self) -> bool:
        """True if bytes were received that no ``select`` would see (with the headers, or held by TLS)."""
        if self._unread:
            return True
        pending = getattr(self._sock, "pending", None)
        return bool(pending is not None and pending())

    def text(self) -> str:
        """What has arrived of the body so far, as text (an error answer's message)."""
        with contextlib.suppress(ValueError):
            self.lines()
        return (bytes(self._body) or bytes(self._raw)).decode("utf-8", errors="replace")

    def lines(self) -> list[bytes]:
        """The whole non-empty lines received since the last call (``ended`` tells the answer's end).

        A ValueError: the stream is malformed (a chunk size that is not one),
        or holds a line longer than :data:`STREAM_LINE_MAX`.
        """
        self._unread = False
        if not self.ended:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self.ended = True
            elif data:
                self._raw += data
        self._unframe()
        out = []
        while (end := self._body.find(b"\n")) >= 0:
            line = bytes(self._body[:end]).strip()
            del self._body[: end + 1]
            if line:
                out.append(line)
        if len(self._raw) + len(self._body) > STREAM_LINE_MAX:
            raise ValueError(f"a streamed line over {STREAM_LINE_MAX} bytes")
        return out

    def _unframe(self) -> None:
        if not self._chunked:
            self._body += self._raw
            self._raw.clear()
            return
        while (end := self._raw.find(b"\r\n")) >= 0:
            size = chunk_size(self._raw[:end])
            if size == 0:
                self.ended = True
                self._raw.clear()
                return
            if len(self._raw) < end + 2 + size + 2:
                return
            self._body += self._raw[end + 2 : end + 2 + size]
            del self._raw[: end + 2 + size + 2]

    def close(self) -> None:
        """Close the connection (again is harmless)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


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
        """The body as JSON (a ValueError if it is not)."""
        return jsonlib.loads(self.content)


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
            head.append(f"Authorization: {self.headers['Authorization']}")
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
