"""Gateway requests over one kept-open ``http.client`` connection: the fleet's critical path."""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from quiesce.fleet import FleetError
from quiesce.fleet.wire import RELOGIN


class NotSent(Exception):
    """A new connection to the endpoint failed: nothing was sent (the message says why)."""


class Lean:
    """The same gateway requests over one kept-open ``http.client`` connection.

    For the requests on a fleet run's critical path (the nodes' writes while
    frozen, the coordinator's transactions): through ``requests`` a request
    costs about 1.4 ms of CPU here, through a bare connection 0.4 ms, and
    every node's write while frozen adds to the fleet's window. Same
    endpoint, TLS files and token as the etcd3gw client in use. Whatever
    this path cannot do, it leaves to etcd3gw: a request it could not send
    (connection refused or reset before sending, the token expired) goes
    there, never one that may have reached etcd (no request is applied
    twice); an answer lost after sending is an error, as through etcd3gw.
    """

    def __init__(self, current_client: Callable[[], Any], security: Any, timeout_s: float) -> None:
        #: The etcd3gw client in use (its endpoint, its session's token).
        self._client = current_client
        self.security = security
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._for: Any = None  # the etcd3gw client whose endpoint the connection reaches
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        client = self._client()
        conn = self._conn
        if conn is not None and (self._for is not client or _dropped(conn)):
            conn.close()
            conn = None
        if conn is None:
            timeout = self.timeout_s
            if client.protocol == "https":
                sec = self.security
                context = ssl.create_default_context(cafile=sec.cacert)
                if sec.cert and sec.key:
                    context.load_cert_chain(sec.cert, sec.key)
                conn = http.client.HTTPSConnection(client.host, client.port, timeout=timeout, context=context)
            else:
                conn = http.client.HTTPConnection(client.host, client.port, timeout=timeout)
            conn.connect()
            self._conn, self._for = conn, client
        return conn

    def post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """The answer; None to leave the request to etcd3gw (busy, or the token expired).

        Raises :class:`NotSent` when a new connection to the endpoint fails
        (it does not answer: the caller tries the next one), FleetError when
        the request went out and no answer came, or etcd refused it.
        """
        body = json.dumps(payload).encode()
        if not self._lock.acquire(blocking=False):
            return None  # another thread's request is on it (a lease kept alive): etcd3gw's pool
        try:
            headers = {"Content-Type": "application/json"}
            token = self._client().session.headers.get("Authorization")
            if token:
                headers["Authorization"] = token
            for _ in range(2):
                reused = self._conn is not None and self._for is self._client()
                try:
                    conn = self._connection()
                    conn.request("POST", _api_path(self._client(), path), body, headers)
                    break
                except (OSError, http.client.HTTPException) as err:
                    self.close()
                    if not reused:
                        raise NotSent(f"{type(err).__name__}: {err}") from err
                    # A kept-open connection the server had closed: once more on a new one.
            try:
                response = conn.getresponse()
                text = response.read()
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise FleetError(f"etcd does not answer: {err}") from err
        finally:
            self._lock.release()
        if response.status == 200:
            try:
                return dict(json.loads(text))
            except ValueError as err:
                raise FleetError(f"etcd answered {path} with no JSON: {text[:200]!r}") from err
        detail = text.decode(errors="replace")
        relogin = response.status == 401 or any(m in detail.lower() for m in RELOGIN)
        if self.security.user and relogin:
            return None  # refused before anything was applied: etcd3gw's path logs in again
        raise FleetError(f"etcd refused {path}: {detail[:300]}")

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _api_path(client: Any, path: str) -> str:
    """The gateway path of an etcd3gw client's request (``/v3/kv/put``)."""
    return str(urlsplit(client.get_url(path)).path)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True when the server closed an idle kept-open connection (it reads as ready, at EOF)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)
