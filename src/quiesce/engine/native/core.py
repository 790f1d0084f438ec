"""The only module that imports ``quiesce._native``: its constants, its switches, its errors.

It turns every ``-errno`` the C side returns into an exception right after
the call (:func:`freeze_error`, :func:`thaw_error`), reads the limits and
states from the C headers (never a copied number), and holds the test
switches that force the fallback paths. :mod:`~quiesce.engine.native.session`
and :mod:`~quiesce.engine.native.spawn` wrap the calls; untyped cffi values
never leave the :mod:`quiesce.engine.native` package.
"""

from __future__ import annotations

import errno
import os

# The one import of the C extension; the package's other modules take ffi and lib from here.
import quiesce._native as _module
from quiesce._native import ffi as ffi
from quiesce._native import lib as lib
from quiesce.errors import (
    FreezeError,
    FreezeNotSupportedError,
    FreezeTimeoutError,
    FrozenByOtherError,
    NotFrozenError,
    QuiesceOSError,
    ThawError,
)

#: Per-filesystem states, named as reports show them.
STATE_NAMES: dict[int, str] = {
    lib.QZ_IDLE: "not-attempted",
    lib.QZ_FREEZING: "freezing",
    lib.QZ_FROZEN: "frozen",
    lib.QZ_FREEZE_FAILED: "freeze-failed",
    lib.QZ_THAWING: "thawing",
    lib.QZ_THAWED: "thawed",
    lib.QZ_GUARD_THAWING: "guardian-thawing",
    lib.QZ_GUARD_THAWED: "thawed-by-guardian",
}

#: Why the guardian acted, as reports name it.
GUARD_REASONS: dict[int, str | None] = {
    lib.QZ_FIRED_NONE: None,
    lib.QZ_FIRED_DEADLINE: "deadline",
    lib.QZ_FIRED_ORPHANED: "orphaned",
    lib.QZ_FIRED_BLOCKED: "blocked-freeze",
}

#: The largest number of filesystems one session can hold.
#: The largest number of filesystems one session can hold (``QZ_MAX_FILESYSTEMS``).
MAX_FILESYSTEMS = int(lib.QZ_MAX_FILESYSTEMS)

#: Where a checked script's fd sits in the child (``/dev/fd/3``).
SCRIPT_FD = int(lib.QZ_SCRIPT_FD)

#: ``QUIESCE_FALLBACK=no-pidfd`` runs without pidfds, as on kernels before
#: 5.3 (children and the guardian watched by pid); ``no-cgroup`` without
#: cgroup v2 for scripts (their process group instead). The tests cover those
#: paths on a kernel that has both.
FALLBACK_ENV = "QUIESCE_FALLBACK"


def fallbacks() -> frozenset[str]:
    """The fallback paths forced by ``$QUIESCE_FALLBACK`` (comma-separated)."""
    return frozenset(x.strip() for x in os.environ.get(FALLBACK_ENV, "").split(",") if x.strip())


def set_no_pidfd(on: bool) -> None:
    """Start children and the guardian without pidfds from now on (or again with them)."""
    lib.qz_set_no_pidfd(1 if on else 0)


def no_pidfd() -> bool:
    """True while children and the guardian are started without pidfds."""
    return bool(lib.qz_no_pidfd())


set_no_pidfd("no-pidfd" in fallbacks())


#: The program the guardian and the watchdog run as (``csrc/launch.h``), built next to the extension.
HELPER_PATH = os.path.join(os.path.dirname(str(_module.__file__)), "quiesce-helper")


def _open_helper() -> tuple[int, str | None]:
    """Open quiesce-helper once, for every guardian and watchdog of this process: its fd, or why not."""
    try:
        fd = os.open(HELPER_PATH, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        return -1, f"cannot open {HELPER_PATH}: {err.strerror}; reinstall quiesce"
    lib.qz_set_helper_fd(fd)
    return fd, None


#: The open helper (-1: none), and why there is none.
HELPER_FD, HELPER_PROBLEM = _open_helper()


def start_error(cls: type[QuiesceOSError], rc: int, what: str) -> QuiesceOSError:
    """The error for a guardian or watchdog that did not start (``rc`` is ``-errno``)."""
    if rc == -errno.ENOEXEC and HELPER_PROBLEM is not None:
        return cls(errno.ENOEXEC, f"{what} ({HELPER_PROBLEM})")
    return cls(-rc, what)


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds, the clock of every native timestamp."""
    return int(lib.qz_now_ns())


def freeze_error(err: int, path: str | None) -> FreezeError:
    """The exception for a FIFREEZE that failed with ``err``."""
    step = "FIFREEZE"
    if err == errno.EBUSY:
        return FrozenByOtherError(err, f"{step} (already frozen by someone else)", path)
    if err == errno.EOPNOTSUPP:
        return FreezeNotSupportedError(err, f"{step} (filesystem cannot be frozen)", path)
    if err == errno.ETIMEDOUT:
        return FreezeTimeoutError(err, f"{step} (the guardian's deadline passed while freezing)", path)
    return FreezeError(err, step, path)


def thaw_error(err: int, path: str | None) -> ThawError:
    """The exception for a FITHAW that failed with ``err``."""
    if err == errno.EINVAL:
        return NotFrozenError(err, "FITHAW (filesystem was not frozen)", path)
    return ThawError(err, "FITHAW", path)


def thaw_fd(fd: int, path: str | None = None) -> None:
    """FITHAW one open filesystem outside any session (recovery, ``--force``)."""
    rc = int(lib.qz_thaw_fd(fd))
    if rc != 0:
        raise thaw_error(-rc, path)
