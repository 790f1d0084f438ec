"""The freeze lock: one quiesce freeze on a machine at a time.

An ``flock`` on ``RUN_DIR/lock``. The lock belongs to the open file, so the
guardian, which inherits the fd, keeps it held while it may still thaw: a new
freeze cannot start before the previous guardian is done. The holder's pid
is written into the file for the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from quiesce.errors import LockHeldError, QuiesceOSError


def ensure_run_dir(run_dir: str) -> None:
    """Create the run directory (mode 700) if it is missing."""
    try:
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
    except OSError as err:
        raise QuiesceOSError(err.errno or 0, "creating the run directory", run_dir) from err


class FreezeLock:
    """An acquired freeze lock; :meth:`release` (or the context) gives it back."""

    def __init__(self, run_dir: str, name: str = "lock", what: str = "freeze") -> None:
        ensure_run_dir(run_dir)
        self.path = os.path.join(run_dir, name)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise QuiesceOSError(err.errno or 0, "opening the lock", self.path) from err
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(self.path)
            os.close(self.fd)
            who = f"pid {holder}" if holder else "another process"
            raise LockHeldError(
                f"another quiesce {what} is in progress ({who} holds {self.path}); "
                "wait for it, or see `quiesce status`",
                holder,
            ) from None
        # The pid is only for messages: a full disk must not fail the lock.
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FreezeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: str) -> int | None:
    """The pid written by the last holder of the lock at ``path``."""
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        return int(f.read().strip() or 0) or None
    return None


def is_held(run_dir: str) -> bool:
    """True when some process holds the freeze lock now."""
    path = os.path.join(run_dir, "lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
