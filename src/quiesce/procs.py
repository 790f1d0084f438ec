"""Identifying processes across time: a pid plus its start time.

A pid alone can be reused once its process is gone; the start time from
``/proc/PID/stat`` (field 22, in clock ticks since boot) makes the pair
unique for the life of the machine.
"""

from __future__ import annotations

import os


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


def mount_id_of_fd(fd: int) -> int | None:
    """The mount ID an open fd lives on (``mnt_id`` in ``/proc/self/fdinfo``)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def current_identity() -> tuple[int, int | None]:
    """This process's (pid, start time)."""
    pid = os.getpid()
    return pid, start_time(pid)
