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
its JSON); the session carries a plain request on a ``http.client``
connection kept open per thread (an agent's main thread, its lease keeper
and its probe each have their own; a thread's is closed once it ended), with the same TLS files, and raises
``requests``' own exceptions, which etcd3gw maps to its own. A streamed
request (a watch: one long response, read by its own thread) and anything
else go to a ``requests.Session`` with the same settings and headers.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import select
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

import requests


def _timeout(timeout: Any) -> float | None:
    """requests' timeout (a number, or a (connect, read) pair) as one socket timeout."""
    if isinstance(timeout, tuple):
        known = [t for t in timeout if t is not None]
        return max(known) if known else None
    return None if timeout is None else float(timeout)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """The server closed a kept-open connection (readable while no request is out means EOF)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


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
        self._conns: dict[tuple[int | None, str, str, int], http.client.HTTPConnection] = {}
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

    def _connection(
        self, scheme: str, host: str, port: int, timeout: float | None
    ) -> http.client.HTTPConnection:
        """This thread's connection to the endpoint: the kept-open one, or a new one if it was closed."""
        key = (threading.get_ident(), scheme, host, port)
        conn = self._conns.get(key)
        if conn is not None and not _dropped(conn):
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn
        if conn is not None:
            conn.close()
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        with self._lock:
            # The connections of threads that ended (a run's probe thread) are closed here,
            # so a long-running agent does not gather one per run.
            alive = {t.ident for t in threading.enumerate()}
            for old in [k for k in self._conns if k[0] not in alive]:
                self._conns.pop(old).close()
            self._conns[key] = conn
        return conn

    def post(self, url: str, json: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        """POST a JSON body; a streamed request (a watch), or one with other options, goes to requests."""
        if kwargs:
            return self._streams.post(url, json=json, timeout=timeout, **kwargs)
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        body = jsonlib.dumps(json).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if "Authorization" in self.headers:
            headers["Authorization"] = str(self.headers["Authorization"])
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(scheme, parts.hostname or "", port, _timeout(timeout))
        try:
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            content = answer.read()
        except TimeoutError as err:
            conn.close()
            raise requests.exceptions.Timeout(str(err)) from err
        except (OSError, http.client.HTTPException) as err:
            # Not sent again: a transaction that reached etcd before the connection broke must
            # not be applied twice (requests' own adapter does not retry either).
            conn.close()
            raise requests.exceptions.ConnectionError(str(err) or type(err).__name__) from err
        if answer.will_close:
            conn.close()
        return LeanResponse(url, answer.status, answer.reason, content)

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
