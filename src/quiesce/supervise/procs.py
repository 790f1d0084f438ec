"""Where a process is: its cgroup and its session, read from ``/proc``.

A session hook's ``READY=1`` is believed only from the hook's own cgroup
(or, without cgroup v2, its session): :mod:`quiesce.supervise.notify` asks
here where the sender is. A child's end is watched through its pidfd, or,
without one, by its pid.
"""

from __future__ import annotations

import contextlib
import os
import time

from quiesce.engine.fdwait import wait_readable
from quiesce.engine.native import Child


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` (the ``0::`` line of /proc/PID/cgroup), None if unknown."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def session_of(pid: int) -> int | None:
    """The session ID of ``pid`` (field 6 of /proc/PID/stat), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[3])


# -- a child's end ----------------------------------------------------------------

#: Without a pidfd (``QUIESCE_FALLBACK=no-pidfd``, or a kernel before 5.3) a
#: child is watched by its pid, this often, as the native supervisor does.
PID_POLL_S = 0.001


def child_exited(child: Child) -> bool:
    """True once ``child`` has exited (a zombie not yet reaped, or reaped already).

    Through its pidfd when it has one, else by its pid (``waitid`` with
    ``WNOWAIT``: looking does not reap it).
    """
    if child.pidfd >= 0:
        return wait_readable(child.pidfd, 0)
    try:
        return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped already: gone


def wait_child(child: Child, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``child`` to exit, without reaping it; True if it did."""
    if child.pidfd >= 0:
        return wait_readable(child.pidfd, timeout_s)
    end = time.monotonic() + timeout_s
    while not child_exited(child):
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(PID_POLL_S, left))
    return True


def reap_child(child: Child, timeout_s: float) -> None:
    """Reap a killed child once it can die; give up after ``timeout_s`` (it then stays a zombie)."""
    if not wait_child(child, timeout_s):
        return
    with contextlib.suppress(ChildProcessError, OSError):
        if child.pidfd >= 0:
            os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED)
        else:
            os.waitid(os.P_PID, child.pid, os.WEXITED)
