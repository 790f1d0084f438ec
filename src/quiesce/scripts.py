"""Running one pre- or post-script: attempts, retries, timeout, kill, output.

Each attempt is a new process started from the checked script's fd (so the
file that runs is the file that was checked), in its own session and its own
cgroup, with stdin on /dev/null and a clean environment. The native
supervisor notices its exit as soon as the kernel reports it; at the
timeout the script gets SIGTERM, after the grace period its whole tree gets
SIGKILL. What is left in its cgroup after it exits is killed too: a script
must not leave processes behind (a session hook is the way to keep one).

A failed or timed-out attempt is retried ``retries`` times, each a real new
process with its own timeout, after ``backoff_s``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from quiesce import native, shebang
from quiesce.cgroups import ScriptCgroup
from quiesce.errors import QuiesceOSError, ScriptExecutionFailed, ScriptTimeout
from quiesce.permissions import CheckedScript, open_script

#: The PATH a script gets; nothing else of the caller's environment leaks in.
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: How much of each output stream is kept (the tail).
OUTPUT_TAIL = 64 * 1024
#: How long to wait for a SIGKILLed tree before calling it unkillable
#: (a process in uninterruptible sleep dies only when its I/O completes).
KILL_WAIT_S = 5.0

#: ``progress(label, attempt, elapsed_ns, timeout_ns)`` while a script runs (about every
#: 100 ms); ``label`` names the step ("pre-script", "hook 10-db pre"...).
Progress = Callable[[str, int, int, int], None]
#: A wait that a stop signal may end (quiesce.interrupts.Interrupts.interruptible).
Interruptible = Callable[[], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class ScriptPolicy:
    """How a script is run: its timeout, retries, grace and backoff."""

    timeout_s: float
    retries: int = 0
    grace_s: float = 5.0
    backoff_s: float = 0.0
    output_tail: int = OUTPUT_TAIL
    #: The run's cgroup (quiesce.cgroups.RunCgroup) to create each attempt's under.
    cgroup_parent: str | None = None

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout_s}")
        if self.retries < 0 or self.grace_s < 0 or self.backoff_s < 0:
            raise ValueError("retries, grace and backoff cannot be negative")


@dataclass(frozen=True)
class Attempt:
    """One run of a script. Durations in ns; ``cpu_*`` in microseconds."""

    number: int
    outcome: str  # ok | failed | timeout | unkillable | spawn-failed
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


@dataclass(frozen=True)
class ScriptResult:
    """A script's outcome over all its attempts, with Azure's error name when it failed."""

    phase: str
    path: str
    params: tuple[str, ...]
    status: str  # ok | failed | timeout | not-found | permission
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    error_name: str | None = None
    error_code: int | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """The last attempt exited 0."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        d = asdict(self)
        d["ok"] = self.ok
        return d


def script_environment(
    script: CheckedScript, attempt: int, attempts: int, timeout_s: float, extra: Mapping[str, str]
) -> list[str]:
    """The whole environment of one attempt, as ``KEY=value`` strings.

    Documented in README: PATH, HOME, LANG, and QUIESCE_PHASE,
    QUIESCE_SCRIPT, QUIESCE_ATTEMPT, QUIESCE_ATTEMPTS, QUIESCE_TIMEOUT_MS,
    QUIESCE_DEADLINE_MS (Unix time in ms when SIGTERM comes), plus ``extra``.
    """
    env = {
        "PATH": SCRIPT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "QUIESCE_PHASE": script.phase,
        "QUIESCE_SCRIPT": script.path,
        "QUIESCE_ATTEMPT": str(attempt),
        "QUIESCE_ATTEMPTS": str(attempts),
        "QUIESCE_TIMEOUT_MS": str(int(timeout_s * 1000)),
        "QUIESCE_DEADLINE_MS": str(int((time.time() + timeout_s) * 1000)),
        **extra,
    }
    return [f"{k}={v}" for k, v in env.items()]


def script_argv(script: CheckedScript, params: Sequence[str]) -> tuple[str | None, list[str]]:
    """(path to exec, argv): the script's own fd if it has a shebang, else ``/bin/sh``.

    Like Azure, a script without ``#!`` runs with /bin/sh; it reads the
    checked file from /dev/fd/3, never the path again.
    """
    fd_path = f"/dev/fd/{native.SCRIPT_FD}"
    if script.has_shebang:
        return None, [script.path, *params]
    return "/bin/sh", ["/bin/sh", fd_path, *params]


