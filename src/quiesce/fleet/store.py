"""etcd through its HTTP/JSON gateway, with the client etcd3gw.

:class:`Store` wraps one etcd3gw client per endpoint (the next endpoint is
tried when one does not answer), each on a kept-open
:class:`~quiesce.fleet.transport.LeanSession`, and adds what the fleet needs on top:
revisions in every answer, compare-and-put transactions, leases kept alive
by a thread, user/password authentication (a token sent with every request
and renewed when etcd says it expired), and a watch that *reports its own
end*: etcd3gw's watcher stops silently when the stream breaks, so the
stream of the same gateway call is read here and its end is an event
(:mod:`quiesce.fleet.watch`).

Values are JSON objects. Keys are ASCII (checked names).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from quiesce.fleet import FleetError
from quiesce.fleet.protocol import Record
from quiesce.fleet.watch import Event, Watch
from quiesce.fleet.wire import RELOGIN, b64, kv_record, listed, number, range_end, revision, token

__all__ = ["REQUEST_TIMEOUT_S", "Event", "Security", "Store", "Watch"]

#: Seconds one request may take before the endpoint counts as not answering.
REQUEST_TIMEOUT_S = 2.0
#: An endpoint's host: a DNS name, an IPv4 address, or an IPv6 one (its brackets already taken off).
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})|[0-9A-Fa-f:.]{2,45}")


@dataclass(frozen=True)
class Security:
    """TLS files and etcd user credentials (all optional)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None


def _puts(puts: Mapping[str, Mapping[str, Any]], lease: Mapping[str, int] | None) -> list[dict[str, Any]]:
    """A transaction's put operations (JSON values; some keys attached to a lease)."""
    out = []
    for key, value in puts.items():
        put: dict[str, Any] = {"key": b64(key), "value": b64(json.dumps(value, sort_keys=True))}
        if lease and key in lease:
            put["lease"] = lease[key]
        out.append({"request_put": put})
    return out


def _records(kvs: Sequence[Any]) -> dict[str, Record]:
    """etcd's key-values as records by key."""
    out = {}
    for kv in kvs:
        key, value, mod, create = kv_record(kv)
        out[key] = Record(value, mod, create)
    return out


