"""The only module that touches ``quiesce._native``.

It wraps the C session in :class:`Session`, turns every ``-errno`` return into
an exception right after the call, and hands out plain data. Untyped cffi
values never leave this module.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from quiesce._native import ffi, lib
from quiesce.errors import (
    FreezeError,
    FreezeNotSupportedError,
    FreezeTimeoutError,
    FrozenByOtherError,
    GuardianError,
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
MAX_FILESYSTEMS = 4096


#: ``QUIESCE_FALLBACK=no-pidfd`` runs without pidfds, as on kernels before
#: 5.3 (children and the guardian watched by pid), so the tests can cover
#: that path on a kernel that has them.
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


@dataclass(frozen=True)
class FsRecord:
    """What the native layer recorded for one filesystem (times in CLOCK_MONOTONIC ns)."""

    index: int
    state: str
    flush_errno: int
    flush_start_ns: int
    flush_end_ns: int
    freeze_errno: int
    freeze_start_ns: int
    freeze_end_ns: int
    thaw_errno: int
    thaw_start_ns: int
    thaw_end_ns: int


@dataclass(frozen=True)
class GuardianRecord:
    """What the guardian did: ``reason`` is None when it never had to act."""

    reason: str | None
    fired_ns: int
    deadline_ns: int
    exit_status: int | None


class Session:
    """One freeze of a fixed, ordered set of open filesystems.

    The fds stay owned by the caller and must stay open until :meth:`close`.
    ``labels`` (mount points) name the filesystems in exceptions.
    """

    def __init__(self, fds: Sequence[int], labels: Sequence[str]) -> None:
        if len(fds) != len(labels):
            raise ValueError("one label per fd")
        if not 0 < len(fds) <= MAX_FILESYSTEMS:
            raise ValueError(f"between 1 and {MAX_FILESYSTEMS} filesystems, not {len(fds)}")
        self._labels = tuple(labels)
        raw = lib.qz_session_new(ffi.new("int[]", list(fds)), len(fds))
        if raw == ffi.NULL:
            err = ffi.errno
            raise QuiesceOSError(err, "allocating the shared freeze session")
        self._s = raw

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Free the shared mapping. The guardian must have been disarmed."""
        if self._s is not None:
            lib.qz_session_free(self._s)
            self._s = None

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_s", None) is not None:
            warnings.warn("quiesce Session was not closed", ResourceWarning, stacklevel=1)
            self.close()

    def _raw(self) -> Any:
        if self._s is None:
            raise ValueError("session is closed")
        return self._s

    # -- the steps ----------------------------------------------------------

    def preflush(self) -> int:
        """``syncfs()`` every filesystem in parallel; returns the first errno or 0.

        A failed flush is not fatal: FIFREEZE flushes again inside the window.
        """
        return -int(lib.qz_preflush(self._raw()))

    def arm(
        self,
        timeout_ns: int,
        step_timeout_ns: int = 0,
        *,
        report_fd: int = -1,
        keep_fd: int = -1,
        proof_fd: int = -1,
        ledger_dirfd: int = -1,
        ledger_name: str | None = None,
    ) -> int:
        """Fork the guardian; returns its pid.

        ``timeout_ns`` bounds the window from the first FIFREEZE,
        ``step_timeout_ns`` (0 = none) each FIFREEZE call. The guardian writes
        one line per action to ``report_fd`` and keeps ``keep_fd`` (the lock)
        and ``proof_fd`` (what proves it belongs to this freeze) open while it
        lives. When it thaws after the orchestrator died it removes
        ``ledger_name`` from the directory ``ledger_dirfd`` (never a path).
        """
        if timeout_ns <= 0:
            raise ValueError("the guardian needs a positive timeout")
        if ledger_name is not None and (ledger_dirfd < 0 or "/" in ledger_name):
            raise ValueError("the ledger is a plain name in an open directory")
        name = ffi.NULL if ledger_name is None else ledger_name.encode()
        rc = int(
            lib.qz_guardian_arm(
                self._raw(), timeout_ns, step_timeout_ns, report_fd, keep_fd, proof_fd, ledger_dirfd, name
            )
        )
        if rc != 0:
            raise GuardianError(-rc, "arming the guardian")
        return int(self._raw().guardian_pid)

    def set_parallel(self, groups: Sequence[int]) -> None:
        """Freeze neighbours with the same group number at once (one thread each)."""
        s = self._raw()
        if len(groups) != int(s.n):
            raise ValueError("one group per filesystem")
        for i, g in enumerate(groups):
            s.fs[i].group = g
        s.parallel = 1

    def restore_on_orphan(self, fd: int, value: bytes) -> None:
        """Before :meth:`arm`: if this process dies, the guardian writes ``value`` to ``fd``."""
        rc = int(lib.qz_guardian_restore_on_orphan(self._raw(), fd, value, len(value)))
        if rc != 0:
            raise GuardianError(-rc, "setting the guardian's restore action")

    def freeze(self) -> None:
        """FIFREEZE every filesystem in order; on failure the frozen ones are thawed."""
        rc = int(lib.qz_freeze(self._raw()))
        if rc != 0:
            raise self._freeze_failure(-rc)

    def thaw(self) -> None:
        """FITHAW, in reverse order, everything this session still holds."""
        rc = int(lib.qz_thaw(self._raw()))
        if rc != 0:
            raise self._thaw_failure(-rc)

    def cycle(self) -> None:
        """Freeze then thaw at once, in one native call: nothing in between."""
        rc = int(lib.qz_cycle(self._raw()))
        if rc != 0:
            if self.failed_index is not None:
                raise self._freeze_failure(-rc)
            raise self._thaw_failure(-rc)

    def window_command(
        self,
        argv: Sequence[str],
        env: Sequence[str],
        *,
        path: str,
        cgroup_fd: int,
        stdin_fd: int,
        stdout_fd: int,
        stderr_fd: int,
        out_fd: int,
        err_fd: int,
        timeout_ns: int,
        grace_ns: int,
        kill_wait_ns: int,
        out_cap: int = 65536,
        err_cap: int = 65536,
        release_fd: int = -1,
        release_sig: int = 0,
    ) -> tuple[Child, Supervision]:
        """Freeze, run ``argv`` to ``timeout_ns``, thaw: one native call, no Python inside.

        Raises the freeze error (nothing left frozen) if freezing failed and
        the spawn error if the command could not start, after the native call
        returned. A thaw failure is not raised here, so the command's outcome
        is never lost: it is in :meth:`records` (and ``Freeze.close`` raises
        it; an external thaw, EINVAL, is reported per filesystem). ``release_fd`` is
        a non-blocking signal wake-up pipe (``signal.set_wakeup_fd``): a
        ``release_sig`` byte on it ends the window at once, the command still
        running (``result().released``); the caller kills it.
        """
        req, keep = _spawn_request(argv, env, path, -1, cgroup_fd, stdin_fd, stdout_fd, stderr_fd)
        bufs = _wait_request(
            0, grace_ns, kill_wait_ns, 0, cgroup_fd, out_fd, err_fd, out_cap, err_cap, release_fd, release_sig
        )
        res = ffi.new("struct qz_window_res *")
        lib.qz_window_command(self._raw(), req, bufs[2], timeout_ns, res)
        del keep
        if res.freeze_rc != 0:
            raise self._freeze_failure(-int(res.freeze_rc))
        if res.spawn_rc != 0:
            raise QuiesceOSError(-int(res.spawn_rc), "starting the snapshot command", path)
        child = Child(ffi.addressof(res, "child"), owner=res)
        # A failed wait (wait_rc) leaves the command unfinished: the caller kills it.
        return child, Supervision._adopt(child, bufs, ffi.addressof(res, "wait"))

    def disarm(self, wait_ns: int = 5_000_000_000) -> None:
        """Release the guardian and reap it (it thaws nothing once told the window ended)."""
        rc = int(lib.qz_guardian_disarm(self._raw(), wait_ns))
        if rc != 0:
            raise GuardianError(-rc, "disarming the guardian")

    # -- results ----------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of filesystems in the session."""
        return int(self._raw().n)

    @property
    def failed_index(self) -> int | None:
        """Index of the FIFREEZE that failed (or was overtaken by the guardian)."""
        i = int(self._raw().failed_index)
        return None if i < 0 else i

    @property
    def guardian_pid(self) -> int | None:
        """The armed guardian's pid, None once reaped or never armed."""
        pid = int(self._raw().guardian_pid)
        return None if pid <= 0 else pid

    def records(self) -> list[FsRecord]:
        """The per-filesystem record, in freeze order."""
        s = self._raw()
        out = []
        for i in range(int(s.n)):
            fs = s.fs[i]
            out.append(
                FsRecord(
                    index=i,
                    state=STATE_NAMES.get(int(lib.qz_fs_state(s, i)), "unknown"),
                    flush_errno=int(fs.flush_errno),
                    flush_start_ns=int(fs.flush_start_ns),
                    flush_end_ns=int(fs.flush_end_ns),
                    freeze_errno=int(fs.freeze_errno),
                    freeze_start_ns=int(fs.freeze_start_ns),
                    freeze_end_ns=int(fs.freeze_end_ns),
                    thaw_errno=int(fs.thaw_errno),
                    thaw_start_ns=int(fs.thaw_start_ns),
                    thaw_end_ns=int(fs.thaw_end_ns),
                )
            )
        return out

    def guardian(self) -> GuardianRecord:
        """What the guardian did."""
        s = self._raw()
        status = int(s.guardian_status)
        return GuardianRecord(
            reason=GUARD_REASONS.get(int(s.guard_reason), "unknown"),
            fired_ns=int(s.guard_fired_ns),
            deadline_ns=int(s.deadline_ns),
            exit_status=None if status < 0 else status,
        )

    def _freeze_failure(self, err: int) -> FreezeError:
        i = self.failed_index
        label = None if i is None else self._labels[i]
        if err == errno.ETIMEDOUT:
            reason = self.guardian().reason
            what = {
                "blocked-freeze": "blocked past its own deadline; the guardian thawed the rest",
                "deadline": "the window deadline passed while freezing; the guardian thawed",
            }.get(reason or "", "overtaken by the guardian")
            return FreezeTimeoutError(err, f"FIFREEZE ({what})", label)
        if i is not None:
            err = int(self._raw().fs[i].freeze_errno) or err
        return freeze_error(err, label)

    def _thaw_failure(self, err: int) -> ThawError:
        for rec in reversed(self.records()):
            if rec.thaw_errno == err:
                return thaw_error(err, self._labels[rec.index])
        return thaw_error(err, None)


