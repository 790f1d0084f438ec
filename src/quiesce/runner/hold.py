"""Holding a freeze until it is released: stdin, a signal, or the deadline.

Used by ``quiesce freeze`` (foreground and ``--hold``) and by the ``hold``
snapshot step of ``quiesce run``: the caller announces "frozen", then waits
here. ``quiesce thaw`` releases a holder by sending it SIGUSR1 (through a
pidfd, once the holder is proven, see :mod:`quiesce.engine.proof`).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType

from quiesce.engine.fdwait import readable
from quiesce.runner.signals import Handlers

#: The release's line comes on fd 0 (not ``sys.stdin``, which may be None or replaced).
STDIN = 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class Release:
    """Waits for the end of a hold: stdin, a signal, or the deadline."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

    #: What ``freeze --hold``'s command writes on the told pipe once its "frozen" line is out.
    TOLD = b"k"

    def __init__(self) -> None:
        self.received: int | None = None
        self._handlers = Handlers(self.SIGNALS, self._on_signal, wakeup=True)
        self._told_fd: int | None = None

    def watch_told(self, fd: int) -> None:
        """Also end the wait if ``fd`` (a pipe) closes before it brings :attr:`TOLD`; the fd is ours.

        ``freeze --hold``: the command that forked this holder prints "frozen"
        on its stdout, then writes TOLD. Killed before that (or its stdout
        blocked until it was), nobody heard "frozen" and nobody will release
        this hold: it ends now, not at the guardian's deadline.
        """
        self._told_fd = fd

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def wait(self, remaining_ns: Callable[[], int | None], use_stdin: bool) -> str:
        """Block until released; returns what released it.

        "stdin" (a line, EOF, or a closed or unreadable stdin: nobody can
        release it there), "signal NAME", "deadline", or "error: ..." when
        the wait itself failed (then nothing vouches for the snapshot).
        """
        watch = [self._handlers.wakeup_fd]
        if use_stdin:
            if not _is_open(STDIN):
                return "stdin"
            watch.append(STDIN)
        told = self._told_fd
        if told is not None:
            watch.append(told)
        while self.received is None:
            left = remaining_ns()
            if left is not None and left <= 0:
                return "deadline"
            # A little past the deadline: the guardian thaws at it exactly.
            timeout = None if left is None else left / 1e9 + 0.005
            try:
                ready = readable(watch, timeout)
            except OSError as err:
                return f"error: waiting for the release: {err.strerror}"
            if STDIN in ready and use_stdin:
                with contextlib.suppress(OSError):  # unreadable: as good as EOF
                    os.read(STDIN, 4096)
                return "stdin"
            if told is not None and told in ready:
                try:
                    heard = os.read(told, 1) == self.TOLD
                except OSError:
                    heard = False
                self._close_told()
                watch.remove(told)
                told = None
                if not heard:
                    return "its command ended before it said frozen (nobody could release it)"
        return f"signal {signal.Signals(self.received).name}"

    def _close_told(self) -> None:
        if self._told_fd is not None:
            os.close(self._told_fd)
            self._told_fd = None

    def close(self) -> None:
        """Restore the previous handlers (and close the told pipe, if still open)."""
        self._close_told()
        self._handlers.close()
