"""A watch on etcd prefixes through the gateway, whose end is an event too.

etcd3gw's own watcher stops silently when the stream breaks, so the stream
of the same gateway call is read here, and its end is reported.
"""

from __future__ import annotations

import collections
import json
import math
import select
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.fleet import FleetError
from quiesce.fleet.wire import b64, kv_record, listed, range_end


@dataclass(frozen=True)
class Event:
    """One change under a watched prefix; ``kind`` is ``put``, ``delete`` or ``lost``."""

    kind: str
    key: str = ""
    value: Mapping[str, Any] | None = None
    revision: int = 0
    why: str = ""


class Watch:
    """A watch on one or more prefixes, read by whoever calls :meth:`get`; its end is an event too.

    The gateway's watch is one long HTTP response of JSON lines per prefix.
    :meth:`get` waits on all of them at once, in the caller's thread: an
    event costs no hand-off between threads. When any stream ends for a
    reason other than :meth:`close` (etcd killed, the connection reset, a
    compaction), a ``lost`` event follows the events read before it.
    """

    def __init__(self, client: Any, timeout_s: float, prefixes: Sequence[str], start_revision: int) -> None:
        #: Set (and returned) once a stream ended by itself.
        self.lost: Event | None = None
        self._closed = False
        self._ready: collections.deque[Event] = collections.deque()
        self._streams: list[Any] = []
        self._by_fd: dict[int, Any] = {}
        try:
            for prefix in prefixes:
                request = {
                    "create_request": {
                        "key": b64(prefix),
                        "range_end": b64(range_end(prefix)),
                        "start_revision": start_revision,
                    }
                }
                try:
                    stream = client.session.stream(client.get_url("/watch"), request, timeout_s)
                except OSError as err:  # requests' exceptions are OSErrors
                    raise FleetError(f"etcd watch failed: {err}") from err
                self._streams.append(stream)
                if stream.status != 200:
                    raise FleetError(f"etcd refused the watch: {stream.status} {stream.text()[:200]}")
        except BaseException:
            self.close()
            raise
        # poll, not select: an fd above 1023 (a process with many files open) is fine.
        self._poll = select.poll()
        for stream in self._streams:
            self._by_fd[stream.fileno()] = stream
            self._poll.register(stream.fileno(), select.POLLIN)

    def _read(self, stream: Any) -> None:
        """Queue the events of what ``stream`` received; a ``lost`` event if it ended."""
        why = "the watch stream ended"
        try:
            for line in stream.lines():
                message = json.loads(line)
                result = message.get("result", {}) if isinstance(message, dict) else None
                if not isinstance(result, dict):
                    raise FleetError(f"etcd answered a malformed watch message: {line[:100]!r}")
                if "error" in message:
                    why = f"etcd ended the watch: {message['error']}"
                    break
                if result.get("canceled"):
                    why = f"etcd canceled the watch: {result.get('cancel_reason') or 'compacted'}"
                    break
                for ev in listed(result, "events"):
                    key, value, mod, _ = kv_record(ev.get("kv") if isinstance(ev, dict) else None)
                    kind = "delete" if ev.get("type") == "DELETE" else "put"
                    self._ready.append(Event(kind, key, None if kind == "delete" else value, mod))
            else:
                if not stream.ended:
                    return
        except FleetError as err:
            why = f"the watch stream broke: {err}"
        except Exception as err:  # the stream broke: any error ends the watch the same way
            why = f"the watch stream broke: {type(err).__name__}"
        self.lost = Event("lost", why=why)

    def get(self, timeout_s: float | None) -> Event | None:
        """The next event, or None after ``timeout_s`` (None: no limit).

        Once the watch is lost, every call after the events read before it
        returns the ``lost`` event again: whoever reads next learns it too.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._ready and self.lost is None and not self._closed:
            waiting = [s for s in self._streams if s.buffered()]
            if not waiting:
                left_ms = None if deadline is None else max(math.ceil((deadline - time.monotonic()) * 1e3), 0)
                try:
                    # Readable, hung up or failed: reading tells which.
                    waiting = [self._by_fd[fd] for fd, _ in self._poll.poll(left_ms) if fd in self._by_fd]
                except OSError as err:
                    self.lost = Event("lost", why=f"the watch stream broke: {type(err).__name__}")
                    break
            for stream in waiting:
                self._read(stream)
                if self.lost is not None:
                    break
            if not waiting and deadline is not None and time.monotonic() >= deadline:
                return None
        if self._ready:
            return self._ready.popleft()
        return self.lost

    def close(self) -> None:
        """Stop the watch (no ``lost`` event for this end)."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.close()
