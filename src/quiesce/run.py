"""The Azure-compatible run: checks, pre-script, freeze, snapshot, thaw, post-script.

:func:`run` follows Azure Backup's documented rules (REFERENCE.md section
1.3) and fixes what its implementation gets wrong: retries re-run the
script, a timed-out script is killed, a bad config is an error and never a
silent downgrade, and the frozen window is bounded by the guardian.

Order and decisions:

- The config is read from the fd that was permission-checked and validated;
  a bad config runs nothing and freezes nothing.
- Both scripts are checked (owner, mode, directory chain) before anything
  runs. A script that fails its check counts as that script failing.
- The pre-script runs (with its retries). If it failed and
  ``continueBackupOnFailure`` is false, no snapshot is taken.
- Otherwise, with ``fsFreezeEnabled``, the filesystems are frozen, the
  snapshot step runs, and they are thawed. A freeze that fails leaves the
  snapshot crash-consistent when failures may continue, else the run fails.
- The post-script runs whenever the config was valid, also after a failed
  pre-script (so it can undo what the pre-script did), with the outcome in
  ``QUIESCE_SNAPSHOT`` and ``QUIESCE_PRE_STATUS``.
- :func:`classify` turns the outcomes into application-consistent,
  file-system-consistent, crash-consistent or failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from quiesce import ledger as ledger_mod
from quiesce.cgroups import RunCgroup
from quiesce.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_PLUGINHOST_PATH,
    LoadedConfig,
    PluginConfig,
    SnapshotMode,
    effective_timeout_s,
    load_pluginhost,
    parse_config,
)
from quiesce.errors import FreezeTimeoutError, QuiesceError, ScriptError, ScriptPermissionError
from quiesce.freeze import RUN_DIR, Freeze, FreezeOptions, FreezeReport
from quiesce.hold import Release
from quiesce.hooks import (
    DEFAULT_HOOK_DIR,
    HookDirectory,
    HookRun,
    check_sessions,
    close_all,
    discover,
    run_post,
    run_pre,
)
from quiesce.lock import FreezeLock
from quiesce.permissions import CheckedScript, open_script, read_config_file
from quiesce.plan import VMBACKUP_CONF, make_plan
from quiesce.scripts import Attempt, Progress, ScriptPolicy, ScriptResult, run_script, run_snapshot_command

APPLICATION = "application-consistent"
FILESYSTEM = "file-system-consistent"
CRASH = "crash-consistent"
FAILED = "failed"

#: Names and codes for freeze problems (REFERENCE.md 1.4: 121/122/123).
FREEZE_FAILED = ("FsFreezeFailed", 121)
FREEZE_TIMEOUT = ("FsFreezeTimeout", 122)
SNAPSHOT_FAILED = ("SnapshotFailed", None)
FREEZE_ABORTED = ("FreezeAborted", None)

#: The snapshot step, when quiesce is embedded: called inside the window.
SnapshotStep = Callable[[], None]


@dataclass
class Phase:
    """One line of the run's timeline; ``start_ns`` is CLOCK_MONOTONIC (0: not timed)."""

    name: str
    status: str
    duration_ns: int
    detail: str | None = None
    start_ns: int = 0


@dataclass
class RunResult:
    """Everything a run did; plain data that serialises to JSON."""

    run_id: str
    consistency: str = FAILED
    error_name: str | None = None
    error_code: int | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)
    config_source: str | None = None
    pre: ScriptResult | None = None
    post: ScriptResult | None = None
    hooks_pre: list[ScriptResult] = field(default_factory=list)
    hooks_post: list[ScriptResult] = field(default_factory=list)
    freeze: FreezeReport | None = None
    snapshot: str = "skipped"  # ok | failed | skipped
    snapshot_mode: str = "none"
    snapshot_command: Attempt | None = None
    released_by: str | None = None
    interrupted_by: str | None = None
    phases: list[Phase] = field(default_factory=list)
    duration_ns: int = 0
    #: When the run started: Unix time, and CLOCK_MONOTONIC (``time.monotonic_ns()``).
    started_unix: float = 0.0
    started_ns: int = 0

    @property
    def ok(self) -> bool:
        """An application-consistent snapshot was taken."""
        return self.consistency == APPLICATION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        d = asdict(self)
        d["ok"] = self.ok
        for key in ("pre", "post"):
            res = getattr(self, key)
            d[key] = None if res is None else res.to_dict()
        for key in ("hooks_pre", "hooks_post"):
            d[key] = [r.to_dict() for r in getattr(self, key)]
        d["freeze"] = None if self.freeze is None else self.freeze.to_dict()
        d["snapshot_command"] = None if self.snapshot_command is None else asdict(self.snapshot_command)
        return d