class Store:
    """The etcd cluster a fleet uses."""

    def __init__(
        self,
        endpoints: Sequence[str],
        security: Security | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        import etcd3gw  # the optional extra: quiesce[fleet]
        import requests

        from quiesce.fleet.transport import LeanSession

        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.security = security or Security()
        self.timeout_s = timeout_s
        self._clients = []
        for url in endpoints:
            try:
                parts = urlsplit(url if "://" in url else f"http://{url}")
                port = parts.port  # raises for a port out of range or not a number
            except ValueError as err:
                raise ValueError(f"invalid etcd endpoint {url!r}: {err}") from err
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"invalid etcd endpoint {url!r}: use http(s)://HOST:PORT")
            if parts.username is not None or parts.password is not None:
                # Never sent: the login is --user with --password-file (a URL shows in ps and logs).
                shown = urlunsplit(parts._replace(netloc="...@" + parts.netloc.rpartition("@")[2]))
                raise ValueError(f"invalid etcd endpoint {shown!r}: give the user with --user, not in a URL")
            if not _HOST.fullmatch(parts.hostname):
                raise ValueError(f"invalid etcd endpoint {url!r}: {parts.hostname!r} is not a host name")
            if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
                raise ValueError(f"invalid etcd endpoint {url!r}: use http(s)://HOST:PORT, without a path")
            sec = self.security
            session = LeanSession(
                verify=sec.cacert or True, cert=(sec.cert, sec.key) if sec.cert and sec.key else None
            )
            self._clients.append(
                etcd3gw.client(
                    host=parts.hostname,
                    port=port or 2379,
                    protocol=parts.scheme,
                    timeout=timeout_s,
                    api_path="/v3/",
                    session=cast(Any, session),  # what etcd3gw calls of a session (see transport)
                )
            )
        self._current = 0
        self._lock = threading.Lock()
        self._exceptions = etcd3gw.exceptions
        self._requests = requests
        if self.security.user:
            try:
                self._authenticate(self._clients[0])
            except BaseException as err:
                self.close()  # the connection the refused login opened: nobody else will close it
                exc = self._exceptions
                if isinstance(err, (exc.ConnectionFailedError, exc.ConnectionTimeoutError)):
                    raise FleetError(f"etcd does not answer: {err}") from err
                raise

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
        client.session.headers["Authorization"] = token(answer)

    def call(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST one gateway request, trying the other endpoints and renewing the token."""
        exc = self._exceptions
        last: Exception | None = None
        attempts = len(self._clients)
        for _ in range(attempts):
            client = self.client
            try:
                try:
                    return dict(client.post(client.get_url(path), json=dict(payload)))
                except exc.Etcd3Exception as err:
                    detail = str(getattr(err, "detail_text", "")).lower()
                    # Log in (again) when the token expired, or when etcd refuses a session that
                    # has none yet: auth was enabled after it was made.
                    tokenless = "Authorization" not in client.session.headers
                    if self.security.user and (any(m in detail for m in RELOGIN) or tokenless):
                        self._authenticate(client)  # the token expired: once more with a new one
                        return dict(client.post(client.get_url(path), json=dict(payload)))
                    raise
            except (exc.ConnectionFailedError, exc.ConnectionTimeoutError) as err:
                last = self._next_endpoint() or Exception(
                    getattr(err, "detail_text", None) or type(err).__name__
                )
            except exc.Etcd3Exception as err:
                raise FleetError(f"etcd refused {path}: {getattr(err, 'detail_text', '') or err}") from err
            except (ValueError, TypeError, OSError, self._requests.RequestException) as err:
                # A torn or non-JSON answer, or JSON but not an object (etcd starting or
                # stopping, or not etcd): as if it did not answer.
                last = err
        raise FleetError(f"etcd does not answer: {last}")

    def _next_endpoint(self) -> Exception | None:
        """Go on with the next endpoint (logged in again); the error if that login failed."""
        with self._lock:
            self._current = (self._current + 1) % len(self._clients)
            if self.security.user:
                try:
                    self._authenticate(self.client)
                except self._exceptions.Etcd3Exception as again:
                    return again
        return None

    def get_prefix(self, prefix: str) -> tuple[int, dict[str, Record]]:
        """Every key under ``prefix`` with its value and revisions, and the store's revision."""
        answer = self.call("/kv/range", {"key": b64(prefix), "range_end": b64(range_end(prefix))})
        return revision(answer), _records(listed(answer, "kvs"))

    def get_prefixes(self, prefixes: Sequence[str]) -> tuple[int, dict[str, Record]]:
        """Every key under several prefixes, read in one transaction (at one revision), and that revision."""
        ranges = [{"request_range": {"key": b64(p), "range_end": b64(range_end(p))}} for p in prefixes]
        answer = self.call("/kv/txn", {"compare": [], "success": ranges, "failure": []})
        out: dict[str, Record] = {}
        for response in listed(answer, "responses"):
            found = response.get("response_range") if isinstance(response, dict) else None
            if not isinstance(found, dict):
                raise FleetError(f"etcd answered a malformed range response: {response!r:.100}")
            out.update(_records(listed(found, "kvs")))
        return revision(answer), out

    def put(self, key: str, value: Mapping[str, Any], lease: int | None = None) -> int:
        """Write a JSON value; returns the revision of the write."""
        payload: dict[str, Any] = {"key": b64(key), "value": b64(json.dumps(value, sort_keys=True))}
        if lease:
            payload["lease"] = lease
        return revision(self.call("/kv/put", payload))

    def put_if(
        self,
        puts: Mapping[str, Mapping[str, Any]],
        *,
        present: Sequence[str] = (),
        absent: Sequence[str] = (),
        newer: Sequence[tuple[str, str, int]] = (),
        created: Mapping[str, int] | None = None,
        lease: Mapping[str, int] | None = None,
        otherwise: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> tuple[bool, int]:
        """One transaction: the puts happen only if every ``present`` key exists, no ``absent`` one
        does, every key in each ``newer`` range ``[start, end)`` was modified after its revision,
        and each ``created`` key is the one created at its revision (not deleted and made again).

        A ``newer`` range is one compare however many keys it holds; etcd
        compares an empty range as one missing key, which fails it. Returns
        (committed, revision). ``lease``
        attaches some keys to a lease; ``otherwise`` are the puts made, in
        the same transaction, when the condition does not hold.
        """
        compare = [
            {"key": b64(k), "result": "GREATER", "target": "CREATE", "create_revision": 0} for k in present
        ]
        compare += [
            {"key": b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": 0} for k in absent
        ]
        compare += [
            {
                "key": b64(start),
                "range_end": b64(end),
                "result": "GREATER",
                "target": "MOD",
                "mod_revision": rev,
            }
            for start, end, rev in newer
        ]
        compare += [
            {"key": b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": rev}
            for k, rev in (created or {}).items()
        ]
        success, failure = _puts(puts, lease), _puts(otherwise or {}, lease)
        answer = self.call("/kv/txn", {"compare": compare, "success": success, "failure": failure})
        # etcd leaves out a false "succeeded": anything but true is not committed.
        return answer.get("succeeded") is True, revision(answer)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""
        self.call("/kv/deleterange", {"key": b64(prefix), "range_end": b64(range_end(prefix))})

    def delete_prefixes(self, prefixes: Sequence[str]) -> None:
        """Delete every key under several prefixes, in one transaction."""
        deletes = [
            {"request_delete_range": {"key": b64(p), "range_end": b64(range_end(p))}} for p in prefixes
        ]
        self.call("/kv/txn", {"compare": [], "success": deletes, "failure": []})

    # -- leases ----------------------------------------------------------------

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds (etcd raises very short ones to its minimum)."""
        return number(self.call("/lease/grant", {"TTL": ttl_s, "ID": 0}).get("ID"), "lease ID", minimum=1)

    def keepalive(self, lease: int) -> int:
        """Renew a lease; returns its TTL: 0 or less when it has already expired.

        etcd answers an expired lease with a TTL of 0, which its gateway leaves
        out: read as -1. (etcd's own client takes any TTL <= 0 as expired.)
        """
        result = self.call("/lease/keepalive", {"ID": lease}).get("result", {})
        if not isinstance(result, dict):
            raise FleetError(f"etcd answered a malformed keepalive: {result!r:.100}")
        return number(result.get("TTL", -1), "lease TTL", minimum=-1)

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
                    if self.keepalive(lease) <= 0:
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

    def watch(self, prefix: str | Sequence[str], start_revision: int) -> Watch:
        """Events under ``prefix`` (or several) from ``start_revision`` on (none missed after a read)."""
        prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
        return Watch(self.client, self.timeout_s, prefixes, start_revision)

    def close(self) -> None:
        """Close the HTTP sessions."""
        for c in self._clients:
            c.session.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
