"""etcd through its HTTP/JSON gateway, with the client etcd3gw.

:class:`Store` wraps one etcd3gw client per endpoint (the next endpoint is
tried when one does not answer) and adds what the fleet needs on top:
revisions in every answer, compare-and-put transactions, leases kept alive
by a thread, user/password authentication (a token sent with every request
and renewed when etcd says it expired), and a watch that *reports its own
end*: etcd3gw's watcher stops silently when the stream breaks, so the
stream of the same gateway call is read here and its end is an event.

Values are JSON objects. Keys are ASCII (checked names).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from quiesce.fleet import FleetError
from quiesce.fleet.protocol import Record

#: What etcd says when a request needs a (new) token.
_RELOGIN = ("auth", "token", "user name is empty")
#: Seconds one request may take before the endpoint counts as not answering.
REQUEST_TIMEOUT_S = 2.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _range_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class Security:
    """TLS files and etcd user credentials (all optional)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class Event:
    """One change under a watched prefix; ``kind`` is ``put``, ``delete`` or ``lost``."""

    kind: str
    key: str = ""
    value: Mapping[str, Any] | None = None
    revision: int = 0
    why: str = ""


class Store:
    """The etcd cluster a fleet uses."""

    def __init__(
        self, endpoints: Sequence[str], security: Security | None = None, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        import etcd3gw  # the optional extra: quiesce[fleet]
        import requests

        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.security = security or Security()
        self.timeout_s = timeout_s
        self._clients = []
        for url in endpoints:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"invalid etcd endpoint {url!r}: use http(s)://HOST:PORT")
            session = requests.Session()
            session.trust_env = False  # no proxy or netrc lookups: etcd is reached directly
            sec = self.security
            if sec.cacert:
                session.verify = sec.cacert
            if sec.cert and sec.key:
                session.cert = (sec.cert, sec.key)
            self._clients.append(
                etcd3gw.client(
                    host=parts.hostname,
                    port=parts.port or 2379,
                    protocol=parts.scheme,
                    timeout=timeout_s,
                    api_path="/v3/",
                    session=session,
                )
            )
        self._current = 0
        self._lock = threading.Lock()
        self._exceptions = etcd3gw.exceptions
        self._requests = requests
        if self.security.user:
            try:
                self._authenticate(self._clients[0])
            except (self._exceptions.ConnectionFailedError, self._exceptions.ConnectionTimeoutError) as err:
                raise FleetError(f"etcd does not answer: {err}") from err

    # -- requests --------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The etcd3gw client of the endpoint in use."""
        return self._clients[self._current]

    def _authenticate(self, client: Any) -> None:
        """Log in as the user; the token goes with every later request (watches too)."""
        sec = self.security
        exc = self._exceptions
        try:
            answer = client.post(
                client.get_url("/auth/authenticate"), json={"name": sec.user, "password": sec.password}
            )
        except (exc.ConnectionFailedError, exc.ConnectionTimeoutError):
            raise
        except exc.Etcd3Exception as err:
            detail = str(getattr(err, "detail_text", "") or err)
            if "not enabled" in detail:
                return  # a cluster without auth accepts requests without a token
            raise FleetError(f"etcd refused the user {sec.user!r}: {detail}") from err
        client.session.headers["Authorization"] = answer["token"]

    def call(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST one gateway request, trying the other endpoints and renewing the token."""
        exc = self._exceptions
        last: Exception | None = None
        for _ in range(len(self._clients)):
            client = self.client
            try:
                try:
                    return dict(client.post(client.get_url(path), json=dict(payload)))
                except exc.Etcd3Exception as err:
                    detail = str(getattr(err, "detail_text", "")).lower()
                    if self.security.user and any(m in detail for m in _RELOGIN):
                        self._authenticate(client)  # the token expired: once more with a new one
                        return dict(client.post(client.get_url(path), json=dict(payload)))
                    raise
            except (exc.ConnectionFailedError, exc.ConnectionTimeoutError) as err:
                last = err
                with self._lock:
                    self._current = (self._current + 1) % len(self._clients)
                    if self.security.user:
                        try:
                            self._authenticate(self.client)
                        except exc.Etcd3Exception as again:
                            last = again
            except exc.Etcd3Exception as err:
                raise FleetError(f"etcd refused {path}: {getattr(err, 'detail_text', '') or err}") from err
            except (ValueError, OSError, self._requests.RequestException) as err:
                # A torn or non-JSON answer (etcd starting or stopping): as if it did not answer.
                last = err
        raise FleetError(f"etcd does not answer: {last}")

    def get_prefix(self, prefix: str) -> tuple[int, dict[str, Record]]:
        """Every key under ``prefix`` with its value and revisions, and the store's revision."""
        answer = self.call("/kv/range", {"key": _b64(prefix), "range_end": _b64(_range_end(prefix))})
        out: dict[str, Record] = {}
        for kv in answer.get("kvs", []):
            out[_unb64(kv["key"])] = Record(
                _decode_value(kv.get("value")), int(kv["mod_revision"]), int(kv.get("create_revision", 0))
            )
        return _revision(answer), out

    def put(self, key: str, value: Mapping[str, Any], lease: int | None = None) -> int:
        """Write a JSON value; returns the revision of the write."""
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}
        if lease:
            payload["lease"] = lease
        return _revision(self.call("/kv/put", payload))

    def put_if(
        self,
        puts: Mapping[str, Mapping[str, Any]],
        *,
        present: Sequence[str] = (),
        absent: Sequence[str] = (),
        lease: Mapping[str, int] | None = None,
    ) -> tuple[bool, int]:
        """One transaction: the puts happen only if every ``present`` key exists and no ``absent`` one.

        Returns (committed, revision). ``lease`` attaches some keys to a lease.
        """
        compare = [
            {"key": _b64(k), "result": "GREATER", "target": "CREATE", "create_revision": 0} for k in present
        ]
        compare += [
            {"key": _b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": 0} for k in absent
        ]
        success = []
        for key, value in puts.items():
            put: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}
            if lease and key in lease:
                put["lease"] = lease[key]
            success.append({"request_put": put})
        answer = self.call("/kv/txn", {"compare": compare, "success": success, "failure": []})
        return bool(answer.get("succeeded", False)), _revision(answer)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""
        self.call("/kv/deleterange", {"key": _b64(prefix), "range_end": _b64(_range_end(prefix))})

    # -- leases ----------------------------------------------------------------

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds (etcd raises very short ones to its minimum)."""
        return int(self.call("/lease/grant", {"TTL": ttl_s, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; returns its TTL, or -1 when it has already expired."""
        answer = self.call("/lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """End a lease now: the keys attached to it are deleted."""
        self.call("/kv/lease/revoke", {"ID": lease})

    def keep_alive(self, lease: int, ttl_s: int, on_lost: Callable[[str], None]) -> Callable[[], None]:
        """Renew ``lease`` every third of its TTL in a thread; returns a function that stops it.

        ``on_lost`` is called once if the lease expired or etcd stops answering
        for a whole TTL.
        """
        stop = threading.Event()

        def loop() -> None:
            failures = 0
            while not stop.wait(ttl_s / 3):
                try:
                    if self.keepalive(lease) < 0:
                        on_lost("the lease expired")
                        return
                    failures = 0
                except FleetError as err:
                    failures += 1
                    if failures >= 3:
                        on_lost(str(err))
                        return

        threading.Thread(target=loop, name=f"lease-{lease:x}", daemon=True).start()
        return stop.set

    # -- watches ---------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Events under ``prefix`` from ``start_revision`` on (none is missed between a read and it)."""
        return Watch(self, prefix, start_revision)

    def close(self) -> None:
        """Close the HTTP sessions."""
        for c in self._clients:
            c.session.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _revision(answer: Mapping[str, Any]) -> int:
    """The store's revision in an answer's header."""
    try:
        return int(answer["header"]["revision"])
    except (KeyError, TypeError, ValueError) as err:
        raise FleetError(f"etcd answered without a revision: {dict(answer)!r:.200}") from err


def _decode_value(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(base64.b64decode(raw))
    except ValueError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}


class Watch:
    """A watch on a prefix: events arrive in :attr:`events`; its end is an event too.

    The gateway's watch is one long HTTP response of JSON lines, read by a
    thread. When it ends for any reason other than :meth:`close` (etcd
    killed, the connection reset, a compaction), a ``lost`` event is queued.
    """

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        #: Set (and queued) when the stream ended by itself.
        self.lost: Event | None = None
        self._closed = threading.Event()
        client = store.client
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(_range_end(prefix)),
                "start_revision": start_revision,
            }
        }
        try:
            self._response = client.session.post(
                client.get_url("/watch"), json=request, stream=True, timeout=(store.timeout_s, None)
            )
        except OSError as err:
            raise FleetError(f"etcd watch failed: {err}") from err
        if self._response.status_code != 200:
            text = self._response.text
            self._response.close()
            raise FleetError(f"etcd refused the watch: {self._response.status_code} {text}")
        self._thread = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self._thread.start()

    def _lines(self) -> Iterator[bytes]:
        pending = b""
        for chunk in self._response.iter_content(chunk_size=None):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield line

    def _read(self) -> None:
        why = "the watch stream ended"
        try:
            for line in self._lines():
                message = json.loads(line)
                if "error" in message:
                    why = f"etcd ended the watch: {message['error']}"
                    break
                result = message.get("result", {})
                if result.get("canceled"):
                    why = f"etcd canceled the watch: {result.get('cancel_reason') or 'compacted'}"
                    break
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    kind = "delete" if ev.get("type") == "DELETE" else "put"
                    value = None if kind == "delete" else _decode_value(kv.get("value"))
                    self.events.put(Event(kind, _unb64(kv["key"]), value, int(kv["mod_revision"])))
        except Exception as err:  # the stream broke: any error ends the watch the same way
            why = f"the watch stream broke: {type(err).__name__}"
        if not self._closed.is_set():
            self.lost = Event("lost", why=why)
            self.events.put(self.lost)

    def get(self, timeout_s: float | None) -> Event | None:
        """The next event, or None after ``timeout_s``.

        Once the watch is lost, every call after the queued events returns the
        ``lost`` event again: whoever reads next learns it too.
        """
        try:
            return self.events.get(timeout=0 if self.lost is not None else timeout_s)
        except queue.Empty:
            return self.lost

    def close(self) -> None:
        """Stop the watch (no ``lost`` event for this end)."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            fd = self._response.raw.fileno()
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError, AttributeError):
            pass  # already closed
        self._response.close()
        self._thread.join(timeout=2.0)
