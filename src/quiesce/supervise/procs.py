"""Where a process is: its cgroup and its session, read from ``/proc``.

A session hook's ``READY=1`` is believed only from the hook's own cgroup
(or, without cgroup v2, its session): :mod:`quiesce.supervise.notify` asks
here where the sender is. A child's end is watched through its pidfd.
"""

from __future__ import annotations

import contextlib
import os
import select

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


def child_exited(child: Child) -> bool:
    """True once ``child`` has exited (or cannot be watched)."""
    return child.pidfd < 0 or bool(select.select([child.pidfd], [], [], 0)[0])


def reap_child(child: Child, timeout_s: float) -> None:
    """Reap a killed child once it can die; give up after ``timeout_s``."""
    if child.pidfd < 0 or not select.select([child.pidfd], [], [], timeout_s)[0]:
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED)