@dataclass(frozen=True)
class Outcomes:
    """What happened in each step, for :func:`classify`."""

    pre_ok: bool
    freeze_enabled: bool
    froze: bool  # frozen, and thawed by quiesce itself before the snapshot ended
    snapshot_taken: bool
    post_ok: bool
    continue_on_failure: bool


def classify(o: Outcomes) -> str:
    """The result class of a run, by Azure's documented rules.

    - No snapshot: failed.
    - With freeze enabled: application-consistent when the pre-script
      succeeded and the freeze held; file-system-consistent when only the
      freeze held; crash-consistent when the freeze did not.
    - With freeze disabled, a script failure fails the backup.
    - A post-script failure fails the backup unless failures may continue.
    """
    if not o.snapshot_taken:
        return FAILED
    if not o.freeze_enabled:
        return APPLICATION if o.pre_ok and o.post_ok else FAILED
    if not o.post_ok and not o.continue_on_failure:
        return FAILED
    if o.froze:
        return APPLICATION if o.pre_ok else FILESYSTEM
    return CRASH


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads its files and how it reports."""

    config_path: str = DEFAULT_CONFIG_PATH
    pluginhost_path: str | None = DEFAULT_PLUGINHOST_PATH
    vmbackup_conf: str | None = VMBACKUP_CONF
    run_dir: str = RUN_DIR
    progress: Progress | None = None
    #: ``hold`` mode: called once frozen (announce it); the run then waits
    #: for a line or EOF on stdin (if ``hold_stdin``), a signal, or the deadline.
    on_frozen: Callable[[Freeze], None] | None = None
    hold_stdin: bool = True
    #: Called after the pre steps, the pre-flush and the guardian's arming,
    #: just before the first FIFREEZE (a fleet agent's barrier). Raising
    #: from it aborts the window: nothing is frozen, the post steps run, the
    #: run is not consistent.
    before_freeze: Callable[[Freeze], None] | None = None
    #: SIGTERM/SIGINT/SIGHUP stop the run (thaw, post steps, report). Needs
    #: the main thread; the CLI sets it, an embedding tool handles its own.
    handle_signals: bool = False
    #: The run's parent cgroup for its scripts; run() sets it (quiesce.cgroups.RunCgroup).
    cgroup_parent: str | None = None


def load_checked_config(path: str) -> LoadedConfig:
    """Read the config from its permission-checked fd and validate it."""
    return parse_config(read_config_file(path), path)


def _check_script(path: str, phase: str) -> CheckedScript | ScriptResult:
    try:
        return open_script(path, phase)
    except ScriptError as err:
        status = "not-found" if err.kind == "not-found" else "permission"
        return ScriptResult(phase, path, (), status, (), err.azure_name, err.azure_code, str(err))


class _Timeline:
    def __init__(self, result: RunResult) -> None:
        self.result = result

    @contextlib.contextmanager
    def phase(self, name: str) -> Any:
        start = time.monotonic_ns()
        entry = Phase(name, "ok", 0, start_ns=start)
        try:
            yield entry
        except BaseException:
            entry.status = "error"
            raise
        finally:
            entry.duration_ns = time.monotonic_ns() - start
            self.result.phases.append(entry)


def _set_error(result: RunResult, name: str | None, code: int | None, message: str | None) -> None:
    if result.error_name is None and name is not None:
        result.error_name, result.error_code, result.message = name, code, message


def run(
    options: RunOptions | None = None,
    *,
    config: LoadedConfig | None = None,
    snapshot: SnapshotStep | None = None,
) -> RunResult:
    """Run the whole job once. Raises only for a config error or a held lock.

    ``config`` skips reading the file (an embedding tool that validated its
    own); ``snapshot`` is called inside the frozen window.
    """
    options = options or RunOptions()
    run_id = ledger_mod.new_run_id()
    result = RunResult(run_id=run_id, started_unix=time.time(), started_ns=time.monotonic_ns())
    started = result.started_ns
    loaded = config or load_checked_config(options.config_path)
    host = load_pluginhost(options.pluginhost_path) if options.pluginhost_path else None
    cfg = loaded.config
    result.config_source = loaded.source
    result.warnings.extend(loaded.warnings)
    if host is not None:
        result.warnings.extend(host.warnings)
    timeout_s = effective_timeout_s(cfg, host)

    with (
        _run_lock(options.run_dir),
        _Interrupts(options.handle_signals) as interrupts,
        RunCgroup(run_id) as run_cgroup,
    ):
        options = dataclasses.replace(options, cgroup_parent=run_cgroup.path)
        timeline = _Timeline(result)
        with timeline.phase("checks"):
            pre_checked = _check_script(cfg.pre_script, "pre")
            post_checked = _check_script(cfg.post_script, "post")
        hook_dir = discover(cfg.quiesce.hook_directory or DEFAULT_HOOK_DIR)
        result.warnings.extend(hook_dir.warnings)
        state = _State()
        try:
            try:
                _before_and_window(
                    state, timeline, result, cfg, options, snapshot, hook_dir, timeout_s, pre_checked
                )
            except RunInterrupted as stop:
                # Whatever was frozen is thawed by now (Freeze's context); the
                # post steps still run, and the run reports why it stopped.
                state.pre_ok = state.go = False
                state.froze = state.taken = False
                name = signal.Signals(stop.signum).name
                result.interrupted_by = name
                result.error_name, result.error_code = "RunInterrupted", None
                result.message = f"stopped by {name} before the snapshot was done; thawed, post steps run"
                timeline.result.phases.append(Phase("interrupted", name, 0))
            interrupts.defer()
            result.snapshot = "ok" if state.taken else ("failed" if state.go else "skipped")
            env = {
                "QUIESCE_SNAPSHOT": result.snapshot,
                "QUIESCE_PRE_STATUS": (result.pre.status if result.pre is not None else "interrupted"),
                "QUIESCE_RUN_ID": run_id,
            }
            state.post_ok = _post_steps(
                state, timeline, result, cfg, options, timeout_s, run_id, post_checked, env
            )
        finally:
            close_all(state.hooks)
            for checked in (pre_checked, post_checked):
                if isinstance(checked, CheckedScript):
                    checked.close()
    pre_ok, froze, taken, post_ok = state.pre_ok, state.froze, state.taken, state.post_ok
    if result.error_name == "RunInterrupted":
        taken = False
    result.consistency = classify(
        Outcomes(
            pre_ok=pre_ok,
            freeze_enabled=cfg.fs_freeze_enabled,
            froze=froze,
            snapshot_taken=taken,
            post_ok=post_ok,
            continue_on_failure=cfg.continue_on_failure,
        )
    )
    if result.error_name is not None and result.consistency != FAILED:
        # The backup stands; the error is a warning, as in Azure.
        result.warnings.append(f"{result.error_name}: {result.message}")
    result.duration_ns = time.monotonic_ns() - started
    return result


class RunInterrupted(BaseException):
    """SIGTERM, SIGINT or SIGHUP arrived before the snapshot was done."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Interrupts:
    """SIGTERM/SIGINT/SIGHUP stop the run at once, but only up to the post steps.

    The first signal raises :class:`RunInterrupted` where the run is (a
    frozen window is thawed on the way out). From :meth:`defer` on, signals
    are only recorded: the post steps always finish. Installed only when
    asked (the CLI), never by an embedding tool's call.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.deferred = False
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if not self.deferred:
            self.deferred = True
            raise RunInterrupted(signum)

    def defer(self) -> None:
        """From now on, record signals instead of stopping."""
        self.deferred = True

    def __enter__(self) -> _Interrupts:
        if self.enabled:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


@dataclass
class _State:
    """What the run has reached, for the post steps and the verdict."""

    pre_ok: bool = False
    go: bool = False
    froze: bool = False
    taken: bool = False
    post_ok: bool = True
    hooks: HookRun = field(default_factory=HookRun)


def _before_and_window(
    state: _State,
    timeline: _Timeline,
    result: RunResult,
    cfg: PluginConfig,
    options: RunOptions,
    snapshot: SnapshotStep | None,
    hook_dir: HookDirectory,
    timeout_s: int,
    pre_checked: CheckedScript | ScriptResult,
) -> None:
    """Pre-script, pre hooks, and the window; records progress in ``state`` as it goes."""
    run_id = result.run_id
    result.pre = _run_phase(timeline, pre_checked, cfg, timeout_s, run_id, options, {})
    state.pre_ok = result.pre.ok
    if not state.pre_ok:
        _set_error(result, result.pre.error_name, result.pre.error_code, result.pre.message)
    state.go = state.pre_ok or cfg.continue_on_failure
    if state.go and (hook_dir.hooks or hook_dir.error):
        _run_pre_hooks(timeline, result, hook_dir, cfg, timeout_s, run_id, options, state.hooks)
        state.pre_ok = state.pre_ok and state.hooks.pre_ok
        state.go = state.pre_ok or cfg.continue_on_failure
    if not state.go:
        timeline.result.phases.append(Phase("snapshot", "skipped", 0, "a pre step failed"))
        return
    state.froze, state.taken = _window(timeline, result, cfg, options, snapshot)
    dead = check_sessions(state.hooks)
    if dead is not None:
        state.pre_ok = False
        why = f"session hook {dead} died while frozen: the application was not held quiesced"
        _set_error(result, "Pre-ScriptExecutionFailed", 300, why)


def _post_steps(
    state: _State,
    timeline: _Timeline,
    result: RunResult,
    cfg: PluginConfig,
    options: RunOptions,
    timeout_s: int,
    run_id: str,
    post_checked: CheckedScript | ScriptResult,
    env: dict[str, str],
) -> bool:
    """Post hooks in reverse, then the post-script; True when all succeeded."""
    post_ok = True
    if state.hooks.started:
        with timeline.phase("hooks-post") as entry:
            run_post(
                state.hooks, _policy(cfg, timeout_s, "post", options.cgroup_parent), env=env, run_id=run_id
            )
            result.hooks_post = state.hooks.results_post
            failed = [r for r in state.hooks.results_post if not r.ok]
            if failed:
                entry.status = "failed"
                post_ok = False
                _set_error(result, failed[0].error_name, failed[0].error_code, failed[0].message)
    result.post = _run_phase(timeline, post_checked, cfg, timeout_s, run_id, options, env)
    if not result.post.ok:
        _set_error(result, result.post.error_name, result.post.error_code, result.post.message)
    return post_ok and result.post.ok


@contextlib.contextmanager
def _run_lock(run_dir: str) -> Any:
    """One run at a time: a second is refused at once (LockHeldError)."""
    lock = FreezeLock(run_dir, name="run.lock", what="run")
    try:
        yield lock
    finally:
        lock.release()


def _policy(cfg: PluginConfig, timeout_s: int, phase: str, cgroup_parent: str | None) -> ScriptPolicy:
    return ScriptPolicy(
        timeout_s=timeout_s,
        retries=cfg.pre_retries if phase == "pre" else cfg.post_retries,
        grace_s=cfg.quiesce.grace_s,
        backoff_s=cfg.quiesce.retry_backoff_s,
        cgroup_parent=cgroup_parent,
    )


def _run_pre_hooks(
    timeline: _Timeline,
    result: RunResult,
    hook_dir: HookDirectory,
    cfg: PluginConfig,
    timeout_s: int,
    run_id: str,
    options: RunOptions,
    state: HookRun,
) -> HookRun:
    with timeline.phase("hooks-pre") as entry:
        if hook_dir.error is not None:
            entry.status = "failed"
            err = ScriptPermissionError(hook_dir.error, "pre")
            _set_error(result, err.azure_name, err.azure_code, hook_dir.error)
            state.failed = ScriptResult(
                "pre", hook_dir.path, (), "permission", (), err.azure_name, err.azure_code, hook_dir.error
            )
            return state
        # The same list, filled as the hooks run: complete even if interrupted.
        result.hooks_pre = state.results_pre
        run_pre(
            hook_dir,
            _policy(cfg, timeout_s, "pre", options.cgroup_parent),
            env={"QUIESCE_RUN_ID": run_id},
            run_id=run_id,
            notify_dir=options.run_dir,
            into=state,
        )
        entry.detail = f"{len(state.results_pre)} of {len(hook_dir.hooks)} hook(s)"
        if state.failed is not None:
            entry.status = "failed"
            _set_error(result, state.failed.error_name, state.failed.error_code, state.failed.message)
    return state


def _run_phase(
    timeline: _Timeline,
    checked: CheckedScript | ScriptResult,
    cfg: PluginConfig,
    timeout_s: int,
    run_id: str,
    options: RunOptions,
    env: dict[str, str],
) -> ScriptResult:
    if isinstance(checked, ScriptResult):
        timeline.result.phases.append(Phase(f"{checked.phase}-script", checked.status, 0, checked.message))
        return checked
    phase = checked.phase
    policy = _policy(cfg, timeout_s, phase, options.cgroup_parent)
    params = cfg.pre_params if phase == "pre" else cfg.post_params
    with timeline.phase(f"{phase}-script") as entry:
        res = run_script(checked, params, policy, env=env, run_id=run_id, progress=options.progress)
        entry.status = res.status
        entry.detail = f"{len(res.attempts)} attempt(s)"
    return res


def _window(
    timeline: _Timeline,
    result: RunResult,
    cfg: PluginConfig,
    options: RunOptions,
    snapshot: SnapshotStep | None,
) -> tuple[bool, bool]:
    """Freeze (if enabled), take the snapshot, thaw. Returns (freeze held, snapshot taken)."""
    ext = cfg.quiesce
    if not cfg.fs_freeze_enabled:
        with timeline.phase("snapshot") as entry:
            return False, _take_snapshot(result, snapshot, entry)
    taken = False
    error: QuiesceError | None = None
    freeze: Freeze | None = None
    with timeline.phase("freeze-window") as entry:
        try:
            plan = make_plan(
                ext.targets,
                exclude=ext.exclude,
                exclude_fstypes=ext.exclude_fstypes,
                vmbackup_conf=options.vmbackup_conf,
            )
            opts = FreezeOptions(
                timeout_s=ext.freeze_timeout_s,
                preflush=ext.preflush,
                run_dir=options.run_dir,
                expedite_rcu=ext.expedite_rcu,
                parallel=ext.parallel_freeze,
            )
            freeze = Freeze(plan.targets, opts)
            with freeze:
                freeze.prepare()
                if _cleared_to_freeze(freeze, result, options, entry):
                    taken = _frozen_step(freeze, result, cfg, options, snapshot, entry)
        except QuiesceError as err:
            entry.status, entry.detail, error = "error", str(err), err
        if freeze is not None:
            result.freeze = freeze.report
            entry.detail = entry.detail or f"window {freeze.report.window_ns} ns"
    if error is None and freeze is not None:
        external = [t.mount_point for t in freeze.report.targets if t.state == "thawed-externally"]
        if external:
            why = f"thawed by someone else during the window: {', '.join(external)}"
            _set_error(result, *FREEZE_FAILED, why)
        if freeze.report.guardian_reason is not None:
            why = f"the guardian thawed before the snapshot ended ({freeze.report.guardian_reason})"
            _set_error(result, *FREEZE_TIMEOUT, why)
        return freeze.report.ok, taken
    name, code = FREEZE_TIMEOUT if isinstance(error, FreezeTimeoutError) else FREEZE_FAILED
    _set_error(result, name, code, str(error))
    if taken or not cfg.continue_on_failure:
        # Taken: the failure came at the thaw. Else failures may not continue.
        return False, taken
    # Failures may continue: the snapshot is taken without a freeze.
    with timeline.phase("snapshot-unfrozen") as entry:
        return False, _take_snapshot(result, snapshot, entry)


def _cleared_to_freeze(freeze: Freeze, result: RunResult, options: RunOptions, entry: Phase) -> bool:
    """Ask ``options.before_freeze``; False (nothing gets frozen) when it raised."""
    if options.before_freeze is None:
        return True
    try:
        options.before_freeze(freeze)
    except Exception as err:  # the caller's step: any failure aborts before the first FIFREEZE
        entry.status, entry.detail = "aborted", f"before the freeze: {err}"
        _set_error(result, *FREEZE_ABORTED, f"aborted before the freeze: {err}")
        return False
    return True


def _frozen_step(
    freeze: Freeze,
    result: RunResult,
    cfg: PluginConfig,
    options: RunOptions,
    snapshot: SnapshotStep | None,
    entry: Phase,
) -> bool:
    """Freeze and take the snapshot by the configured mode; True when it was taken.

    ``command`` runs freeze, command and thaw in one native call. ``hold``
    announces and waits for the release. ``none`` (or an embedding tool's
    callable) runs between freeze and thaw.
    """
    spec = cfg.quiesce.snapshot
    result.snapshot_mode = spec.mode.value if snapshot is None else "callable"
    if snapshot is None and spec.mode is SnapshotMode.COMMAND:
        mounts = "\n".join(t.mount.mount_point for t in freeze.targets)
        timeout_s = spec.timeout_s or cfg.quiesce.freeze_timeout_s
        # SIGKILL must come before the guardian's deadline, or the kill
        # would find the filesystems already thawed under the command.
        grace_s = max(0.0, min(cfg.quiesce.grace_s, cfg.quiesce.freeze_timeout_s - timeout_s))
        attempt = run_snapshot_command(
            freeze,
            spec.argv,
            timeout_s=timeout_s,
            grace_s=grace_s,
            env={"QUIESCE_TARGETS": mounts},
            run_id=result.run_id,
            cgroup_parent=options.cgroup_parent,
        )
        result.snapshot_command = attempt
        entry.detail = f"command {attempt.outcome}"
        if attempt.outcome != "ok":
            entry.status = "failed"
            how = attempt.error or f"exit {attempt.exit_code}, signal {attempt.signal}"
            _set_error(result, *SNAPSHOT_FAILED, f"snapshot command {attempt.outcome}: {how}")
        return attempt.outcome == "ok"
    if snapshot is None and spec.mode is SnapshotMode.HOLD:
        # The release's pipe and handlers are set up before the freeze, not inside the window.
        release = Release()
        try:
            freeze.freeze()
            if options.on_frozen is not None:
                options.on_frozen(freeze)
            result.released_by = release.wait(freeze.remaining_ns, options.hold_stdin)
        finally:
            release.close()
        entry.detail = f"held; released by {result.released_by}"
        # Released by the deadline: the guardian thawed first; the snapshot is not trusted.
        return result.released_by != "deadline"
    freeze.freeze()
    return _take_snapshot(result, snapshot, entry)


def _take_snapshot(result: RunResult, snapshot: SnapshotStep | None, entry: Phase) -> bool:
    if snapshot is None:
        entry.detail = "mode none: the snapshot is taken by the caller while frozen"
        return True
    try:
        snapshot()
    except Exception as err:  # the caller's step: any failure is a failed snapshot
        entry.status = "failed"
        _set_error(result, *SNAPSHOT_FAILED, f"snapshot step failed: {err!r}")
        return False
    return True
