"""Identifying processes: a pid plus its start time, and the proof of a ledger's holder.

A pid alone can be reused once its process is gone; the start time from
``/proc/PID/stat`` (field 22, in clock ticks since boot) makes the pair
unique for the life of the machine. Before quiesce signals a process a
ledger names it also checks the :class:`Proof` that only the ledger's
writer holds, and it signals through a pidfd, never a pid.
"""

from __future__ import annotations

import os
import sys

from quiesce.engine.fdwait import wait_readable


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def is_alive(pid: int, started: int | None) -> bool:
    """True when ``pid`` still names the process that started at ``started``.

    A zombie counts as gone: it froze and thawed nothing more.
    """
    if pid <= 0:
        return False
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in (b"Z", b"X")


def current_identity() -> tuple[int, int | None]:
    """This process's (pid, start time)."""
    pid = os.getpid()
    return pid, start_time(pid)


# -- proving a process is the holder of a ledger -------------------------------

#: The name of a proof's memfd, before the token.
PROOF_PREFIX = "quiesce-freeze-"
#: What a holder that takes no SIGUSR1 writes in its proof (see quiesce.engine.ledger):
#: frozen by :meth:`quiesce.Freeze.freeze`, then thawed. Empty: not frozen yet.
PROOF_FROZEN = b"F"
PROOF_THAWED = b"T"
#: Where the window's deadline is written (CLOCK_MONOTONIC ns, a native int64) just before the
#: first FIFREEZE, for every holder: csrc/guardian.h's QZ_PROOF_DEADLINE_AT. Absent: not begun.
PROOF_DEADLINE_AT = 8


class Proof:
    """A secret only the holder of one ledger and its guardian keep: a memfd named after a token.

    A pid and its start time name a process; they do not show that the
    process is the freeze a ledger describes (a ledger could name any live
    process). The freezing process creates this memfd before it writes the
    ledger, the guardian inherits it at the same fd number, and both keep it
    open while they may act. The ledger records the random token and the fd
    number; :func:`open_proven` accepts a pid only if ``/proc/PID/fd/N``
    is that memfd. The token is in the root-only ledger and the fd table of
    a root process, both unreadable to other users, and cannot be guessed.
    """

    def __init__(self) -> None:
        # The kernel's CSPRNG, as secrets.token_hex draws it, without loading secrets (hmac, hashlib)
        # into `quiesce thaw`, which imports this module.
        self.token = os.urandom(16).hex()
        self.fd = os.memfd_create(PROOF_PREFIX + self.token, os.MFD_CLOEXEC)

    def mark(self, state: bytes) -> None:
        """Record the holder's state (PROOF_FROZEN, PROOF_THAWED) in the memfd: see :func:`proof_state`."""
        if self.fd >= 0:
            os.pwrite(self.fd, state, 0)

    def close(self) -> None:
        """Drop the proof (idempotent): from now on no one proves this ledger."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def holds_proof(pid: int, fd: int, token: str) -> bool:
    """True when ``pid`` has the proof memfd of ``token`` open at ``fd``."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return False
    return link == f"/memfd:{PROOF_PREFIX}{token} (deleted)"


def open_proven(pid: int, started: int | None, token: str, fd: int) -> int | None:
    """A pidfd for ``pid`` if it is the live process holding the proof; else None.

    The pidfd is opened first and the process checked after: if ``pid``
    was reused in between, the pidfd names the old, dead process and the
    final liveness check fails. Signal it with ``signal.pidfd_send_signal``,
    never by pid.
    """
    if pid <= 0 or not token:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if is_alive(pid, started) and holds_proof(pid, fd, token) and not pidfd_exited(pidfd):
        return pidfd
    os.close(pidfd)
    return None


def pidfd_exited(pidfd: int) -> bool:
    """True once the process of ``pidfd`` has exited (its pidfd turns readable)."""
    return wait_readable(pidfd, 0)


def wait_pidfd(pidfd: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the process of ``pidfd`` to exit; True if it did."""
    return wait_readable(pidfd, max(0.0, timeout_s))


def proof_state(pid: int, fd: int) -> bytes:
    """The state a holder wrote in its proof (``b""`` if none); read through ``/proc/PID/fd/FD``.

    Call only for a process :func:`open_proven` proved (the fd is its proof).
    """
    try:
        with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
            return f.read(1)
    except OSError:
        return b""


def proof_deadline_ns(pid: int, fd: int) -> int | None:
    """When the guardian of a proven holder (or guardian) thaws at the latest; None before freezing began.

    CLOCK_MONOTONIC ns, as the freezing process wrote it in the proof just
    before its first FIFREEZE (the ledger is written before the pre-flush, so
    its time plus the timeout would come early by as long as the pre-flush
    took). Call only for a process :func:`open_proven` proved.
    """
    try:
        with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
            f.seek(PROOF_DEADLINE_AT)
            data = f.read(8)
    except OSError:
        return None
    if len(data) != 8:
        return None
    deadline = int.from_bytes(data, sys.byteorder, signed=True)
    return deadline if deadline > 0 else None
