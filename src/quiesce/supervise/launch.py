"""Starting one supervised process, and what it did: the one set-up scripts, hooks and commands share.

Every process quiesce runs (a pre- or post-script attempt, a hook, a
session hook, the snapshot command) starts the same way: in its own cgroup
v2 (or, without one, its own process group, as a session leader), stdin on
``/dev/null`` (a session hook's is a pipe it is released by), stdout and
stderr on pipes whose tails are kept, and a clean environment
(:func:`environment`). :class:`Launch` holds that set-up and tears it down
in one place, killing what is left of the process first; :meth:`Launch.finish`
turns the native supervision's outcome into an :class:`Attempt`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quiesce.closeable import Closeable
from quiesce.engine import native
from quiesce.errors import QuiesceOSError
from quiesce.supervise.cgroups import ScriptCgroup
from quiesce.supervise.checked import CheckedScript
from quiesce.supervise.procs import child_exited, reap_child

#: The PATH a script gets; nothing else of the caller's environment leaks in.
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: How much of each output stream is kept (the tail).
OUTPUT_TAIL = 64 * 1024
#: How long to wait for a SIGKILLed tree before calling it unkillable
#: (a process in uninterruptible sleep dies only when its I/O completes).
KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Attempt:
    """One run of a script. Durations in ns; ``cpu_*`` in microseconds."""

    number: int
    outcome: str  # ok | failed | timeout | unkillable | spawn-failed | released
    exit_code: int | None
    signal: str | None
    duration_ns: int
    timed_out: bool
    killed: bool
    cpu_user_us: int
    cpu_system_us: int
    max_rss_kb: int
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    leftovers_killed: int
    isolation: str  # cgroup | process-group
    error: str | None = None


def environment(
    phase: str,
    timeout_s: float,
    extra: Mapping[str, str],
    *,
    script: CheckedScript | None = None,
    attempt: int = 1,
    attempts: int = 1,
) -> list[str]:
    """The whole environment of one process, as ``KEY=value`` strings.

    Documented in README: PATH, HOME, LANG, QUIESCE_PHASE and
    QUIESCE_TIMEOUT_MS for every process; for a script or hook also
    QUIESCE_SCRIPT, QUIESCE_ATTEMPT, QUIESCE_ATTEMPTS and
    QUIESCE_DEADLINE_MS (Unix time in ms when SIGTERM comes); plus ``extra``
    (QUIESCE_RUN_ID, QUIESCE_SNAPSHOT...).
    """
    env = {"PATH": SCRIPT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "QUIESCE_PHASE": phase}
    if script is not None:
        env["QUIESCE_SCRIPT"] = script.path
        env["QUIESCE_ATTEMPT"] = str(attempt)
        env["QUIESCE_ATTEMPTS"] = str(attempts)
    env["QUIESCE_TIMEOUT_MS"] = str(int(timeout_s * 1000))
    if script is not None:
        env["QUIESCE_DEADLINE_MS"] = str(int((time.time() + timeout_s) * 1000))
    env.update(extra)
    return [f"{k}={v}" for k, v in env.items()]


class Launch(Closeable):
    """One process's cgroup, stdin and output pipes; :meth:`close` (or ``with``) tears them down.

    With ``stdin_pipe`` the process reads a pipe whose write end is
    :attr:`stdin_w` (a session hook is released by its closing); otherwise
    ``/dev/null``. The read ends of the output pipes are non-blocking once
    the process started (``nonblocking``: from the start, for a native
    window that starts the process itself; the process's own ends stay
    blocking, as any stdout).
    """

    def __init__(
        self, cgroup_name: str, parent: str | None, *, stdin_pipe: bool = False, nonblocking: bool = False
    ) -> None:
        self.cgroup = ScriptCgroup.create(cgroup_name, parent=parent)
        self.isolation = "cgroup" if self.cgroup is not None else "process-group"
        self.cgroup_fd = self.cgroup.fd if self.cgroup is not None else -1
        self.child: native.Child | None = None
        self.stdin_w = -1
        self._always = contextlib.ExitStack()
        # Closed once the process has its copies: ours would keep its pipes open forever.
        self._child_ends: list[int] = []
        try:
            if self.cgroup is not None:
                self._always.callback(self.cgroup.close)
            if stdin_pipe:
                self.stdin_fd, self.stdin_w = os.pipe2(os.O_CLOEXEC)
                self._always.callback(self._close_stdin)
            else:
                self.stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self._child_ends.append(self.stdin_fd)
            self._always.callback(self._close_child_ends)
            flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
            self.out_r, self.out_w = os.pipe2(flags)
            self._child_ends.append(self.out_w)
            self._always.callback(os.close, self.out_r)
            self.err_r, self.err_w = os.pipe2(flags)
            self._child_ends.append(self.err_w)
            self._always.callback(os.close, self.err_r)
            if nonblocking:
                os.set_blocking(self.out_w, True)
                os.set_blocking(self.err_w, True)
        except BaseException:
            self._always.close()
            raise

    def spawn(
        self, argv: Sequence[str], env: Sequence[str], *, path: str | None, script_fd: int = -1
    ) -> native.Child:
        """Start the process (see :func:`quiesce.engine.native.spawn`); QuiesceOSError if it cannot start."""
        try:
            child = native.spawn(
                argv,
                env,
                path=path,
                script_fd=script_fd,
                cgroup_fd=self.cgroup_fd,
                stdin_fd=self.stdin_fd,
                stdout_fd=self.out_w,
                stderr_fd=self.err_w,
            )
        finally:
            self._close_child_ends()
        self.adopt(child)
        os.set_blocking(self.out_r, False)
        os.set_blocking(self.err_r, False)
        return child

    def adopt(self, child: native.Child) -> None:
        """Take charge of ``child`` (started here or by a native window): closed, killed if running."""
        self.child = child
        self._always.callback(child.close)
        # Ended by an exception while it runs (a signal, an error): its tree goes too.
        self._always.callback(self.kill_if_running)

    def supervision(self, deadline_ns: int, grace_ns: int, tail: int, tick_ns: int = 0) -> native.Supervision:
        """The native wait for the process, to ``deadline_ns``, keeping ``tail`` bytes of each stream."""
        assert self.child is not None
        return native.Supervision(
            self.child,
            deadline_ns=deadline_ns,
            grace_ns=grace_ns,
            kill_wait_ns=int(KILL_WAIT_S * 1e9),
            tick_ns=tick_ns,
            cgroup_fd=self.cgroup_fd,
            out_fd=self.out_r,
            err_fd=self.err_r,
            out_cap=tail,
            err_cap=tail,
        )

    def finish(self, number: int, sup: native.Supervision) -> Attempt:
        """Kill what the process left running, and say what happened (see :func:`attempt_from`)."""
        assert self.child is not None
        leftovers = kill_leftovers(self.child, self.cgroup)
        return attempt_from(number, self.child, sup, leftovers, self.isolation)

    def failed(self, number: int, message: str) -> Attempt:
        """The attempt of a process that did not start."""
        return spawn_failed(number, self.isolation, message)

    def kill_if_running(self) -> None:
        """SIGKILL the process's tree if it still runs, and reap it."""
        child = self.child
        if child is None or child_exited(child):
            return
        with contextlib.suppress(QuiesceOSError):
            child.kill_tree(self.cgroup_fd)
        reap_child(child, KILL_WAIT_S)

    def close(self) -> None:
        """Kill what is left, close every fd, remove the cgroup (idempotent)."""
        self._always.close()

    def _close_child_ends(self) -> None:
        ends, self._child_ends = self._child_ends, []
        for fd in ends:
            os.close(fd)

    def _close_stdin(self) -> None:
        fd, self.stdin_w = self.stdin_w, -1
        if fd >= 0:
            os.close(fd)

    def close_stdin(self) -> None:
        """Close the write end of a stdin pipe: the process reads EOF."""
        self._close_stdin()


