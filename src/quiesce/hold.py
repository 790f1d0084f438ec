"""Holding a freeze until it is released: stdin, a signal, or the deadline.

Used by ``quiesce freeze`` (foreground and ``--hold``) and by the ``hold``
snapshot step of ``quiesce run``: the caller announces "frozen", then waits
here. ``quiesce thaw`` releases a holder by sending it SIGUSR1 (through a
pidfd, once the holder is proven, see quiesce.procs).

A ``quiesce freeze`` saves its outcome as the last report in the run
directory before it drops its ledger, so ``quiesce thaw`` and ``quiesce
status`` can tell a hold the guardian ended at its deadline from one that
was released: the first ``quiesce thaw`` after a ``--hold`` the guardian
ended says so and exits 5.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from quiesce.errors import QuiesceError
from quiesce.rundir import RunDir

LAST_REPORT = "last-report.json"
#: ``mode`` of a last report: a ``freeze --hold`` (a later ``quiesce thaw`` releases it) or not.
DETACHED = "hold"
FOREGROUND = "foreground"
#: ``state`` of the last report of a ``freeze --hold`` still holding (or killed while it held).
HOLDING = "holding"

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

    def __init__(self) -> None:
        self.received: int | None = None
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = signum

    def wait(self, remaining_ns: Callable[[], int | None], use_stdin: bool) -> str:
        """Block until released; returns what released it.

        "stdin" (a line, EOF, or a closed or unreadable stdin: nobody can
        release it there), "signal NAME", "deadline", or "error: ..." when
        the wait itself failed (then nothing vouches for the snapshot).
        """
        watch = [self._r]
        if use_stdin:
            if not _is_open(STDIN):
                return "stdin"
            watch.append(STDIN)
        while self.received is None:
            left = remaining_ns()
            if left is not None and left <= 0:
                return "deadline"
            # A little past the deadline: the guardian thaws at it exactly.
            timeout = None if left is None else left / 1e9 + 0.005
            try:
                ready, _, _ = select.select(watch, [], [], timeout)
            except OSError as err:
                return f"error: waiting for the release: {err.strerror}"
            if STDIN in ready and use_stdin:
                with contextlib.suppress(OSError):  # unreadable: as good as EOF
                    os.read(STDIN, 4096)
                return "stdin"
        return f"signal {signal.Signals(self.received).name}"

    def close(self) -> None:
        """Restore the previous handlers."""
        for s, old in self._old.items():
            signal.signal(s, old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)


def save_last_report(run_dir: RunDir, data: dict[str, Any]) -> None:
    """Save a freeze's outcome (its report plus how it ended) as the run directory's last report.

    ``data`` carries the report's keys and ``released_by``, ``mode``
    (:data:`DETACHED` or :data:`FOREGROUND`) and ``acknowledged`` (its
    outcome was already told to its caller). Written atomically, mode 600.
    """
    record = dict(data)
    record.setdefault("ended_unix", time.time())
    run_dir.write(LAST_REPORT, json.dumps(record, sort_keys=True).encode())


def read_last_report(run_dir: RunDir, run_id: str | None = None) -> dict[str, Any] | None:
    """The last report (of ``run_id`` if given), or None if there is none or it is not trusted."""
    try:
        raw = run_dir.read_trusted(LAST_REPORT)
        data = json.loads(raw) if raw is not None else None
    except (OSError, ValueError, QuiesceError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        return None
    return data if run_id is None or data["run_id"] == run_id else None


def acknowledge_last_report(run_dir: RunDir, data: dict[str, Any]) -> None:
    """Mark the last report as told to a ``quiesce thaw``: later ones find nothing to say."""
    if not data.get("acknowledged"):
        # On failure it is told once more next time: better than never.
        with contextlib.suppress(OSError):
            save_last_report(run_dir, {**data, "acknowledged": True})


def mark_holding(run_dir: RunDir, run_id: str, pid: int) -> None:
    """Before a ``freeze --hold`` freezes: its last report says "holding" until its end replaces it.

    So a hold whose holder was killed (the guardian then thaws and drops the
    ledger, but cannot write a report) is not taken for a clean one.
    """
    save_last_report(
        run_dir,
        {
            "run_id": run_id,
            "mode": DETACHED,
            "state": HOLDING,
            "pid": pid,
            "ok": False,
            "guardian_reason": None,
            "released_by": None,
            "window_ns": None,
            "acknowledged": False,
        },
    )


def expired_hold(data: dict[str, Any] | None) -> str | None:
    """Why a ``freeze --hold`` ended before any ``quiesce thaw`` released it, or None.

    The guardian thawed at its deadline (or a FIFREEZE blocked), or the
    holder was killed and never reported: either way the window ended
    unannounced, and the next ``quiesce thaw`` must say so.
    """
    if data is None or data.get("mode") != DETACHED or data.get("acknowledged"):
        return None
    if data.get("state") == HOLDING:
        return "its holder was killed; the guardian thawed"
    if data.get("guardian_reason") is not None:
        return f"the guardian thawed ({data['guardian_reason']})"
    if data.get("released_by") == "deadline":
        return "its deadline passed"
    return None