def script_start_error(script: CheckedScript, err: OSError) -> str:
    """Why a checked script did not start: its ``#!`` interpreter when that is the cause, else ``err``."""
    head = b""
    if script.has_shebang and not script.closed:
        with contextlib.suppress(OSError):
            head = os.pread(script.fd, shebang.SHEBANG_BYTES, 0)
    problem = shebang.explain_exec_error(err, head, script.path)
    return str(err) if problem is None else f"did not start: {problem}"


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


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


def run_attempt(
    script: CheckedScript,
    params: Sequence[str],
    policy: ScriptPolicy,
    *,
    number: int,
    env: Mapping[str, str],
    cgroup_name: str,
    progress: Progress | None = None,
    interruptible: Interruptible = contextlib.nullcontext,
    label: str | None = None,
) -> Attempt:
    """Run the script once, to its timeout, and return what happened.

    The wait for its end is ``interruptible``: an exception raised there
    (a stop signal) kills the script's tree on the way out. ``label`` names
    the step in ``progress`` calls (default "pre-script" or "post-script").
    """
    path, argv = script_argv(script, params)
    environ = script_environment(script, number, policy.retries + 1, policy.timeout_s, env)
    cgroup = ScriptCgroup.create(cgroup_name, parent=policy.cgroup_parent)
    isolation = "cgroup" if cgroup is not None else "process-group"
    cg_fd = cgroup.fd if cgroup is not None else -1
    with contextlib.ExitStack() as always:
        if cgroup is not None:
            always.callback(cgroup.close)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        always.callback(os.close, devnull)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        always.callback(os.close, out_r)
        always.callback(os.close, err_r)
        try:
            child = native.spawn(
                argv,
                environ,
                path=path,
                script_fd=script.fd,
                cgroup_fd=cg_fd,
                stdin_fd=devnull,
                stdout_fd=out_w,
                stderr_fd=err_w,
            )
        except QuiesceOSError as err:
            return _spawn_failed(number, isolation, script_start_error(script, err))
        finally:
            # The child has its copies; ours would keep the pipes open forever.
            os.close(out_w)
            os.close(err_w)
        always.callback(child.close)
        # Interrupted (a signal, an error) while it runs: its tree goes too.
        always.callback(_kill_if_running, child, cg_fd)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        timeout_ns = int(policy.timeout_s * 1e9)
        sup = native.Supervision(
            child,
            deadline_ns=child.start_ns + timeout_ns,
            grace_ns=int(policy.grace_s * 1e9),
            kill_wait_ns=int(KILL_WAIT_S * 1e9),
            tick_ns=100_000_000 if progress is not None else 0,
            cgroup_fd=cg_fd,
            out_fd=out_r,
            err_fd=err_r,
            out_cap=policy.output_tail,
            err_cap=policy.output_tail,
        )
        with interruptible():
            while not sup.step():
                if progress is not None:
                    step = label or f"{script.phase}-script"
                    progress(step, number, native.now_ns() - child.start_ns, timeout_ns)
        leftovers = _kill_leftovers(child, cgroup)
        return _attempt_from(number, child, sup, leftovers, isolation)
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt_from(
    number: int, child: native.Child, sup: native.Supervision, leftovers: int, isolation: str
) -> Attempt:
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
        stdout=_decode(out),
        stderr=_decode(err_tail),
        stdout_bytes=res.stdout_bytes,
        stderr_bytes=res.stderr_bytes,
        stdout_truncated=res.stdout_bytes > len(out),
        stderr_truncated=res.stderr_bytes > len(err_tail),
        leftovers_killed=leftovers,
        isolation=isolation,
    )


def _kill_if_running(child: native.Child, cgroup_fd: int) -> None:
    if child.pidfd >= 0 and not select.select([child.pidfd], [], [], 0)[0]:
        with contextlib.suppress(QuiesceOSError):
            child.kill_tree(cgroup_fd)
        _reap(child)


def _kill_leftovers(child: native.Child, cgroup: ScriptCgroup | None) -> int:
    """Kill what the script left running; returns how many processes that was."""
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


