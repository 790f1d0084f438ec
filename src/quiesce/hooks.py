"""The hook directory: more pre/post steps than Azure's single pair, and session hooks.

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

import contextlib
import fnmatch
import os
import select
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from quiesce import native
from quiesce.cgroups import ScriptCgroup
from quiesce.errors import QuiesceError, QuiesceOSError, ScriptError, ScriptExecutionFailed, ScriptTimeout
from quiesce.notify import NotifyDir, in_cgroup, in_session
from quiesce.permissions import (
    CheckedScript,
    UnsafeDirectoryError,
    check_directory,
)
from quiesce.procs import cgroup_of
from quiesce.scripts import (
    KILL_WAIT_S,
    Attempt,
    Progress,
    ScriptPolicy,
    ScriptResult,
    ScriptRunner,
    _attempt_from,
    _kill_leftovers,
    script_argv,
    script_environment,
    script_start_error,
)

DEFAULT_HOOK_DIR = "/etc/quiesce/hooks.d"
#: Files in the hook directory that are never hooks.
SKIP_PATTERNS = ("*.dpkg-*", "*.rpmnew", "*.rpmsave", "*.rpmorig", "*~", ".*")
SESSION_SUFFIX = ".session"
#: Real processes: the hooks' checks and attempts unless a run passes its own runner.
_RUNNER = ScriptRunner()
#: How often a waiting session hook's progress is reported (the caller paces the lines).
_PROGRESS_TICK_NS = 100_000_000


@dataclass(frozen=True)
class Hook:
    """One entry of the hook directory."""

    name: str
    path: str
    session: bool


@dataclass
class HookDirectory:
    """The hooks found in a directory, in name order, and what was skipped."""

    path: str
    hooks: list[Hook] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def discover(directory: str) -> HookDirectory:
    """List the hooks of ``directory``; a missing directory has none.

    An unsafe directory (writable by someone but root) is an error: none of
    its hooks may run.
    """
    found = HookDirectory(directory)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    except OSError as err:
        found.error = f"hook directory {directory}: {err.strerror}"
        return found
    try:
        # The directory itself too: whoever can write it can plant hooks in it.
        check_directory(os.path.abspath(directory))
    except UnsafeDirectoryError as err:
        found.error = f"hook directory {directory} is unsafe: {err}"
        return found
    for name in names:
        if any(fnmatch.fnmatch(name, p) for p in SKIP_PATTERNS):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        skip = _not_a_hook(path, st)
        if skip is not None:
            found.warnings.append(f"hook directory: {path} {skip}, skipped")
            continue
        found.hooks.append(Hook(name, path, name.endswith(SESSION_SUFFIX)))
    return found


def _not_a_hook(path: str, st: os.stat_result) -> str | None:
    """Why the entry at ``path`` is not a hook (skipped with a warning), or None.

    A subdirectory, FIFO, socket or device is not a program; a symlink to
    one (or a dangling symlink) neither. A symlink to a regular file is
    kept: it is meant as a hook, and the script checks refuse it by name.
    """
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            return "is a dangling symlink"
        if stat.S_ISREG(target.st_mode):
            return None
        return f"is a symlink to {_kind(target.st_mode)}, not a program"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a program"
    if not st.st_mode & 0o111:
        return "is not executable"
    return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _failed_check(err: ScriptError, path: str, phase: str) -> ScriptResult:
    status = "not-found" if err.kind == "not-found" else "permission"
    return ScriptResult(phase, path, (), status, (), err.azure_name, err.azure_code, str(err))


# -- session hooks ----------------------------------------------------------------


class SessionHook:
    """A started session hook: alive across the window until :meth:`release`."""

    def __init__(
        self,
        hook: Hook,
        checked: CheckedScript,
        policy: ScriptPolicy,
        env: Mapping[str, str],
        run_id: str,
        notify_dir: NotifyDir,
    ) -> None:
        self.hook = hook
        self.checked = checked
        self.policy = policy
        self.ready_ns: int | None = None
        self.released_ns: int | None = None
        self._stack = contextlib.ExitStack()
        self.cgroup = ScriptCgroup.create(f"{run_id}-session-{hook.name}", parent=policy.cgroup_parent)
        self.isolation = "cgroup" if self.cgroup is not None else "process-group"
        if self.cgroup is not None:
            self._stack.callback(self.cgroup.close)
        try:
            self.notify = notify_dir.socket()
        except BaseException:
            self._stack.close()
            raise
        self._stack.callback(self.notify.close)
        self.notify_path = self.notify.path
        environ = script_environment(
            checked, 1, 1, policy.timeout_s, {**env, "NOTIFY_SOCKET": self.notify_path}
        )
        path, argv = script_argv(checked, ["session"])
        in_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
        self.out_r, out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (self.out_r, self.err_r):
            self._stack.callback(os.close, fd)
        try:
            self.child = native.spawn(
                argv,
                environ,
                path=path,
                script_fd=checked.fd,
                cgroup_fd=self.cgroup.fd if self.cgroup is not None else -1,
                stdin_fd=in_r,
                stdout_fd=out_w,
                stderr_fd=err_w,
            )
        except QuiesceOSError:
            os.close(self.stdin_w)
            self._stack.close()
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self._stack.callback(self.child.close)
        # Only the hook's own processes may say READY=1: its cgroup, or its session.
        if self.cgroup is not None:
            self.notify.check = in_cgroup(cgroup_of(self.child.pid) or self.cgroup.relative_path)
        else:
            self.notify.check = in_session(self.child.pid)
        os.set_blocking(self.out_r, False)
        os.set_blocking(self.err_r, False)
        self._early: list[bytes] = [b"", b""]

    def _drain_early(self) -> None:
        # Output before readiness; kept small, it is reported with the rest.
        for i, fd in enumerate((self.out_r, self.err_r)):
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 65536):
                    self._early[i] = (self._early[i] + chunk)[-self.policy.output_tail :]

    def _receive(self) -> list[str]:
        """One notify datagram's assignments, if its sender is the hook (see quiesce.notify)."""
        return self.notify.receive()

    def _drain_notify(self, wait_s: float = 0.0) -> None:
        end = time.monotonic() + wait_s
        while True:
            left = max(0.0, end - time.monotonic())
            if not select.select([self.notify], [], [], left)[0]:
                return
            if "BARRIER=1" in self._receive():
                return

    def wait_ready(self, progress: Progress | None = None) -> bool:
        """Wait for ``READY=1`` up to the timeout; False if it exited or timed out first."""
        timeout_ns = int(self.policy.timeout_s * 1e9)
        deadline = self.child.start_ns + timeout_ns
        watch = [self.notify.fileno(), self.child.pidfd, self.out_r, self.err_r]
        while True:
            now = native.now_ns()
            left = deadline - now
            if left <= 0:
                return False
            if progress is not None:
                progress(
                    f"session hook {self.hook.name}: waiting for READY",
                    1,
                    now - self.child.start_ns,
                    timeout_ns,
                )
                left = min(left, _PROGRESS_TICK_NS)
            ready, _, _ = select.select(watch, [], [], left / 1e9)
            self._drain_early()
            if self.notify.fileno() in ready and "READY=1" in self._receive():
                self.ready_ns = native.now_ns()
                # Answer systemd-notify's barrier, which follows at once.
                self._drain_notify(0.1)
                return True
            if self.child.pidfd in ready:
                return False

    def alive(self) -> bool:
        """True while the hook process has not exited."""
        return not select.select([self.child.pidfd], [], [], 0)[0]

    def release(self) -> Attempt:
        """Close its stdin, SIGTERM after the grace, kill the tree after another; collect it."""
        self._drain_notify()
        died_early = not self.alive()
        self.released_ns = native.now_ns()
        os.close(self.stdin_w)
        grace_ns = int(self.policy.grace_s * 1e9)
        sup = native.Supervision(
            self.child,
            deadline_ns=self.released_ns + grace_ns,
            grace_ns=grace_ns,
            kill_wait_ns=int(KILL_WAIT_S * 1e9),
            cgroup_fd=self.cgroup.fd if self.cgroup is not None else -1,
            out_fd=self.out_r,
            err_fd=self.err_r,
            out_cap=self.policy.output_tail,
            err_cap=self.policy.output_tail,
        )
        while not sup.step():
            pass
        leftovers = _kill_leftovers(self.child, self.cgroup)
        attempt = _attempt_from(1, self.child, sup, leftovers, self.isolation)
        early_out, early_err = (b.decode(errors="replace") for b in self._early)
        if died_early:
            outcome = "died-early"
        elif attempt.killed or attempt.outcome == "unkillable":
            outcome = "timeout"  # it ignored both its stdin closing and SIGTERM
        elif attempt.exit_code == 0 or (attempt.timed_out and attempt.signal == "SIGTERM"):
            outcome = "ok"  # ended on its own, or by the SIGTERM of its release, as asked
        else:
            outcome = "failed"
        tail = self.policy.output_tail
        return replace(
            attempt,
            outcome=outcome,
            stdout=(early_out + attempt.stdout)[-tail:],
            stderr=(early_err + attempt.stderr)[-tail:],
        )

    def close(self) -> None:
        """Kill it if still running and free everything (idempotent)."""
        if self.alive():
            with contextlib.suppress(QuiesceOSError):
                self.child.kill_tree(self.cgroup.fd if self.cgroup is not None else -1)
            with contextlib.suppress(OSError):
                select.select([self.child.pidfd], [], [], KILL_WAIT_S)
                os.waitid(os.P_PIDFD, self.child.pidfd, os.WEXITED)
        with contextlib.suppress(OSError):
            os.close(self.stdin_w)
        self._stack.close()


# -- running the directory ----------------------------------------------------------


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
