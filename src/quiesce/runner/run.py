"""The Azure-compatible run: checks, pre-script, freeze, snapshot, thaw, post-script.

:func:`run` follows Azure Backup's documented rules (REFERENCE.md section
1.3) and fixes what its implementation gets wrong: retries re-run the
script, a timed-out script is killed, a bad config is an error and never a
silent downgrade, and the frozen window is bounded by the guardian.

The config is read from the fd that was permission-checked and validated;
a bad config runs nothing and freezes nothing. Then one :class:`Job`
(:mod:`quiesce.runner.job`) runs the steps under the run lock, the signal
handling and the run's cgroup, and :func:`~quiesce.azure.verdict.classify`
turns its outcomes into application-consistent, file-system-consistent,
crash-consistent or failed.

The processes and the kernel are reached through two seams, a
:class:`~quiesce.supervise.scripts.ScriptRunner` and a
:class:`~quiesce.runner.freezer.Freezer`; tests drive this same scheduler
with made-up outcomes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator

from quiesce.azure.config import LoadedConfig, SnapshotMode
from quiesce.azure.configparse import parse_config
from quiesce.azure.permissions import read_config_file, read_pluginhost_file
from quiesce.azure.pluginhost import PluginHostConfig, effective_timeout_s, load_pluginhost
from quiesce.azure.verdict import FAILED, classify
from quiesce.engine import ledger as ledger_mod
from quiesce.engine.lock import FreezeLock
from quiesce.errors import IncorrectJSONConfigFile, TargetError
from quiesce.runner.freezer import Freezer, RealFreezer
from quiesce.runner.job import Job
from quiesce.runner.signals import Interrupts
from quiesce.runner.types import RunOptions, RunResult, SnapshotStep
from quiesce.supervise.cgroups import RunCgroup
from quiesce.supervise.scripts import Progress, ScriptRunner


def load_checked_config(path: str) -> LoadedConfig:
    """Read the config from its permission-checked fd and validate it."""
    return parse_config(read_config_file(path), path)


def load_checked_pluginhost(path: str) -> PluginHostConfig | None:
    """Read the optional plugin host INI from its permission-checked fd; None when there is none."""
    return load_pluginhost(path, read=read_pluginhost_file)


def run(
    options: RunOptions | None = None,
    *,
    config: LoadedConfig | None = None,
    snapshot: SnapshotStep | None = None,
    runner: ScriptRunner | None = None,
    freezer: Freezer | None = None,
) -> RunResult:
    """Run the whole job once. Raises only for a config error or a held lock.

    ``config`` skips reading the file (an embedding tool that validated its
    own); ``snapshot`` is called inside the frozen window. ``runner`` and
    ``freezer`` replace the real processes and freezes (tests).
    """
    options = options or RunOptions()
    run_id = ledger_mod.new_run_id()
    result = RunResult(run_id=run_id, started_unix=time.time(), started_ns=time.monotonic_ns())
    loaded = config or load_checked_config(options.config_path)
    host = load_checked_pluginhost(options.pluginhost_path) if options.pluginhost_path else None
    freezer = freezer or RealFreezer()
    if loaded.config.fs_freeze_enabled:
        # A named target that matches nothing is a config error: nothing runs.
        try:
            freezer.plan(loaded.config.quiesce, options.vmbackup_conf)
        except TargetError as err:
            raise IncorrectJSONConfigFile(f"{loaded.source}: {err}") from err
    _refuse_outside_the_main_thread(loaded, snapshot, options)
    if options.on_config is not None:
        options.on_config(loaded.config)
    result.config_source = loaded.source
    result.warnings.extend(loaded.warnings)
    if host is not None:
        result.warnings.extend(host.warnings)
    with (
        _run_lock(options.run_dir),
        Interrupts(options.handle_signals) as interrupts,
        RunCgroup(run_id) as run_cgroup,
    ):
        options = dataclasses.replace(
            options,
            cgroup_parent=run_cgroup.path,
            progress=_guarded_progress(options.progress, result),
        )
        job = Job(
            result=result,
            cfg=loaded.config,
            options=options,
            timeout_s=effective_timeout_s(loaded.config, host),
            step=snapshot,
            runner=dataclasses.replace(runner or ScriptRunner(), interruptible=interrupts.interruptible),
            freezer=freezer,
            interrupts=interrupts,
        )
        job.execute()
    result.consistency = classify(job.outcomes())
    if result.error_name is not None and result.consistency != FAILED:
        # The backup stands; the error is a warning, as in Azure.
        result.warnings.append(f"{result.error_name}: {result.message}")
    result.duration_ns = time.monotonic_ns() - result.started_ns
    return result


def _refuse_outside_the_main_thread(
    loaded: LoadedConfig, snapshot: SnapshotStep | None, options: RunOptions
) -> None:
    """RuntimeError, before anything runs, for a run that would handle signals from another thread.

    The hold step waits for its release signals, and ``handle_signals`` installs
    the run's handlers: Python installs handlers only from the main thread.
    """
    if threading.current_thread() is threading.main_thread():
        return
    if options.handle_signals:
        why = "handle_signals installs signal handlers"
    elif snapshot is None and loaded.config.quiesce.snapshot.mode is SnapshotMode.HOLD:
        why = "the hold snapshot step waits for its release signals (SIGUSR1, SIGTERM...)"
    else:
        return
    raise RuntimeError(
        f"this run needs the main thread: {why}, which Python allows only there; "
        "from another thread pass snapshot=callable and leave handle_signals off"
    )


#: The lock one run holds in the run directory (the freeze lock is another).
RUN_LOCK = "run.lock"


@contextlib.contextmanager
def _run_lock(run_dir: str) -> Iterator[FreezeLock]:
    """One run at a time: a second is refused at once (LockHeldError)."""
    lock = FreezeLock(run_dir, name=RUN_LOCK, what="run")
    try:
        yield lock
    finally:
        lock.release()


def _guarded_progress(progress: Progress | None, result: RunResult) -> Progress | None:
    """The caller's progress callback, which can never end the run: its first failure is recorded."""
    if progress is None:
        return None
    broken: list[BaseException] = []

    def report(label: str, attempt: int, elapsed_ns: int, timeout_ns: int) -> None:
        if broken:
            return
        try:
            progress(label, attempt, elapsed_ns, timeout_ns)
        except Exception as err:  # a broken terminal or pipe: no more progress, the run goes on
            broken.append(err)
            result.warnings.append(f"progress output failed, none shown after: {err!r}")

    return report
