"""Running the hook directory: pre steps in name order, post steps in reverse, session hooks across.

Every executable in the hook directory (``/etc/quiesce/hooks.d`` unless the
config says otherwise) is a hook. Before the freeze they run in name order
with the argument ``pre``; after the thaw, in reverse order, with ``post``. A
hook whose ``pre`` succeeded always gets its ``post``, also when a later hook
failed; hooks after a failed one do not run. Package-manager leftovers
(``*.dpkg-*``, ``*.rpmnew``, ``*.rpmsave``, ``*.rpmorig``, ``*~``) and hidden
files are skipped; a file nobody may execute (a README, say), and anything
that is not a regular file (a subdirectory, a FIFO, a socket, a device, a
symlink to one of these) is skipped with a warning. Every hook passes the
same checks as the scripts (owner root, no group/other write, safe
directories) and runs under the same supervision.

A hook named ``*.session`` is a **session hook**: one process that lives
across the window, the pattern a database lock needs (MySQL's ``FLUSH TABLES
WITH READ LOCK``, PostgreSQL's ``pg_backup_start``: the session holding the
lock must outlive the snapshot). quiesce starts it with the argument
``session`` and waits, up to ``timeoutInSeconds``, for it to say it is ready
the systemd way: a datagram ``READY=1`` on ``$NOTIFY_SOCKET``
(``systemd-notify --ready`` works from a shell script). After the thaw it
releases it: closes its stdin, waits ``graceSeconds``, sends SIGTERM, and
after another grace kills its tree. A session hook that exits 0 (or on that
SIGTERM) was released cleanly. One that dies before its release means the
application was not held quiesced during the snapshot: the run counts it as
a failed pre step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from quiesce.errors import QuiesceError, ScriptError, ScriptExecutionFailed, ScriptTimeout
from quiesce.supervise.checked import CheckedScript
from quiesce.supervise.hookdir import Hook, HookDirectory
from quiesce.supervise.launch import Attempt
from quiesce.supervise.notify import NotifyDir
from quiesce.supervise.scripts import (
    Progress,
    ScriptPolicy,
    ScriptResult,
    ScriptRunner,
    script_start_error,
)
from quiesce.supervise.session import SessionHook

#: Real processes: the hooks' checks and attempts unless a run passes its own runner.
_RUNNER = ScriptRunner()


def _failed_check(err: ScriptError, path: str, phase: str) -> ScriptResult:
    status = "not-found" if err.kind == "not-found" else "permission"
    return ScriptResult(phase, path, (), status, (), err.azure_name, err.azure_code, str(err))


@dataclass
class HookRun:
    """The hooks of one run: what ran before the freeze, what must run after."""

    results_pre: list[ScriptResult] = field(default_factory=list)
    results_post: list[ScriptResult] = field(default_factory=list)
    started: list[tuple[Hook, CheckedScript | None, SessionHook | None]] = field(default_factory=list)
    failed: ScriptResult | None = None
    #: The run's private directory of notify sockets, once a session hook started.
    notify: NotifyDir | None = None
    #: For the run's warnings: notifications refused because they came from outside a hook.
    warnings: list[str] = field(default_factory=list)

    @property
    def pre_ok(self) -> bool:
        """Every hook's pre step succeeded (and every session hook became ready)."""
        return self.failed is None


def run_pre(
    directory: HookDirectory,
    pre: ScriptPolicy,
    *,
    env: Mapping[str, str],
    run_id: str,
    notify_dir: str,
    into: HookRun | None = None,
    runner: ScriptRunner = _RUNNER,
    progress: Progress | None = None,
) -> HookRun:
    """Run the pre steps in name order, stopping at the first failure.

    Progress is recorded in ``into`` as it goes, so that if the run is
    interrupted midway the hooks already started still get their post step.
    ``runner`` checks and runs them (and marks the waits a stop may end).
    """
    state = into if into is not None else HookRun()
    for hook in directory.hooks:
        with runner.interruptible():  # a stop that already arrived: no new hook
            pass
        try:
            checked = runner.check(hook.path, "pre")
        except ScriptError as err:
            state.failed = _failed_check(err, hook.path, "pre")
            state.results_pre.append(state.failed)
            break
        if hook.session:
            try:
                result, session = _start_session(
                    hook, checked, pre, env, run_id, state, notify_dir, runner, progress
                )
            except BaseException:
                checked.close()
                raise
            state.results_pre.append(result)
            if session is None:
                checked.close()
                state.failed = result
                break
            state.started.append((hook, checked, session))
            continue
        try:
            result = runner.run(
                checked,
                ["pre"],
                pre,
                env=env,
                run_id=f"{run_id}-{hook.name}",
                progress=progress,
                label=f"hook {hook.name} pre",
            )
        except BaseException:
            checked.close()
            raise
        state.results_pre.append(result)
        if not result.ok:
            checked.close()
            state.failed = result
            break
        state.started.append((hook, checked, None))
    return state


