"""Holding a freeze until it is released: stdin, a signal, or the deadline.

Used by ``quiesce freeze`` (foreground and ``--hold``) and by the ``hold``
snapshot step of ``quiesce run``: the caller announces "frozen", then waits
here. ``quiesce thaw`` releases a holder by sending it SIGUSR1.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections.abc import Callable


class Release:
    """Waits for the end of a hold: stdin, a signal, or the deadline."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = signum

    def wait(self, remaining_ns: Callable[[], int | None], use_stdin: bool) -> str:
        """Block until released; returns what released it."""
        watch = [self._r]
        if use_stdin:
            watch.append(sys.stdin.fileno())
        while self.received is None:
            left = remaining_ns()
            if left is not None and left <= 0:
                return "deadline"
            # A little past the deadline: the guardian thaws at it exactly.
            timeout = None if left is None else left / 1e9 + 0.005
            ready, _, _ = select.select(watch, [], [], timeout)
            if use_stdin and sys.stdin.fileno() in ready:
                os.read(sys.stdin.fileno(), 4096)
                return "stdin"
        return f"signal {signal.Signals(self.received).name}"

    def close(self) -> None:
        """Restore the previous handlers."""
        for s, old in self._old.items():
            signal.signal(s, old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)