def _signal_name(num: int | None) -> str | None:
    if num is None:
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _outcome(res: native.WaitResult) -> str:
    if res.released:
        return "released"
    if res.unkillable:
        return "unkillable"
    if res.timed_out:
        return "timeout"
    return "ok" if res.exit_code == 0 else "failed"


def attempt_from(
    number: int, child: native.Child, sup: native.Supervision, leftovers: int, isolation: str
) -> Attempt:
    """The :class:`Attempt` of a supervised process: its outcome, times, rusage and output tails."""
    res = sup.result()
    out, err_tail = sup.tails()
    end = res.exit_ns or native.now_ns()
    return Attempt(
        number=number,
        outcome=_outcome(res),
        exit_code=res.exit_code,
        signal=_signal_name(res.term_signal),
        duration_ns=end - child.start_ns,
        timed_out=res.timed_out,
        killed=res.killed,
        cpu_user_us=res.utime_us,
        cpu_system_us=res.stime_us,
        max_rss_kb=res.maxrss_kb,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err_tail.decode("utf-8", errors="replace"),
        stdout_bytes=res.stdout_bytes,
        stderr_bytes=res.stderr_bytes,
        stdout_truncated=res.stdout_bytes > len(out),
        stderr_truncated=res.stderr_bytes > len(err_tail),
        leftovers_killed=leftovers,
        isolation=isolation,
    )


def kill_leftovers(child: native.Child, cgroup: ScriptCgroup | None) -> int:
    """Kill what the process left running; returns how many processes that was."""
    if cgroup is not None:
        left = len(cgroup.pids())
        if left:
            cgroup.kill()
            cgroup.wait_empty(KILL_WAIT_S)
        return left
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        return 0
    return 1


def spawn_failed(number: int, isolation: str, message: str) -> Attempt:
    """The :class:`Attempt` of a process that could not start, saying why."""
    return Attempt(
        number=number,
        outcome="spawn-failed",
        exit_code=None,
        signal=None,
        duration_ns=0,
        timed_out=False,
        killed=False,
        cpu_user_us=0,
        cpu_system_us=0,
        max_rss_kb=0,
        stdout="",
        stderr="",
        stdout_bytes=0,
        stderr_bytes=0,
        stdout_truncated=False,
        stderr_truncated=False,
        leftovers_killed=0,
        isolation=isolation,
        error=message,
    )
