"""Every signal handler quiesce installs: a run's, a hold's, a benchmark's, all through :class:`Handlers`.

:class:`Handlers` is the one way handlers are installed: for a block of
code, with an optional wake-up pipe (``signal.set_wakeup_fd``: a byte per
signal, so a native wait sees it), everything restored as it was after.
Its users: :class:`Interrupts` (a run), :class:`quiesce.runner.hold.Release`
(a hold's wait for its release) and :func:`stop_on_signals` (``quiesce
bench``: stop after the current repetition).

Signals during a run: where a stop takes effect, and `quiesce thaw`'s release.

SIGTERM, SIGINT and SIGHUP stop a run, but only at its *interruption
points*: while it waits for a pre-script or pre hook attempt, between
attempts, while it waits for a session hook's ``READY=1``, and between the
pre steps and the freeze. There the handler raises :class:`RunInterrupted`
and the wait's cleanup kills what it waited for. Anywhere else (the frozen
window, a thaw, the post steps, any cleanup) the signal is only recorded
and acted on at the next interruption point, or reported: a signal can
never cut a cleanup in half, stretch a window, or skip a post step.

SIGUSR1 is how ``quiesce thaw`` releases a freeze. During a run it never
kills quiesce: it is recorded, and a window open when it arrives ends at
once (the native command window watches the wake-up pipe for it).

The handlers are installed only when asked (the CLI, from the main
thread); an embedding tool's call changes no signal disposition.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

from quiesce.engine import native

#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: ``quiesce thaw``'s release.
THAW_SIGNAL = signal.SIGUSR1


def ignore_stray_thaw_signals() -> None:
    """For quiesce's own ``run`` and ``freeze`` commands: SIGUSR1 does nothing outside their handlers.

    ``quiesce thaw`` proves a holder, then signals it. A thaw slowed down
    between the two (preempted on a busy machine) can signal after the hold
    ended and its handlers were put back, when the default disposition
    would kill the command before it says how its freeze ended. The
    handlers of a hold or a run take SIGUSR1 while a window may be open and
    put this back after. Never for the API: a program's dispositions are
    its own. Children start with the default again (spawn resets them all).
    """
    signal.signal(THAW_SIGNAL, signal.SIG_IGN)


class Handlers:
    """``handler`` installed for ``signums`` until :meth:`close`, with a wake-up pipe if asked.

    Restores the previous handlers, then the previous wake-up fd, and
    closes the pipe (idempotent). Needs the main thread, as any handler:
    from another one it raises RuntimeError and changes nothing.
    """

    def __init__(
        self, signums: Sequence[int], handler: Callable[[int, FrameType | None], Any], *, wakeup: bool
    ) -> None:
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._wakeup_set = False
        self._old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            names = ", ".join(signal.Signals(s).name for s in signums)
            raise RuntimeError(
                f"quiesce needs the main thread here: it would handle {names}, and Python "
                "installs signal handlers only from the main thread"
            )
        try:
            if wakeup:
                self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self._old_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
                self._wakeup_set = True
            for s in signums:
                self._old[s] = signal.signal(s, handler)
        except BaseException:
            self.close()
            raise

    @property
    def wakeup_fd(self) -> int:
        """The wake-up pipe's read end (a byte per signal), -1 without one."""
        return self._pipe[0] if self._pipe is not None else -1

    def close(self) -> None:
        """Put back what was there before."""
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        if self._pipe is not None:
            if self._wakeup_set:
                signal.set_wakeup_fd(self._old_wakeup)
                self._wakeup_set = False
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


class RunInterrupted(BaseException):
    """A stop signal took effect before the snapshot step (SIGTERM, SIGINT or SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Interrupts:
    """The run's signal handling (see the module's docstring). A context manager."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        #: Every signal received, in order.
        self.received: list[int] = []
        #: The first stop signal, once one arrived before :meth:`defer`.
        self.stop: int | None = None
        #: True once the stop was raised as :class:`RunInterrupted`.
        self.raised = False
        #: SIGUSR1 arrived since :meth:`clear_thaw_request`.
        self.thaw_requested = False
        #: Stop signals that arrived after :meth:`defer` (during the post steps).
        self.deferred: list[int] = []
        self._deferred = False
        self._armed = 0
        self._handlers: Handlers | None = None
        self._previous_fd = -1

    # -- the handler ------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if signum == THAW_SIGNAL:
            self.thaw_requested = True
            return
        if self._deferred:
            self.deferred.append(signum)
            return
        if self.stop is None:
            self.stop = signum
        if self._armed:
            self.check()

    # -- for the run ------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`RunInterrupted` if a stop arrived and has not taken effect yet."""
        if self.stop is not None and not self.raised and not self._deferred:
            self.raised = True
            raise RunInterrupted(self.stop)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A wait that a stop may end: a pending stop, or one arriving now, raises here."""
        self.check()
        self._armed += 1
        try:
            yield
        finally:
            self._armed -= 1

    def defer(self) -> None:
        """From now on signals are only recorded (the post steps always finish)."""
        self._deferred = True

    @property
    def pending_stop(self) -> int | None:
        """A stop that arrived before the post steps but did not interrupt anything."""
        return None if self.raised else self.stop

    def clear_thaw_request(self) -> None:
        """Forget earlier SIGUSR1s (nothing was frozen for them to release)."""
        self.thaw_requested = False
        fd = self.release_fd
        if fd >= 0:
            with contextlib.suppress(OSError):
                while os.read(fd, 4096):
                    pass

    @property
    def release_fd(self) -> int:
        """The wake-up pipe's read end (a byte per signal), for a native wait; -1 without handlers."""
        return self._handlers.wakeup_fd if self._handlers is not None else -1

    # -- installing ---------------------------------------------------------------

    def __enter__(self) -> Interrupts:
        if self.enabled:
            self._handlers = Handlers((*STOP_SIGNALS, THAW_SIGNAL), self._handle, wakeup=True)
            # A script's wait ends on the wake-up byte too, not only on EINTR.
            self._previous_fd = native.set_interrupt_fd(self._handlers.wakeup_fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handlers is not None:
            native.set_interrupt_fd(self._previous_fd)
            self._handlers.close()
            self._handlers = None


# -- quiesce bench --------------------------------------------------------------


class StopFlag:
    """Set by SIGINT or SIGTERM; true once a stop was requested."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: note the first signal, never raise (a freeze may be under way)."""
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def stop_on_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Within the block, the signals set a :class:`StopFlag` instead of raising or ending the process."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    handlers = Handlers(signums, flag.handle, wakeup=False)
    try:
        yield flag
    finally:
        handlers.close()
