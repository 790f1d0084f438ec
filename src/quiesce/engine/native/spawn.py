"""Spawning a child with a pidfd and supervising it to a deadline, in native code; the run's watchdog."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.engine.native.core import ffi, lib, start_error
from quiesce.errors import QuiesceOSError


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
    req, keep = spawn_request(argv, env, path, script_fd, cgroup_fd, stdin_fd, stdout_fd, stderr_fd)
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
        self._out, self._err, self._req = wait_request(
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


#: The signal wake-up pipe a supervised wait also watches when it is given none
#: (see :func:`set_interrupt_fd`); -1: none.
_interrupt_fd = -1


def set_interrupt_fd(fd: int) -> int:
    """Make every later interruptible wait also end on a byte in ``fd``; returns the previous fd.

    ``fd`` is the non-blocking read end of a ``signal.set_wakeup_fd`` pipe. A
    signal's handler may run on another thread, or arrive while the wait is
    between two system calls where no EINTR reports it; its byte in the pipe
    still ends the wait, so the caller's handler runs at once instead of when
    the child exits. -1 stops it.
    """
    global _interrupt_fd
    previous, _interrupt_fd = _interrupt_fd, fd
    return previous


def wait_request(
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
    """A ``struct qz_wait_req`` and the two ring buffers it points into: (out, err, request)."""
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
            "release_fd": release_fd if release_fd >= 0 else _interrupt_fd,
            "release_sig": release_sig,
        },
    )
    return out, err, req


def spawn_request(
    argv: Sequence[str],
    env: Sequence[str],
    path: str | None,
    script_fd: int,
    cgroup_fd: int,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
) -> tuple[Any, list[Any]]:
    """A ``struct qz_spawn_req``, and what must stay alive while it is used."""
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
            raise start_error(QuiesceOSError, pid, "starting the run's watchdog")
        self.pid = pid
        self._sock = int(sock[0])

    def disarm(self, wait_ns: int = 5_000_000_000) -> None:
        """Tell it the run ended normally and reap it (idempotent).

        One that has not exited within ``wait_ns`` (stopped, stuck) is
        SIGKILLed: the run's end never waits on its watchdog.
        """
        if self._sock >= 0:
            lib.qz_watchdog_disarm(self.pid, self._sock, wait_ns)
            self._sock = -1