def _reap(child: native.Child) -> None:
    """Reap a killed child once it can die; give up after KILL_WAIT_S."""
    if child.pidfd < 0 or not select.select([child.pidfd], [], [], KILL_WAIT_S)[0]:
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED)


def _spawn_failed(number: int, isolation: str, message: str) -> Attempt:
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


class AttemptFn(Protocol):
    """Makes one attempt of a script (:func:`run_attempt`, or a test's stand-in)."""

    def __call__(
        self,
        script: CheckedScript,
        params: Sequence[str],
        policy: ScriptPolicy,
        *,
        number: int,
        env: Mapping[str, str],
        cgroup_name: str,
        progress: Progress | None = None,
        interruptible: Interruptible = contextlib.nullcontext,
        label: str | None = None,
    ) -> Attempt: ...


@dataclass(frozen=True)
class ScriptRunner:
    """How a run checks and runs its scripts and hooks: real processes by default.

    The seam between the run's rules and the processes they start: the
    retry loop (:meth:`run`) is always this one; ``check`` and ``attempt``
    are :func:`~quiesce.permissions.open_script` and :func:`run_attempt`
    unless a test supplies stand-ins. ``interruptible`` marks the waits a
    stop signal may end; ``sleep`` is the pause between attempts.
    """

    check: Callable[[str, str], CheckedScript] = open_script
    attempt: AttemptFn = run_attempt
    interruptible: Interruptible = contextlib.nullcontext
    sleep: Callable[[float], None] = time.sleep

    def run(
        self,
        script: CheckedScript,
        params: Sequence[str],
        policy: ScriptPolicy,
        *,
        env: Mapping[str, str] | None = None,
        run_id: str = "run",
        progress: Progress | None = None,
        phase: str | None = None,
        label: str | None = None,
    ) -> ScriptResult:
        """Run a checked script with retries until an attempt exits 0 or none are left.

        ``phase`` ("pre" or "post") overrides the script's own: a hook checked
        for its pre step runs its post step as "post" (its Azure names and
        ``QUIESCE_PHASE`` say so).
        """
        phase = phase or script.phase
        if phase != script.phase:
            env = {**(env or {}), "QUIESCE_PHASE": phase}
        attempts: list[Attempt] = []
        for number in range(1, policy.retries + 2):
            with self.interruptible():  # a stop that already arrived: no new attempt
                if number > 1 and policy.backoff_s > 0:
                    self.sleep(policy.backoff_s)
            attempt = self.attempt(
                script,
                params,
                policy,
                number=number,
                env=env or {},
                cgroup_name=f"{run_id}-{phase}-{number}",
                progress=progress,
                interruptible=self.interruptible,
                label=label,
            )
            attempts.append(attempt)
            if attempt.outcome == "ok":
                break
        return _result(script, params, attempts, phase)


def run_script(
    script: CheckedScript,
    params: Sequence[str],
    policy: ScriptPolicy,
    *,
    env: Mapping[str, str] | None = None,
    run_id: str = "run",
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    label: str | None = None,
) -> ScriptResult:
    """Run a checked script with retries until an attempt exits 0 or none are left."""
    return ScriptRunner(sleep=sleep).run(
        script, params, policy, env=env, run_id=run_id, progress=progress, label=label
    )


def _result(
    script: CheckedScript, params: Sequence[str], attempts: list[Attempt], phase: str
) -> ScriptResult:
    last = attempts[-1]
    if last.outcome == "ok":
        return ScriptResult(phase, script.path, tuple(params), "ok", tuple(attempts))
    err: ScriptExecutionFailed | ScriptTimeout
    if last.outcome in ("timeout", "unkillable"):
        err = ScriptTimeout(f"{script.path} ran past its timeout and was killed", phase)
        status = "timeout"
    else:
        how = (
            f"exit status {last.exit_code}"
            if last.exit_code is not None
            else f"signal {last.signal}"
            if last.signal
            else last.error or "did not start"
        )
        err = ScriptExecutionFailed(f"{script.path} failed: {how}", phase)
        status = "failed"
    return ScriptResult(
        phase,
        script.path,
        tuple(params),
        status,
        tuple(attempts),
        err.azure_name,
        err.azure_code,
        str(err),
    )
