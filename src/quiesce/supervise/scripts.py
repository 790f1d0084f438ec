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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from quiesce.engine import native
from quiesce.errors import QuiesceOSError, ScriptExecutionFailed, ScriptTimeout
from quiesce.supervise import shebang
from quiesce.supervise.checked import CheckedScript, open_script
from quiesce.supervise.launch import OUTPUT_TAIL, Attempt, Launch, environment

#: ``progress(label, attempt, elapsed_ns, timeout_ns)`` while a script runs (about every
#: 100 ms); ``label`` names the step ("pre-script", "hook 10-db pre"...).
Progress = Callable[[str, int, int, int], None]
#: A wait that a stop signal may end (quiesce.runner.signals.Interrupts.interruptible).
Interruptible = Callable[[], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class ScriptPolicy:
    """How a script is run: its timeout, retries, grace and backoff."""

    timeout_s: float
    retries: int = 0
    grace_s: float = 5.0
    backoff_s: float = 0.0
    output_tail: int = OUTPUT_TAIL
    #: The run's cgroup (quiesce.supervise.cgroups.RunCgroup) to create each attempt's under.
    cgroup_parent: str | None = None

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout_s}")
        if self.retries < 0 or self.grace_s < 0 or self.backoff_s < 0:
            raise ValueError("retries, grace and backoff cannot be negative")


@dataclass(frozen=True)
class ScriptResult:
    """A script's outcome over all its attempts, with Azure's error name when it failed."""

    phase: str
    path: str
    params: tuple[str, ...]
    #: ok | failed | timeout | not-found | permission | skipped (the other script failed its check)
    status: str
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
    environ = environment(
        script.phase, policy.timeout_s, env, script=script, attempt=number, attempts=policy.retries + 1
    )
    with Launch(cgroup_name, policy.cgroup_parent) as launch:
        try:
            child = launch.spawn(argv, environ, path=path, script_fd=script.fd)
        except QuiesceOSError as err:
            return launch.failed(number, script_start_error(script, err))
        timeout_ns = int(policy.timeout_s * 1e9)
        sup = launch.supervision(
            child.start_ns + timeout_ns,
            int(policy.grace_s * 1e9),
            policy.output_tail,
            tick_ns=100_000_000 if progress is not None else 0,
        )
        with interruptible():
            while not sup.step():
                if progress is not None:
                    step = label or f"{script.phase}-script"
                    progress(step, number, native.now_ns() - child.start_ns, timeout_ns)
        return launch.finish(number, sup)


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
    are :func:`~quiesce.supervise.checked.open_script` and :func:`run_attempt`
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
