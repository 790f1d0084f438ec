"""A run's job: the state of one run and its steps, from the checks to the post steps.

Order and decisions (Azure Backup's documented rules, REFERENCE.md 1.3):

- Both scripts are checked (owner, mode, directory chain) before anything
  runs. If either fails its check, neither script runs (as in Azure: a
  pre-script whose post-script cannot run would leave the application
  quiesced, a post-script would undo a pre-script that never ran); the
  first failed check is the run's error and counts as a failed pre step.
- The pre-script runs (with its retries), then the pre hooks. If a pre step
  failed and ``continueBackupOnFailure`` is false, no snapshot is taken.
- Otherwise the snapshot step runs (:mod:`quiesce.runner.window`): inside the
  window with ``fsFreezeEnabled``, without a freeze when it is false or when
  the freeze failed and failures may continue.
- The post steps (post hooks, then the post-script) run whenever the config
  was valid and the scripts passed their checks, whatever happened before
  them: a failed pre step, a signal, a broken output, an error of quiesce's
  own. They get the truth in ``QUIESCE_SNAPSHOT`` and ``QUIESCE_PRE_STATUS``.
  A hook's post step runs whenever its pre step started.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from quiesce.azure.config import PluginConfig, SnapshotMode
from quiesce.azure.verdict import RUN_ERROR, SNAPSHOT_FAILED, Outcomes
from quiesce.errors import ScriptError, ScriptExecutionFailed, ScriptPermissionError
from quiesce.runner.freezer import Freezer
from quiesce.runner.signals import Interrupts, RunInterrupted
from quiesce.runner.types import RunOptions, RunResult, SnapshotStep, Timeline
from quiesce.runner.window import Window
from quiesce.supervise.checked import CheckedScript
from quiesce.supervise.hookdir import DEFAULT_HOOK_DIR, HookDirectory, discover
from quiesce.supervise.hooks import HookRun, check_sessions, close_all, run_post, run_pre
from quiesce.supervise.scripts import ScriptPolicy, ScriptResult, ScriptRunner


@dataclass
class Job:
    """One run from the checks to the post steps; records the truth as it goes.

    It holds what every step needs, instead of passing it along: the
    config, the options, the result and its timeline, the seams that reach
    processes and the kernel (``runner``, ``freezer``), the signals, and the
    state so far (which stage, whether the pre steps succeeded, whether the
    freeze held, whether the snapshot was taken). :meth:`execute` runs it;
    :meth:`outcomes` is what the verdict is drawn from.
    """

    result: RunResult
    cfg: PluginConfig
    options: RunOptions
    timeout_s: int
    step: SnapshotStep | None
    runner: ScriptRunner
    freezer: Freezer
    interrupts: Interrupts
    hooks: HookRun = field(default_factory=HookRun)
    #: "pre" while the pre steps run, "window" from the snapshot step on, "post" after.
    stage: str = "pre"
    pre_ok: bool = False
    pre_status: str = "interrupted"
    go: bool = False
    froze: bool = False
    snapshot: str = "skipped"
    window_done: bool = False
    post_ok: bool = True
    #: Why the snapshot command was refused at the checks (then nothing runs), or None.
    refused: str | None = None

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.result)

    def outcomes(self) -> Outcomes:
        """What happened, for the verdict."""
        return Outcomes(
            pre_ok=self.pre_ok,
            freeze_enabled=self.cfg.fs_freeze_enabled,
            froze=self.froze,
            snapshot_taken=self.snapshot == "ok",
            post_ok=self.post_ok,
            continue_on_failure=self.cfg.continue_on_failure,
        )

    def execute(self) -> None:
        """Checks, pre steps and window, then the post steps whatever happened."""
        with self.timeline.phase("checks") as entry:
            pre_checked = self._check(self.cfg.pre_script, "pre")
            post_checked = self._check(self.cfg.post_script, "post")
            failed = [c for c in (pre_checked, post_checked) if isinstance(c, ScriptResult)]
            if failed:
                entry.status = "failed"
                self.result.set_error(failed[0].error_name, failed[0].error_code, failed[0].message)
                why = f"not run: the {failed[0].phase}-script failed its check, so neither script runs"
                pre_checked, post_checked = (_skipped(c, why) for c in (pre_checked, post_checked))
            # A snapshot command root must not run: no snapshot can be taken, so nothing runs.
            self.refused = self._check_command()
            if self.refused is not None:
                entry.status = "failed"
                self.result.set_error(*SNAPSHOT_FAILED, self.refused)
                why = "not run: the snapshot command failed its check, so nothing runs"
                pre_checked, post_checked = (_skipped(c, why) for c in (pre_checked, post_checked))
        pending: BaseException | None = None
        try:
            try:
                self._before_and_window(pre_checked)
            except RunInterrupted as stop:
                self._interrupted(stop.signum)
            except Exception as err:  # quiesce's own failure: recorded; the post steps still run
                self._crashed(err)
            except BaseException as err:  # an embedding tool's KeyboardInterrupt: post steps first
                self._crashed(err)
                pending = err
            self.interrupts.defer()
            self._late_stop()
            self.stage = "post"
            self._post_steps(post_checked)
            for signum in self.interrupts.deferred:
                name = signal.Signals(signum).name
                self.result.warnings.append(f"{name} arrived during the post steps; they finished")
        finally:
            close_all(self.hooks)
            for checked in (pre_checked, post_checked):
                if isinstance(checked, CheckedScript):
                    checked.close()
        if pending is not None:
            raise pending

    # -- before the window ----------------------------------------------------------

    def _check(self, path: str, phase: str) -> CheckedScript | ScriptResult:
        try:
            return self.runner.check(path, phase)
        except ScriptError as err:
            status = "not-found" if err.kind == "not-found" else "permission"
            return ScriptResult(phase, path, (), status, (), err.azure_name, err.azure_code, str(err))

    def _check_command(self) -> str | None:
        """Why the config's snapshot command must not run as root (None: it may, or there is none)."""
        spec = self.cfg.quiesce.snapshot
        if self.step is not None or spec.mode is not SnapshotMode.COMMAND:
            return None
        return self.freezer.check_command(spec.argv)

    def _before_and_window(self, pre_checked: CheckedScript | ScriptResult) -> None:
        cfg, result = self.cfg, self.result
        if self.refused is not None:
            result.pre = self._script(pre_checked, {})
            self.pre_status = result.pre.status
            self.timeline.note("snapshot", "skipped", self.refused)
            return
        hook_dir = discover(cfg.quiesce.hook_directory or DEFAULT_HOOK_DIR)
        result.warnings.extend(hook_dir.warnings)
        result.pre = self._script(pre_checked, {})
        self.pre_ok, self.pre_status = result.pre.ok, result.pre.status
        if not self.pre_ok:
            result.set_error(result.pre.error_name, result.pre.error_code, result.pre.message)
        self.go = self.pre_ok or cfg.continue_on_failure
        if self.go and (hook_dir.hooks or hook_dir.error):
            self.interrupts.check()
            self._pre_hooks(hook_dir)
            self.pre_ok = self.pre_ok and self.hooks.pre_ok
            self.go = self.pre_ok or cfg.continue_on_failure
        self.interrupts.check()
        self.stage = "window"
        if not self.go:
            self.timeline.note("snapshot", "skipped", "a pre step failed")
            return
        self.snapshot = "failed"  # due: only the window can make it "ok"
        window = Window(self)
        window.run()
        self.froze, self.snapshot, self.window_done = window.froze, window.snapshot, True
        dead = check_sessions(self.hooks)
        if dead is not None:
            self.pre_ok = False
            why = f"session hook {dead} died while frozen: the application was not held quiesced"
            result.set_error("Pre-ScriptExecutionFailed", 300, why)

    def _pre_hooks(self, hook_dir: HookDirectory) -> None:
        result, state = self.result, self.hooks
        with self.timeline.phase("hooks-pre") as entry:
            if hook_dir.error is not None:
                entry.status = "failed"
                err = ScriptPermissionError(hook_dir.error, "pre")
                result.set_error(err.azure_name, err.azure_code, hook_dir.error)
                state.failed = ScriptResult(
                    "pre", hook_dir.path, (), "permission", (), err.azure_name, err.azure_code, hook_dir.error
                )
                return
            # The same list, filled as the hooks run: complete even if interrupted.
            result.hooks_pre = state.results_pre
            run_pre(
                hook_dir,
                self.policy("pre"),
                env={"QUIESCE_RUN_ID": result.run_id},
                run_id=result.run_id,
                notify_dir=self.options.run_dir,
                into=state,
                runner=self.runner,
                progress=self.options.progress,
            )
            entry.detail = f"{len(state.results_pre)} of {len(hook_dir.hooks)} hook(s)"
            if state.failed is not None:
                entry.status = "failed"
                result.set_error(state.failed.error_name, state.failed.error_code, state.failed.message)

    # -- what stopped it ---------------------------------------------------------------

    def _interrupted(self, signum: int) -> None:
        """A stop took effect before the snapshot step: nothing ran frozen, the post steps run."""
        name = signal.Signals(signum).name
        result = self.result
        result.interrupted_by = name
        result.error_name, result.error_code = "RunInterrupted", None
        result.message = f"stopped by {name} before the snapshot step; nothing is frozen, post steps run"
        if self.stage == "pre":
            self.pre_status = "interrupted"
        self.pre_ok = self.go = self.froze = False
        self.snapshot = "skipped"
        self.timeline.note("interrupted", name)

    def _crashed(self, err: BaseException) -> None:
        """An unexpected error before the post steps: recorded, never better than the truth."""
        where = "the pre steps" if self.stage == "pre" else "the snapshot step"
        why = f"{type(err).__name__} during {where}: {err}"
        self.result.set_error(*RUN_ERROR, why)
        self.result.warnings.append(f"RunError: {why}")
        self.timeline.note("error", type(err).__name__, why)
        if self.stage == "pre":
            self.pre_status, self.pre_ok, self.go = "interrupted", False, False
        elif not self.window_done:
            # Whatever the window did is not known: nothing vouches for it.
            self.froze, self.snapshot = False, "failed"

    def _late_stop(self) -> None:
        """A stop that arrived while nothing could be interrupted (the window, which finished first)."""
        signum = self.interrupts.pending_stop
        if signum is None:
            return
        name = signal.Signals(signum).name
        self.result.interrupted_by = name
        why = f"{name} arrived during the snapshot step, which finished first; the post steps ran"
        self.result.set_error("RunInterrupted", None, why)
        self.timeline.note("interrupted", name, "after the snapshot step")

    # -- after the window --------------------------------------------------------------

    def _post_steps(self, post_checked: CheckedScript | ScriptResult) -> None:
        """Post hooks in reverse, then the post-script: always, each failure recorded."""
        result = self.result
        result.snapshot = self.snapshot
        env = {
            "QUIESCE_SNAPSHOT": self.snapshot,
            "QUIESCE_PRE_STATUS": self.pre_status,
            "QUIESCE_RUN_ID": result.run_id,
        }
        post_ok = True
        if self.hooks.started:
            with self.timeline.phase("hooks-post") as entry:
                run_post(
                    self.hooks,
                    self.policy("post"),
                    env=env,
                    run_id=result.run_id,
                    runner=self.runner,
                    progress=self.options.progress,
                )
                result.hooks_post = self.hooks.results_post
                failed = [r for r in result.hooks_post if not r.ok]
                if failed:
                    entry.status = "failed"
                    post_ok = False
                    result.set_error(failed[0].error_name, failed[0].error_code, failed[0].message)
        # Refused notifications and the like, from the session hooks.
        result.warnings.extend(self.hooks.warnings)
        try:
            result.post = self._script(post_checked, env)
        except Exception as err:  # quiesce's own failure: the post-script counts as failed
            failure = ScriptExecutionFailed(f"the post-script could not be run: {err!r}", "post")
            result.post = ScriptResult(
                "post",
                self.cfg.post_script,
                (),
                "failed",
                (),
                failure.azure_name,
                failure.azure_code,
                str(failure),
            )
        if not result.post.ok:
            result.set_error(result.post.error_name, result.post.error_code, result.post.message)
        self.post_ok = post_ok and result.post.ok

    # -- running a script ----------------------------------------------------------------

    def policy(self, phase: str) -> ScriptPolicy:
        """How this run runs a ``phase`` ("pre" or "post") script or hook."""
        cfg = self.cfg
        return ScriptPolicy(
            timeout_s=self.timeout_s,
            retries=cfg.pre_retries if phase == "pre" else cfg.post_retries,
            grace_s=cfg.quiesce.grace_s,
            backoff_s=cfg.quiesce.retry_backoff_s,
            cgroup_parent=self.options.cgroup_parent,
        )

    def _script(self, checked: CheckedScript | ScriptResult, env: dict[str, str]) -> ScriptResult:
        if isinstance(checked, ScriptResult):
            self.timeline.note(f"{checked.phase}-script", checked.status, checked.message)
            return checked
        phase = checked.phase
        params = self.cfg.pre_params if phase == "pre" else self.cfg.post_params
        with self.timeline.phase(f"{phase}-script") as entry:
            res = self.runner.run(
                checked,
                params,
                self.policy(phase),
                env=env,
                run_id=self.result.run_id,
                progress=self.options.progress,
            )
            entry.status = res.status
            entry.detail = f"{len(res.attempts)} attempt(s)"
        return res


def _skipped(checked: CheckedScript | ScriptResult, why: str) -> ScriptResult:
    """A script that passed its check but will not run (the other one failed its own): ``skipped``."""
    if isinstance(checked, ScriptResult):
        return checked
    checked.close()
    return ScriptResult(checked.phase, checked.path, (), "skipped", (), None, None, why)
