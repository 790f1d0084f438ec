"""Expedited RCU grace periods for the frozen window.

Every FIFREEZE takes the filesystem's write locks (per-CPU rw-semaphores),
and the first taker after a quiet spell waits for a normal RCU grace period:
tens of milliseconds per filesystem while everything is already frozen (a
cold freeze of three filesystems measured 69-101 ms here, nearly all of it
in ``synchronize_rcu``). With ``/sys/kernel/rcu_expedited`` set the same
freeze took 1.2-2.2 ms (``bench/README.md``). An expedited grace period
costs an interrupt on every CPU, which for the few milliseconds of a window
is nothing next to stalled writes.

The setting is system-wide. quiesce uses it by default (opt out with
``--no-expedite-rcu`` or ``"expediteRcu": false``), sets it right before the
first FIFREEZE and restores the value it found right after the last FITHAW.
If quiesce dies, the guardian restores it after thawing, and the ledger
records it for ``quiesce thaw`` (:func:`restore_value`).

The knob is never a reason to fail a freeze: where it is missing, cannot be
opened or written (read-only sysfs in a container, no permission), holds an
unexpected value, or is overridden by ``rcu_normal`` (a kernel booted with
``rcupdate.rcu_normal=1``), :func:`open_knob` says why and the window runs
without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Protocol

RCU_EXPEDITED = "/sys/kernel/rcu_expedited"
RCU_NORMAL = "/sys/kernel/rcu_normal"


class ExpeditedRcu:
    """The open ``rcu_expedited`` knob, its original value, and whether we changed it."""

    def __init__(self, path: str = RCU_EXPEDITED) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.original = os.pread(self.fd, 16, 0).strip() or b"0"
        except OSError:
            os.close(self.fd)
            raise
        self.enabled = False

    @staticmethod
    def overridden(path: str = RCU_NORMAL) -> bool:
        """True when ``rcu_normal`` is set, which makes expediting have no effect."""
        try:
            with open(path, "rb") as f:
                return f.read().strip() == b"1"
        except OSError:
            return False

    def claim(self) -> bool:
        """Take the knob from other freezes (an exclusive flock on it), then read its value again.

        False when another freeze holds it: its value is then that freeze's
        change, not the machine's, and restoring it later would leave it
        expedited. The lock belongs to the open file, which the guardian
        shares: it lasts until the knob is restored, even if this process dies.
        """
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.original = os.pread(self.fd, 16, 0).strip() or b"0"
        return True

    def enable(self) -> None:
        """Expedite grace periods from now on."""
        os.pwrite(self.fd, b"1", 0)
        self.enabled = True

    def restore(self) -> None:
        """Put back the value found at open (idempotent)."""
        if self.enabled:
            os.pwrite(self.fd, self.original, 0)
            self.enabled = False

    def close(self) -> None:
        """Restore and close."""
        if self.fd >= 0:
            try:
                self.restore()
            finally:
                os.close(self.fd)
                self.fd = -1

    def drop(self) -> None:
        """Close without writing: a forked child's copy (the value is its parent's to put back)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.enabled = False


class RestoreAction(Protocol):
    """Where the guardian is told what to write back if it ends the window (a native Session)."""

    def restore_on_orphan(self, fd: int, value: bytes) -> None:
        """The guardian writes ``value`` to ``fd`` when it ends the window itself."""

    def cancel_restore(self) -> None:
        """Nothing for the guardian to write back any more."""


