"""Expedited RCU grace periods for the frozen window.

Every FIFREEZE takes the filesystem's write locks (per-CPU rw-semaphores),
and the first taker after a quiet spell waits for a normal RCU grace period:
tens of milliseconds per filesystem while everything is already frozen (a
cold freeze of three filesystems measured 69-101 ms here, nearly all of it
in ``synchronize_rcu``). With ``/sys/kernel/rcu_expedited`` set the same
freeze took 1.2-2.2 ms (``bench/README.md``). An expedited grace period
costs an interrupt on every CPU, which for the few milliseconds of a window
is nothing next to stalled writes.

The setting is system-wide, so quiesce changes it only when asked
(``--expedite-rcu``, ``"expediteRcu": true``), sets it right before the
first FIFREEZE and restores the value it found right after the last FITHAW.
If quiesce dies, the guardian restores it after thawing, and the ledger
records it for ``quiesce thaw`` (:func:`restore_value`).
"""

from __future__ import annotations

import os

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
