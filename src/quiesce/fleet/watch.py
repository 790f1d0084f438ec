"""A watch on etcd prefixes through the gateway, whose end is an event too.

etcd3gw's own watcher stops silently when the stream breaks, so the stream
of the same gateway call is read here, and its end is reported.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.fleet import FleetError
from quiesce.fleet.wire import b64, decode_value, range_end, unb64


@dataclass(frozen=True)
class Event:
    """One change under a watched prefix; ``kind`` is ``put``, ``delete`` or ``lost``."""

    kind: str
    key: str = ""
    value: Mapping[str, Any] | None = None
    revision: int = 0
    why: str = ""


class Watch:
    """A watch on one or more prefixes: events arrive in :attr:`events`; its end is an event too.

    The gateway's watch is one long HTTP response of JSON lines per prefix,
    each read by a thread into one queue. When any ends for a reason other
    than :meth:`close` (etcd killed, the connection reset, a compaction), a
    ``lost`` event is queued.
    """

    def __init__(self, client: Any, timeout_s: float, prefixes: Sequence[str], start_revision: int) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        #: Set (and queued) when a stream ended by itself.
        self.lost: Event | None = None
        self._closed = threading.Event()
        self._responses: list[Any] = []
        self._threads: list[threading.Thread] = []
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
                    response = client.session.post(
                        client.get_url("/watch"), json=request, stream=True, timeout=(timeout_s, None)
                    )
                except OSError as err:
                    raise FleetError(f"etcd watch failed: {err}") from err
                if response.status_code != 200:
                    text = response.text
                    response.close()
                    raise FleetError(f"etcd refused the watch: {response.status_code} {text}")
                self._responses.append(response)
        except BaseException:
            self.close()
            raise
        for response in self._responses:
            thread = threading.Thread(target=self._read, args=(response,), name="etcd-watch", daemon=True)
            self._threads.append(thread)
            thread.start()

    @staticmethod
    def _lines(response: Any) -> Iterator[bytes]:
        pending = b""
        for chunk in response.iter_content(chunk_size=None):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield line

    def _read(self, response: Any) -> None:
        why = "the watch stream ended"
        try:
            for line in self._lines(response):
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
                    value = None if kind == "delete" else decode_value(kv.get("value"))
                    self.events.put(Event(kind, unb64(kv["key"]), value, int(kv["mod_revision"])))
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
        for response in self._responses:
            try:
                fd = response.raw.fileno()
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError, AttributeError):
                pass  # already closed
            response.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
