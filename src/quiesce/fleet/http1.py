"""HTTP/1.1 as etcd's gateway speaks it: a kept-open connection that reads whole answers, and a stream.

:class:`Connection` sends a request and reads its answer's body by its
``Content-Length``, chunked, or to the connection's end; :class:`Stream`
reads a long chunked answer (a watch's) line by line as it arrives, in its
caller's thread. Nothing else of HTTP is needed to talk to the gateway.

Answers are read strictly and bounded: a length or chunk size that is not
plain digits, over :data:`HEADERS_MAX` header lines, or more than
:data:`ANSWER_MAX` bytes is a broken answer (``ValueError`` or
``http.client.HTTPException``), never a guess and never unbounded memory.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import select
import socket
import ssl

_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_DIGITS = re.compile(rb"[0-9]{1,19}")

#: The most quiesce reads of one answer (etcd's own limit on a request is 1.5 MiB):
#: a longer one is a broken answer, not something to hold in memory.
ANSWER_MAX = 64 * 1024 * 1024
#: The most header lines an answer may have (as ``http.client``).
HEADERS_MAX = 100


def chunk_size(line: bytes | bytearray) -> int:
    """The size a chunk's header line gives (extensions after ``;`` ignored).

    ValueError for anything but hex digits (``int(..., 16)`` alone would take
    ``-5``, ``0x5`` or ``1_0``).
    """
    size = line.split(b";", 1)[0].strip()
    if not _HEX.fullmatch(size):
        raise ValueError(f"a malformed chunk size: {bytes(line[:40])!r}")
    return int(size, 16)


def content_length(value: bytes) -> int:
    """An answer's ``Content-Length``: decimal digits, at most :data:`ANSWER_MAX`; ValueError otherwise.

    ``int()`` alone would take ``-5`` (and a negative length would return
    part of the buffer as the body), ``+5`` or ``1_0``.
    """
    digits = value.strip()
    if not _DIGITS.fullmatch(digits) or int(digits) > ANSWER_MAX:
        raise ValueError(f"a malformed or oversized Content-Length: {bytes(value[:40])!r}")
    return int(digits)


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

    def _fields(self, what: str) -> list[bytes]:
        """Header (or trailer) lines up to the blank one: at most :data:`HEADERS_MAX`."""
        found: list[bytes] = []
        while line := self._line():
            if len(found) == HEADERS_MAX:
                raise http.client.HTTPException(f"an answer with over {HEADERS_MAX} {what} lines")
            found.append(line)
        return found

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
        for line in self._fields("header"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        closes = version == b"HTTP/1.0" or headers.get(b"connection", b"").lower() == b"close"
        return int(code), reason.decode("latin-1"), headers, closes

    def exchange(self, request: bytes) -> tuple[int, str, bytes, bool]:
        """Send ``request``; the answer's status, reason, body, and whether the server closes now."""
        code, reason, headers, closes = self.head(request)
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts, total = [], 0
            while size := chunk_size(self._line()):
                total += size
                if total > ANSWER_MAX:
                    raise ValueError(f"a chunked answer over {ANSWER_MAX} bytes")
                parts.append(self._take(size))
                self._take(2)
            self._fields("trailer")
            body = b"".join(parts)
        elif b"content-length" in headers:
            body = self._take(content_length(headers[b"content-length"]))
        else:
            with contextlib.suppress(http.client.RemoteDisconnected):
                while len(self._buf) <= ANSWER_MAX:
                    self._more()
            if len(self._buf) > ANSWER_MAX:
                raise ValueError(f"an answer over {ANSWER_MAX} bytes")
            body, closes = bytes(self._buf), True
            self._buf.clear()
        return code, reason, body, closes


#: The most a stream may hold of one line (a watch message): more is a broken stream.
STREAM_LINE_MAX = ANSWER_MAX


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
