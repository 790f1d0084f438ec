"""quiesce's own output, which must never decide what a run does.

A closed stdout (``>&-``), a reader gone (EPIPE), a full disk (ENOSPC), a
bad descriptor (EBADF): none of them may stop a thaw, skip a post step or
change an exit status. :class:`SafeStream` wraps stdout or stderr: a write
that fails is recorded (:attr:`SafeStream.failure`), the stream goes quiet,
and its descriptor is pointed at ``/dev/null`` so that whatever Python still
buffers for it can be flushed at exit without a second failure.
:func:`reopen_closed_std_fds` makes sure fds 0, 1 and 2 are open, so that no
file quiesce opens later lands on them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO, cast


def describe(err: BaseException) -> str:
    """A short, stable description of an output failure: "EPIPE (Broken pipe)"."""
    if isinstance(err, OSError) and err.errno is not None:
        return f"{errno.errorcode.get(err.errno, str(err.errno))} ({os.strerror(err.errno)})"
    return f"{type(err).__name__}: {err}"


def reopen_closed_std_fds() -> list[int]:
    """Open ``/dev/null`` on any of fds 0, 1, 2 that is closed; returns those fds.

    Python leaves ``sys.stdout`` None for a closed fd 1; without this, the
    next file quiesce opens (a lock, a ledger) would become fd 1 or 2.
    """
    reopened = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, os.O_RDWR)
            if new != fd:  # a lower fd was closed too and took it: it is reopened in turn
                os.dup2(new, fd)
                os.close(new)
            reopened.append(fd)
    return reopened


class SafeStream(io.TextIOBase):
    """A text stream whose failures are recorded, never raised (see the module's docstring)."""

    def __init__(self, label: str, stream: TextIO | None) -> None:
        super().__init__()
        self.label = label
        self._stream = stream
        #: Why output stopped (None while it works).
        self.failure: str | None = None if stream is not None else "closed"

    def write(self, text: str) -> int:
        """Write ``text`` and flush; on failure, record it and write nothing more."""
        if self.failure is None and self._stream is not None:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError) as err:
                self._fail(err)
        return len(text)

    def flush(self) -> None:
        """Flush; a failure is recorded."""
        if self.failure is None and self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as err:
                self._fail(err)

    def isatty(self) -> bool:
        """Whether the stream is a terminal (False once it failed)."""
        if self.failure is not None or self._stream is None:
            return False
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        """Always: writes never raise."""
        return True

    @property
    def ok(self) -> bool:
        """Nothing has failed so far."""
        return self.failure is None

    def _fail(self, err: BaseException) -> None:
        self.failure = describe(err)
        stream = self._stream
        if stream is None:
            return
        # What Python still buffers must flush somewhere at exit, or the
        # interpreter fails again there (and exits 120).
        with contextlib.suppress(OSError, ValueError):
            fd = stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            os.dup2(devnull, fd)
            os.close(devnull)


def emit_json(data: Any, out: TextIO) -> None:
    """One JSON document, one line."""
    out.write(json.dumps(data, sort_keys=True) + "\n")
    out.flush()


@contextlib.contextmanager
def guarded_stdout() -> Iterator[TextIO]:
    """Within the block ``sys.stdout`` is a :class:`SafeStream`: a command's report can never change its exit.

    For commands that act before they print (``thaw``, ``recover``): a
    closed stdout or a reader gone must not turn what they did into an
    error. A failure is said on stderr afterwards, if stderr still works.
    """
    stream = SafeStream("stdout", sys.stdout)
    with contextlib.redirect_stdout(stream):
        yield cast(TextIO, stream)
    if stream.failure is not None and sys.stdout is not None:
        SafeStream("stderr", sys.stderr).write(f"quiesce: output to stdout failed: {stream.failure}\n")