# -- spawning and supervising scripts ---------------------------------------

#: Where a checked script's fd sits in the child (``/dev/fd/3``).
SCRIPT_FD = int(lib.QZ_SCRIPT_FD)


@dataclass(frozen=True)
class WaitResult:
    """How a supervised child ended. Times are CLOCK_MONOTONIC ns (0: did not happen)."""

    finished: bool
    unkillable: bool
    exited: bool
    exit_code: int | None
    term_signal: int | None
    timed_out: bool
    killed: bool
    exit_ns: int
    term_ns: int
    kill_ns: int
    utime_us: int
    stime_us: int
    maxrss_kb: int
    stdout_bytes: int
    stderr_bytes: int
    #: The wait was ended early by its release signal, the child still running.
    released: bool = False


def _cstrings(items: Sequence[str]) -> tuple[Any, list[Any]]:
    keep = [ffi.new("char[]", os.fsencode(s)) for s in items]
    return ffi.new("char *[]", [*keep, ffi.NULL]), keep


class Child:
    """A process started by :func:`spawn`, with a pidfd that can never signal a reused pid."""

    def __init__(self, raw: Any, owner: Any = None) -> None:
        self._c = raw
        self._owner = owner  # keeps the memory `raw` points into alive
        self.pid = int(raw.pid)
        self.start_ns = int(raw.start_ns)
        self.in_cgroup = bool(raw.in_cgroup)

    @property
    def pidfd(self) -> int:
        """The pidfd (-1 once closed, or on a kernel without pidfds)."""
        return int(self._c.pidfd)

    def kill_tree(self, cgroup_fd: int = -1) -> None:
        """SIGKILL every process of the child: its cgroup, or else its process group."""
        rc = int(lib.qz_kill_tree(self._c, cgroup_fd))
        if rc != 0:
            raise QuiesceOSError(-rc, "killing the script's processes")

    def close(self) -> None:
        """Close the pidfd (after the child was reaped)."""
        if self._c.pidfd >= 0:
            os.close(int(self._c.pidfd))
            self._c.pidfd = -1


