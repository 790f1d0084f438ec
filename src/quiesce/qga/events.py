"""The agent's log lines: written at once when thawed, kept in memory while frozen.

stderr is journald under systemd, but it may be a file on a filesystem the
agent freezes; a write there would put the agent to sleep until the
guardian thaws. So while frozen, lines wait in memory (bounded) and are
written after the thaw.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

#: Lines kept while frozen; later ones are counted, not kept.
HELD_LINES = 1000


class EventLog:
    """Log lines to ``stream``; :meth:`hold` keeps them in memory until :meth:`release`."""

    def __init__(self, stream: TextIO | None = None, prefix: str = "quiesce qga: ") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self._lock = threading.Lock()
        self._held: list[str] | None = None
        self._dropped = 0

    def __call__(self, message: str) -> None:
        """Log one line (or keep it, while held)."""
        with self._lock:
            if self._held is None:
                self._write([message])
            elif len(self._held) < HELD_LINES:
                self._held.append(message)
            else:
                self._dropped += 1

    def hold(self) -> None:
        """From now on, keep lines in memory."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self) -> None:
        """Write what was kept, and write at once again."""
        with self._lock:
            held, self._held = self._held or [], None
            if self._dropped:
                held.append(f"({self._dropped} more lines were dropped while frozen)")
                self._dropped = 0
            self._write(held)

    def _write(self, lines: list[str]) -> None:
        try:
            for line in lines:
                self.stream.write(f"{self.prefix}{line}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must never stop the agent
