"""Waiting for file descriptors to become readable, with poll(2).

``select(2)`` cannot watch a descriptor numbered 1024 or more (Python
raises ``ValueError``), and quiesce may be embedded in a process holding
thousands of open files, where every pidfd and pipe it opens is numbered
above that. Every wait on a pidfd, a pipe or a socket goes through here.
"""

from __future__ import annotations

import math
import select
from collections.abc import Iterable


def readable(fds: Iterable[int], timeout_s: float | None) -> set[int]:
    """The fds of ``fds`` that are readable (or hung up) within ``timeout_s`` (None: no limit).

    Negative fds are ignored, as poll(2) ignores them. An empty set means
    the time ran out.
    """
    poller = select.poll()
    watched = {fd for fd in fds if fd >= 0}
    for fd in watched:
        poller.register(fd, select.POLLIN)
    # Rounded up to whole milliseconds: a wait never ends before its time.
    ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1000))
    return {fd for fd, _ in poller.poll(ms)}


def wait_readable(fd: int, timeout_s: float | None) -> bool:
    """True when ``fd`` is readable (or hung up) within ``timeout_s``."""
    return bool(readable((fd,), timeout_s))