def spawn(
    argv: Sequence[str],
    env: Sequence[str],
    *,
    path: str | None,
    script_fd: int = -1,
    cgroup_fd: int = -1,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
) -> Child:
    """Start ``argv`` in a new session with a pidfd.

    ``path`` is executed by name; with ``path=None`` the checked ``script_fd``
    itself is executed (``execveat(AT_EMPTY_PATH)``). ``script_fd`` is placed
    at fd 3 in the child either way, so an interpreter can read
    ``/dev/fd/3``. ``env`` is the whole environment, as ``KEY=value``.
    """
    req, keep = _spawn_request(argv, env, path, script_fd, cgroup_fd, stdin_fd, stdout_fd, stderr_fd)
    out = ffi.new("struct qz_child *")
    rc = int(lib.qz_spawn(req, out))
    del keep
    if rc != 0:
        raise QuiesceOSError(-rc, "starting the script", argv[0] if path is None else path)
    return Child(out)


class Supervision:
    """Waits for one child with its output pipes, to a deadline, in native code.

    :meth:`step` returns False on a progress tick (call it again) and True once
    the child was reaped or proved unkillable. The last ``out_cap``/``err_cap``
    bytes of each stream are kept.
    """

    def __init__(
        self,
        child: Child,
        *,
        deadline_ns: int,
        grace_ns: int,
        kill_wait_ns: int,
        tick_ns: int = 0,
        cgroup_fd: int = -1,
        out_fd: int = -1,
        err_fd: int = -1,
        out_cap: int = 65536,
        err_cap: int = 65536,
    ) -> None:
        self._child = child
        self._out, self._err, self._req = _wait_request(
            deadline_ns, grace_ns, kill_wait_ns, tick_ns, cgroup_fd, out_fd, err_fd, out_cap, err_cap
        )
        self._res = ffi.new("struct qz_wait_res *")
        lib.qz_wait_init(self._req, self._res)

    @classmethod
    def _adopt(cls, child: Child, bufs: tuple[Any, Any, Any], res: Any) -> Supervision:
        """Wrap a supervision the native window already ran."""
        self = cls.__new__(cls)
        self._child = child
        self._out, self._err, self._req = bufs
        self._res = res
        return self

    def step(self) -> bool:
        """Wait until the child ends or the next progress tick; True when it ended."""
        rc = int(lib.qz_supervise(self._child._c, self._req, self._res))
        if rc != 0:
            raise QuiesceOSError(-rc, "supervising the script")
        return bool(int(self._res.outcome) != int(lib.QZ_RUNNING))

    def result(self) -> WaitResult:
        """The outcome so far."""
        r = self._res
        exited = bool(r.exited)
        finished = int(r.outcome) == lib.QZ_EXITED
        return WaitResult(
            finished=finished,
            unkillable=int(r.outcome) == lib.QZ_UNKILLABLE,
            exited=finished and exited,
            exit_code=int(r.exit_code) if finished and exited else None,
            term_signal=int(r.term_signal) if finished and not exited else None,
            timed_out=bool(r.timed_out),
            killed=bool(r.killed),
            exit_ns=int(r.exit_ns),
            term_ns=int(r.term_ns),
            kill_ns=int(r.kill_ns),
            utime_us=int(r.utime_us),
            stime_us=int(r.stime_us),
            maxrss_kb=int(r.maxrss_kb),
            stdout_bytes=int(r.out_total),
            stderr_bytes=int(r.err_total),
            released=bool(r.released),
        )

    def tails(self) -> tuple[bytes, bytes]:
        """The kept tail of stdout and of stderr, oldest byte first."""
        return (
            _ring_tail(self._out, int(self._req.out_cap), int(self._res.out_total)),
            _ring_tail(self._err, int(self._req.err_cap), int(self._res.err_total)),
        )


