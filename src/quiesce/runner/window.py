"""The snapshot step and the frozen window around it.

The snapshot step runs whenever the result says it did, frozen or not:

- with ``fsFreezeEnabled`` it runs inside the window (freeze, step, thaw);
- with ``fsFreezeEnabled`` false it runs without a freeze (Azure: "take the
  snapshot without fsfreeze");
- when the freeze fails and failures may continue, it runs on the unfrozen
  filesystems (crash-consistent); when they may not, it does not run.

By mode: ``command`` runs the command (in one native call with the freeze,
or as a supervised process without one, told by ``QUIESCE_FROZEN``);
``hold`` announces what is and is not frozen and waits for the release;
``none`` runs nothing (the caller's snapshot belongs at that point); an
embedding tool's callable is called. ``snapshot`` is "ok" only when the step
ran, succeeded and was not cut short: a hold released by its deadline, a
failed announcement, or a window ended early by ``quiesce thaw`` is "failed".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce.azure.config import PluginConfig, SnapshotMode
from quiesce.azure.verdict import FREEZE_ABORTED, FREEZE_FAILED, FREEZE_TIMEOUT, SNAPSHOT_FAILED
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.lastreport import RUN, HoldNotRecorded, mark_holding, save_last_report
from quiesce.engine.mountinfo import escape_path
from quiesce.engine.plan import Target
from quiesce.engine.report import FreezeReport
from quiesce.errors import FreezeTimeoutError, QuiesceError
from quiesce.runner.freezer import FreezeLike, Freezer
from quiesce.runner.signals import THAW_SIGNAL, Interrupts
from quiesce.runner.types import HoldAnnouncement, Phase, RunOptions, RunResult, SnapshotStep, Timeline

OK = "ok"
FAILED = "failed"


def targets_env(targets: Sequence[Target]) -> str:
    """``QUIESCE_TARGETS``: the snapshot's filesystems, one mount point per line.

    Each is escaped as in mountinfo (``\\040``, ``\\012``, ``\\134``...): a
    mount point's name cannot forge a line.
    """
    return "\n".join(escape_path(t.mount.mount_point) for t in targets)


class WindowJob(Protocol):
    """What the window reads of its run (:class:`quiesce.runner.job.Job`)."""

    result: RunResult
    timeline: Timeline
    cfg: PluginConfig
    options: RunOptions
    step: SnapshotStep | None
    freezer: Freezer
    interrupts: Interrupts


class Window:
    """One run's snapshot step, and the freeze around it when enabled.

    After :meth:`run`: ``froze`` (the freeze held from before the step to
    after it, thawed by quiesce itself) and ``snapshot`` ("ok" or "failed").
    """

    def __init__(self, job: WindowJob) -> None:
        self.result = job.result
        self.timeline = job.timeline
        self.cfg = job.cfg
        self.options = job.options
        self.step = job.step
        self.freezer = job.freezer
        self.interrupts = job.interrupts
        self.froze = False
        self.snapshot = FAILED
        #: Why the step gave no trusted snapshot, when nothing else names it.
        self.why_failed: str | None = None

    def run(self) -> None:
        """Freeze (if enabled), run the snapshot step, thaw."""
        self.result.snapshot_mode = (
            "callable" if self.step is not None else self.cfg.quiesce.snapshot.mode.value
        )
        # A release (SIGUSR1) before the window has nothing to release.
        self.interrupts.clear_thaw_request()
        if self.cfg.fs_freeze_enabled:
            self._frozen()
        else:
            targets = self._plan_quietly()
            with self.timeline.phase("snapshot") as entry:
                self.snapshot = self._step(None, targets, entry, "fsFreezeEnabled is false")
        self.result.snapshot_frozen = self.froze and self.snapshot == OK

    # -- the window ---------------------------------------------------------------

    def _frozen(self) -> None:
        ext = self.cfg.quiesce
        targets: Sequence[Target] = ()
        freeze: FreezeLike | None = None
        error: QuiesceError | None = None
        state: str | None = None
        with self.timeline.phase("freeze-window") as entry:
            try:
                targets = self.freezer.plan(ext, self.options.vmbackup_conf)
                opts = FreezeOptions(
                    timeout_s=ext.freeze_timeout_s,
                    preflush=ext.preflush,
                    run_dir=self.options.run_dir,
                    expedite_rcu=ext.expedite_rcu,
                    parallel=ext.parallel_freeze,
                    # SIGUSR1 is handled for the whole run only when the run handles signals.
                    release_on_sigusr1=self.interrupts.enabled,
                    # One ID for the run and its freeze: `quiesce status` and the ledger name the run.
                    run_id=self.result.run_id,
                )
                freeze = self.freezer.open(targets, opts)
                try:
                    freeze.prepare()
                    # A stop during the pre-flush takes effect before anything is frozen.
                    self.interrupts.check()
                    if self.interrupts.thaw_requested:
                        state = self._released_before(entry, "the freeze")
                    elif not self._cleared_to_freeze(freeze, entry):
                        state = FAILED
                    else:
                        self._mark_holding(freeze)
                        state = self._step(freeze, targets, entry, None)
                except BaseException as err:
                    try:
                        self._close(freeze)
                    except QuiesceError as thaw_err:  # a thaw failure: never lost, never hiding err
                        self.result.set_error(*FREEZE_FAILED, str(thaw_err))
                    finally:
                        freeze.record_error(err)
                    raise
                self._close(freeze)
            except QuiesceError as err:
                entry.status, entry.detail, error = "error", str(err), err
            finally:
                if freeze is not None:
                    self.result.freeze = freeze.report
            if freeze is not None and freeze.report.window_ns is not None:
                entry.detail = entry.detail or f"window {freeze.report.window_ns} ns"
        if error is None and freeze is not None and state is not None:
            self._check_held(freeze, entry)
            if state == FAILED:
                # Whatever ended the step says why (a hold past its deadline that
                # quiesce thawed itself, before the guardian acted, has no other word).
                self.result.set_error(*SNAPSHOT_FAILED, self.why_failed or "the snapshot step failed")
            self.froze, self.snapshot = freeze.report.ok, state
            return
        name, code = FREEZE_TIMEOUT if isinstance(error, FreezeTimeoutError) else FREEZE_FAILED
        self.result.set_error(name, code, str(error))
        if state is not None:
            # The step ran; the failure came at the thaw.
            self.snapshot = state
            return
        if not self.cfg.continue_on_failure:
            self.timeline.note(
                "snapshot", "skipped", "the freeze failed and continueBackupOnFailure is false"
            )
            return
        # Failures may continue: the snapshot step runs without a freeze (crash-consistent).
        with self.timeline.phase("snapshot-unfrozen") as entry:
            self.snapshot = self._step(None, targets, entry, f"the freeze failed: {error}")

    def _mark_holding(self, freeze: FreezeLike) -> None:
        """Before the first FIFREEZE (the freeze lock held): the last report says this run holds.

        So ``quiesce status`` never shows an earlier freeze as the last one,
        and a run killed while frozen is shown as such.
        """
        if isinstance(freeze, Freeze) and freeze.run_dir is not None:
            told = not self._holds()
            try:
                mark_holding(freeze.run_dir, freeze.run_id, os.getpid(), RUN, acknowledged=told)
            except HoldNotRecorded as err:
                if not told:
                    # A hold's snapshotter may ask `quiesce thaw`, which would find no word of it.
                    raise HoldNotRecorded(
                        f"{err}: a `quiesce thaw` could not tell how the hold ended"
                    ) from err
            # Saved by whoever closes the freeze: the run, or its step (through on_frozen).
            freeze.report_to(self._saver(freeze))

    def _holds(self) -> bool:
        """The step is a hold: its snapshotter may ask ``quiesce thaw`` how the window ended."""
        return self.step is None and self.cfg.quiesce.snapshot.mode is SnapshotMode.HOLD

    def _close(self, freeze: FreezeLike) -> None:
        """Thaw and clean up; once marked, the outcome is the last report before the ledger goes."""
        freeze.close()

    def _saver(self, freeze: Freeze) -> Callable[[FreezeReport], None]:
        """What saves the outcome as the run directory's last report (``Freeze.report_to``)."""

        def save(report: FreezeReport) -> None:
            # The run's own result tells its caller; a hold's snapshotter may also ask `quiesce thaw`.
            told = not self._holds() or self.result.released_by == "signal SIGUSR1"
            extra = {"released_by": self.result.released_by, "mode": RUN, "pid": os.getpid()}
            if freeze.run_dir is not None:
                with contextlib.suppress(OSError, QuiesceError):
                    save_last_report(freeze.run_dir, report.to_dict() | extra | {"acknowledged": told})

        return save

    def _check_held(self, freeze: FreezeLike, entry: Phase) -> None:
        """Name a window cut short (someone else's thaw, the guardian); its phase never says "ok"."""
        report = freeze.report
        external = [t.mount_point for t in report.targets if t.state == "thawed-externally"]
        if external:
            why = f"thawed by someone else during the window: {', '.join(external)}"
            self.result.set_error(*FREEZE_FAILED, why)
        if report.guardian_reason is not None:
            why = f"the guardian thawed before the snapshot ended ({report.guardian_reason})"
            self.result.set_error(*FREEZE_TIMEOUT, why)
        if (external or report.guardian_reason is not None) and entry.status == "ok":
            entry.status = "cut-short"

    def _plan_quietly(self) -> Sequence[Target]:
        """The targets a snapshot without a freeze is about (for QUIESCE_TARGETS and the hold)."""
        try:
            return self.freezer.plan(self.cfg.quiesce, self.options.vmbackup_conf)
        except QuiesceError as err:
            self.result.warnings.append(f"cannot list the snapshot's filesystems: {err}")
            return ()

    # -- the step, by mode ------------------------------------------------------------

    def _step(
        self, freeze: FreezeLike | None, targets: Sequence[Target], entry: Phase, why: str | None
    ) -> str:
        """Run the snapshot step; with ``freeze``, freezing it first. Returns "ok" or "failed"."""
        mode = self.cfg.quiesce.snapshot.mode
        if self.step is not None:
            return self._callable(freeze, entry)
        if mode is SnapshotMode.COMMAND:
            return self._command(freeze, targets, entry)
        if mode is SnapshotMode.HOLD:
            return self._hold(freeze, targets, entry, why)
        if freeze is None:
            entry.detail = f"mode none: nothing to run, and nothing frozen ({why})"
            return OK
        freeze.freeze()
        entry.detail = "mode none: the snapshot is taken by the caller while frozen"
        return self._not_released(entry)

    def _cleared_to_freeze(self, freeze: FreezeLike, entry: Phase) -> bool:
        """Ask ``options.before_freeze`` (a fleet agent's barrier); False, nothing frozen, if it raised."""
        if self.options.before_freeze is None or not isinstance(freeze, Freeze):
            return True
        try:
            self.options.before_freeze(freeze)
        except Exception as err:  # the caller's step: any failure aborts before the first FIFREEZE
            entry.status, entry.detail = "aborted", f"aborted before the freeze: {err}"
            self.result.set_error(*FREEZE_ABORTED, f"aborted before the freeze: {err}")
            return False
        return True

    def _released_before(self, entry: Phase, what: str) -> str:
        """A release (`quiesce thaw`, or a signal in hold mode) came before ``what``: no snapshot."""
        entry.status = FAILED
        entry.detail = f"released before {what}"
        self.result.released_by = f"a signal before {what}"
        self.result.set_error(*SNAPSHOT_FAILED, f"released before {what}: no snapshot was taken")
        return FAILED

    def _not_released(self, entry: Phase) -> str:
        """ "ok", unless ``quiesce thaw`` asked for the window to end while it was open."""
        if not self.interrupts.thaw_requested:
            return OK
        entry.status = FAILED
        self.result.released_by = "signal SIGUSR1"
        why = "`quiesce thaw` (SIGUSR1) ended the window before the snapshot step was done: not trusted"
        self.result.set_error(*SNAPSHOT_FAILED, why)
        return FAILED

    def _callable(self, freeze: FreezeLike | None, entry: Phase) -> str:
        assert self.step is not None
        if freeze is not None:
            freeze.freeze()
            if isinstance(freeze, Freeze) and self.options.on_frozen is not None:
                # Told just before the embedded step, and only when frozen.
                self.options.on_frozen(freeze)
        try:
            self.step()
        except Exception as err:  # the caller's step: any failure is a failed snapshot
            entry.status = FAILED
            self.result.set_error(*SNAPSHOT_FAILED, f"snapshot step failed: {err!r}")
            return FAILED
        return OK if freeze is None else self._not_released(entry)

    def _command(self, freeze: FreezeLike | None, targets: Sequence[Target], entry: Phase) -> str:
        spec, ext = self.cfg.quiesce.snapshot, self.cfg.quiesce
        timeout_s = spec.timeout_s or ext.freeze_timeout_s
        grace_s = ext.grace_s
        if freeze is not None:
            # SIGKILL must come before the guardian's deadline, or the kill
            # would find the filesystems already thawed under the command.
            grace_s = max(0.0, min(ext.grace_s, ext.freeze_timeout_s - timeout_s))
        attempt = self.freezer.command(
            freeze,
            spec.argv,
            timeout_s=timeout_s,
            grace_s=grace_s,
            env={"QUIESCE_TARGETS": targets_env(targets), "QUIESCE_FROZEN": "1" if freeze else "0"},
            run_id=self.result.run_id,
            cgroup_parent=self.options.cgroup_parent,
            release_fd=self.interrupts.release_fd if freeze is not None else -1,
            release_sig=THAW_SIGNAL,
        )
        self.result.snapshot_command = attempt
        entry.detail = f"command {attempt.outcome}" + ("" if freeze is not None else " (not frozen)")
        if attempt.outcome == "released":
            entry.status = FAILED
            self.result.released_by = "signal SIGUSR1"
            why = (
                "`quiesce thaw` (SIGUSR1) ended the window while the snapshot command ran; "
                "the command was killed: the snapshot is not trusted"
            )
            self.result.set_error(*SNAPSHOT_FAILED, why)
            return FAILED
        if attempt.outcome != OK:
            entry.status = FAILED
            how = attempt.error or f"exit {attempt.exit_code}, signal {attempt.signal}"
            self.result.set_error(*SNAPSHOT_FAILED, f"snapshot command {attempt.outcome}: {how}")
            return FAILED
        return OK

    def _hold(
        self, freeze: FreezeLike | None, targets: Sequence[Target], entry: Phase, why: str | None
    ) -> str:
        mounts = tuple(t.mount.mount_point for t in targets)
        # The release's pipe and handlers are set up before the freeze, not inside the window.
        release = self.freezer.release()
        try:
            # A stop that came before the release's handlers took over stops the run here,
            # before anything is frozen: the hold would never see it.
            self.interrupts.check()
            if freeze is not None:
                freeze.freeze()
                remaining = freeze.remaining_ns
                news = HoldAnnouncement(self.result.run_id, os.getpid(), mounts, (), None, remaining())
            else:
                # Without a freeze there is no guardian: the hold keeps its own deadline.
                deadline = time.monotonic_ns() + int(self.cfg.quiesce.freeze_timeout_s * 1e9)

                def remaining() -> int | None:
                    return deadline - time.monotonic_ns()

                news = HoldAnnouncement(self.result.run_id, os.getpid(), (), mounts, why, remaining())
            if release.received is not None or self.interrupts.thaw_requested:
                # Released before anyone was told: nothing can have been taken.
                return self._released_before(entry, "the announcement")
            failure = self._announce(freeze, news)
            if failure is not None:
                entry.status = FAILED
                entry.detail = f"hold: the announcement failed ({failure}); ended at once"
                self.result.released_by = "announcement failed"
                why_failed = (
                    f"the hold's announcement failed ({failure}): the snapshotter was never told, "
                    "so the hold ended at once"
                )
                self.result.set_error(*SNAPSHOT_FAILED, why_failed)
                return FAILED
            released_by = release.wait(remaining, self.options.hold_stdin)
        finally:
            release.close()
        self.result.released_by = released_by
        entry.detail = f"held{'' if freeze is not None else ' (nothing frozen)'}; released by {released_by}"
        if released_by == "deadline" or released_by.startswith("error"):
            # No release before the deadline (with a freeze, the guardian thawed
            # first and says so): the snapshot is not trusted.
            entry.status = FAILED
            why = f"the hold ended without a release ({released_by}): the snapshot is not trusted"
            if freeze is None or released_by != "deadline":
                self.result.set_error(*SNAPSHOT_FAILED, why)
            else:
                # The guardian's reason, when it thawed first, is the better word (see _frozen).
                self.why_failed = why
            return FAILED
        return OK

    def _announce(self, freeze: FreezeLike | None, news: HoldAnnouncement) -> Exception | None:
        """Tell the snapshotter; the error if that failed (its reader gone, say)."""
        try:
            if isinstance(freeze, Freeze) and self.options.on_frozen is not None:
                self.options.on_frozen(freeze)
            if self.options.on_hold is not None:
                self.options.on_hold(news)
        except Exception as err:  # any failure to tell: the snapshotter does not know
            return err
        return None