def _start_session(
    hook: Hook,
    checked: CheckedScript,
    policy: ScriptPolicy,
    env: Mapping[str, str],
    run_id: str,
    state: HookRun,
    notify_dir: str,
    runner: ScriptRunner,
    progress: Progress | None = None,
) -> tuple[ScriptResult, SessionHook | None]:
    started = time.monotonic_ns()
    try:
        if state.notify is None:
            state.notify = NotifyDir(notify_dir, run_id)
        session = SessionHook(hook, checked, policy, env, run_id, state.notify)
    except (OSError, QuiesceError) as start_err:
        why = script_start_error(checked, start_err) if isinstance(start_err, OSError) else str(start_err)
        error = ScriptExecutionFailed(f"session hook {hook.path}: {why}", "pre")
        return ScriptResult(
            "pre", hook.path, ("session",), "failed", (), error.azure_name, error.azure_code, str(error)
        ), None
    try:
        with runner.interruptible():
            ready = session.wait_ready(progress)
    except BaseException:
        # Stopped while waiting for READY=1: the hook goes with the wait.
        _close_session(state, hook, session)
        raise
    if ready:
        return ScriptResult("pre", hook.path, ("session",), "ok", ()), session
    exited = not session.alive()
    _close_session(state, hook, session)
    waited = (time.monotonic_ns() - started) / 1e9
    failure: ScriptError
    if exited:
        failure = ScriptExecutionFailed(
            f"session hook {hook.path} exited before it was ready (no READY=1 on $NOTIFY_SOCKET)", "pre"
        )
        status = "failed"
    else:
        failure = ScriptTimeout(f"session hook {hook.path} not ready after {waited:.1f} s; killed", "pre")
        status = "timeout"
    return ScriptResult(
        "pre", hook.path, ("session",), status, (), failure.azure_name, failure.azure_code, str(failure)
    ), None


def check_sessions(state: HookRun) -> str | None:
    """Name a session hook that died while it should hold the application, if any."""
    for hook, _, session in state.started:
        if session is not None and not session.alive():
            return hook.path
    return None


def run_post(
    state: HookRun,
    post: ScriptPolicy,
    *,
    env: Mapping[str, str],
    run_id: str,
    runner: ScriptRunner = _RUNNER,
    progress: Progress | None = None,
) -> None:
    """Run the post steps (and release session hooks) in reverse order of the pre steps.

    Every started hook gets its post step: one that cannot be run (an
    error of quiesce's own) is recorded as that hook's failure.
    """
    for hook, checked, session in reversed(state.started):
        try:
            if session is not None:
                attempt = session.release()
                result = _session_result(hook, attempt)
            else:
                assert checked is not None
                result = runner.run(
                    checked,
                    ["post"],
                    post,
                    env=env,
                    run_id=f"{run_id}-{hook.name}",
                    phase="post",
                    progress=progress,
                    label=f"hook {hook.name} post",
                )
        except Exception as err:
            failure = ScriptExecutionFailed(f"hook {hook.path} post step could not run: {err!r}", "post")
            result = ScriptResult(
                "post",
                hook.path,
                ("post",),
                "failed",
                (),
                failure.azure_name,
                failure.azure_code,
                str(failure),
            )
        finally:
            if session is not None:
                _close_session(state, hook, session)
            if checked is not None:
                checked.close()
        state.results_post.append(result)
    state.started.clear()
    _close_notify(state)


def _close_session(state: HookRun, hook: Hook, session: SessionHook) -> None:
    session.close()
    refused = session.notify.refusals()
    if refused is not None:
        state.warnings.append(f"session hook {hook.path}: {refused}")


def _close_notify(state: HookRun) -> None:
    if state.notify is not None:
        state.notify.close()
        state.notify = None


def _session_result(hook: Hook, attempt: Attempt) -> ScriptResult:
    if attempt.outcome == "ok":
        return ScriptResult("post", hook.path, ("session",), "ok", (attempt,))
    if attempt.outcome == "died-early":
        why = f"session hook {hook.path} died before its release (the application was not held)"
    else:
        how = (
            f"exit status {attempt.exit_code}"
            if attempt.exit_code is not None
            else f"signal {attempt.signal}"
        )
        why = f"session hook {hook.path} failed at its release: {how}"
    err = ScriptExecutionFailed(why, "post")
    return ScriptResult(
        "post", hook.path, ("session",), "failed", (attempt,), err.azure_name, err.azure_code, why
    )


def close_all(state: HookRun) -> None:
    """Kill any session hook still running (error paths) and close every checked fd."""
    for hook, checked, session in state.started:
        if session is not None:
            _close_session(state, hook, session)
        if checked is not None:
            checked.close()
    state.started.clear()
    _close_notify(state)