class WindowRcu:
    """The knob over one freeze's window: expedited just before the first FIFREEZE, put back once.

    The guardian is told what to write back if it ends the window itself;
    once the value is back, or was never changed, that action is dropped. A
    knob that cannot be used is a line in ``warnings``, never an error.
    """

    def __init__(self, warnings: list[str]) -> None:
        self.knob: ExpeditedRcu | None = None
        #: The knob was expedited for this window (the report says so).
        self.expedited = False
        self.warnings = warnings

    def open(self, session: RestoreAction) -> None:
        """Open and claim the knob (before the guardian is armed)."""
        # The module's paths looked up now, so a test can point them elsewhere.
        knob, why = open_knob(RCU_EXPEDITED, RCU_NORMAL)
        if knob is None:
            self.warnings.append(f"expedite-rcu: {why}")
            return
        session.restore_on_orphan(knob.fd, knob.original)
        self.knob = knob

    def enable(self, session: RestoreAction) -> None:
        """Expedite now; a failed write leaves the window without it, never fails it."""
        knob = self.knob
        if knob is None:
            return
        try:
            knob.enable()
        except OSError as err:
            # Nothing was changed: neither the guardian nor a later restore may write.
            session.cancel_restore()
            self.knob = None
            with contextlib.suppress(OSError):
                knob.close()
            self.warnings.append(
                f"expedite-rcu: cannot write {knob.path}: {describe(err)}: running without expedited RCU"
            )

    def restore(self, session: RestoreAction | None) -> bool:
        """Put the value back (once); True if it had been expedited for the window."""
        knob, self.knob = self.knob, None
        if knob is not None:
            self.expedited = self.expedited or knob.enabled
            try:
                knob.close()
            except OSError as err:
                self.warnings.append(f"expedite-rcu: restoring {knob.path} failed: {describe(err)}")
            else:
                if session is not None:
                    session.cancel_restore()  # put back: nothing left for the guardian to restore
        return self.expedited

    def drop(self) -> None:
        """In a forked child: close its copy, write nothing."""
        knob, self.knob = self.knob, None
        if knob is not None:
            with contextlib.suppress(OSError):
                knob.drop()


#: The values the kernel's knob reads as (a ledger accepts only these).
KNOB_VALUES = (b"0", b"1")


def describe(err: OSError) -> str:
    """An OS error as its message and errno name: "Read-only file system (EROFS)"."""
    name = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}" + (f" ({name})" if name else "")


def open_knob(
    path: str = RCU_EXPEDITED, normal_path: str = RCU_NORMAL
) -> tuple[ExpeditedRcu | None, str | None]:
    """The knob ready for :meth:`ExpeditedRcu.enable`, or None and why the window runs without it.

    Everything that can go wrong is found here, before the guardian and the
    ledger are told there is a value to restore: the knob is opened, read,
    and its own value written back (a no-op for the kernel that proves the
    write path: a read-only sysfs gives EROFS, a missing capability EPERM or
    EACCES). Two freezes at once (another run directory, a fleet node on the
    same kernel) never both change it: the second would take the first's
    change for the machine's value and put it back last.
    """
    if ExpeditedRcu.overridden(normal_path):
        return None, (
            f"{normal_path} is 1 (kernel booted with rcupdate.rcu_normal=1?), which overrides {path}: "
            "running without expedited RCU"
        )
    try:
        rcu = ExpeditedRcu(path)
    except OSError as err:
        return None, f"cannot open {path}: {describe(err)}: running without expedited RCU"
    try:
        claimed = rcu.claim()
    except OSError as err:
        rcu.close()
        return None, f"cannot lock {path}: {describe(err)}: running without expedited RCU"
    if not claimed:
        rcu.close()
        return None, f"{path} is held by another freeze under way: running without expedited RCU"
    if rcu.original not in KNOB_VALUES:
        value = rcu.original[:8].decode(errors="replace")
        rcu.close()
        return None, f"{path} reads {value!r}, not 0 or 1: running without expedited RCU"
    try:
        os.pwrite(rcu.fd, rcu.original, 0)
    except OSError as err:
        rcu.close()
        return None, f"cannot write {path}: {describe(err)}: running without expedited RCU"
    return rcu, None


def restore_value(value: str, path: str = RCU_EXPEDITED) -> bool:
    """Write ``value`` (a ledger's record of the original) back; False if it cannot be written.

    ``quiesce recover`` and ``quiesce thaw`` of a dead freeze use it, after
    thawing what its ledger lists.
    """
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        return False
    return True