def _wait_request(
    deadline_ns: int,
    grace_ns: int,
    kill_wait_ns: int,
    tick_ns: int,
    cgroup_fd: int,
    out_fd: int,
    err_fd: int,
    out_cap: int,
    err_cap: int,
    release_fd: int = -1,
    release_sig: int = 0,
) -> tuple[Any, Any, Any]:
    out = ffi.new("char[]", max(out_cap, 1))
    err = ffi.new("char[]", max(err_cap, 1))
    req = ffi.new(
        "struct qz_wait_req *",
        {
            "deadline_ns": deadline_ns,
            "grace_ns": grace_ns,
            "kill_wait_ns": kill_wait_ns,
            "tick_ns": tick_ns,
            "cgroup_fd": cgroup_fd,
            "out_fd": out_fd,
            "err_fd": err_fd,
            "out_buf": out,
            "out_cap": out_cap,
            "err_buf": err,
            "err_cap": err_cap,
            "interruptible": 1,
            "release_fd": release_fd,
            "release_sig": release_sig,
        },
    )
    return out, err, req


def _spawn_request(
    argv: Sequence[str],
    env: Sequence[str],
    path: str | None,
    script_fd: int,
    cgroup_fd: int,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
) -> tuple[Any, list[Any]]:
    c_argv, keep_argv = _cstrings(argv)
    c_env, keep_env = _cstrings(env)
    c_path = ffi.NULL if path is None else ffi.new("char[]", os.fsencode(path))
    req = ffi.new(
        "struct qz_spawn_req *",
        {
            "path": c_path,
            "argv": c_argv,
            "envp": c_env,
            "script_fd": script_fd,
            "cgroup_fd": cgroup_fd,
            "stdin_fd": stdin_fd,
            "stdout_fd": stdout_fd,
            "stderr_fd": stderr_fd,
        },
    )
    return req, [c_argv, keep_argv, c_env, keep_env, c_path]


def _ring_tail(buf: Any, cap: int, total: int) -> bytes:
    data = bytes(ffi.buffer(buf, cap))
    if total <= cap:
        return data[:total]
    pos = total % cap
    return data[pos:] + data[:pos]


class Watchdog:
    """A detached process that writes "1" to ``kill_fd`` (a cgroup.kill) if this process dies."""

    def __init__(self, kill_fd: int) -> None:
        sock = ffi.new("int *")
        pid = int(lib.qz_watchdog_arm(kill_fd, sock))
        if pid < 0:
            raise QuiesceOSError(-pid, "starting the run's watchdog")
        self.pid = pid
        self._sock = int(sock[0])

    def disarm(self) -> None:
        """Tell it the run ended normally and reap it (idempotent)."""
        if self._sock >= 0:
            lib.qz_watchdog_disarm(self.pid, self._sock)
            self._sock = -1
