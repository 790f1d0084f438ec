"""The bindings layer: the only package that touches the C extension ``quiesce._native``.

:mod:`~quiesce.engine.native.core` imports it (constants from the C
headers, ``-errno`` turned into exceptions, the fallback switches);
:mod:`~quiesce.engine.native.session` wraps one freeze (FIFREEZE/FITHAW,
the guardian, the command window); :mod:`~quiesce.engine.native.spawn`
starts and supervises children. Untyped cffi values never leave this
package: the names below are plain Python.
"""

from __future__ import annotations

from quiesce.engine.native.core import (
    FALLBACK_ENV,
    GUARD_REASONS,
    MAX_FILESYSTEMS,
    SCRIPT_FD,
    STATE_NAMES,
    fallbacks,
    freeze_error,
    no_pidfd,
    now_ns,
    set_no_pidfd,
    thaw_error,
    thaw_fd,
)
from quiesce.engine.native.session import FsRecord, GuardianRecord, Session
from quiesce.engine.native.spawn import Child, Supervision, WaitResult, Watchdog, set_interrupt_fd, spawn

__all__ = [
    "FALLBACK_ENV",
    "GUARD_REASONS",
    "MAX_FILESYSTEMS",
    "SCRIPT_FD",
    "STATE_NAMES",
    "Child",
    "FsRecord",
    "GuardianRecord",
    "Session",
    "Supervision",
    "WaitResult",
    "Watchdog",
    "fallbacks",
    "freeze_error",
    "no_pidfd",
    "now_ns",
    "set_interrupt_fd",
    "set_no_pidfd",
    "spawn",
    "thaw_error",
    "thaw_fd",
]
