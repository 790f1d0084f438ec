"""The fsfreeze commands, served by quiesce's engine with qemu-ga's contract.

``guest-fsfreeze-freeze`` / ``-freeze-list`` answer the number of
filesystems frozen, ``guest-fsfreeze-thaw`` the number thawed,
``guest-fsfreeze-status`` ``"frozen"`` or ``"thawed"``, as qemu-ga does,
read-only filesystems included; a FIFREEZE that fails gets qemu-ga's error
("failed to freeze MOUNT: strerror") and nothing stays frozen.
What differs, on purpose:

- **What may be frozen** is the node's quiesce config's selection
  (``targets``, ``exclude``, ``excludeFstypes``, ``MountsToSkip``); a
  freeze-list narrows it to the filesystems it names. Names that are not
  mount points, or not selected, are ignored (qemu-ga ignores the former too)
  and logged.
- **The node's quiesce config runs around the freeze**: pre-script and hook
  directory (session hooks included) before, post steps after the thaw, by
  the Azure rules (``continueBackupOnFailure`` decides whether a failed pre
  step still freezes). qemu-ga's fsfreeze hook runs first (``freeze``) and
  last (``thaw``), bounded (see :mod:`quiesce.qga.fshook`); as in qemu-ga,
  on every freeze and every thaw, also when nothing is (or was) frozen.
- **A deadline**: the guardian thaws at ``--timeout`` if no thaw came;
  the status then says ``"thawed"``, and the late thaw is an error.
- **Only what it froze is thawed**: a filesystem someone else froze makes the
  freeze fail and stays frozen (qemu-ga skips it, then thaws it); a thaw
  with nothing frozen by quiesce touches nothing and returns 0.
- A thaw whose window was cut short (deadline, another tool's thaw) or whose
  post steps failed the backup (``continueBackupOnFailure`` false) is an
  error, so the host learns its snapshot is not to be trusted.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import quiesce
from quiesce.qga.events import EventLog
from quiesce.qga.fshook import FsfreezeHook, HookOutcome
from quiesce.qga.protocol import QgaError, disabled_while_frozen
from quiesce.qga.window import Window, WindowSpec

#: FIFREEZE failures that are quiesce's own refusals, worded as such: someone else's
#: freeze (qemu-ga skips it), no freeze support (qemu-ga skips it), the guardian's
#: deadline while freezing (qemu-ga has none). Any other errno gets qemu-ga's words.
OWN_FREEZE_ERRNOS = frozenset({errno.EBUSY, errno.EOPNOTSUPP, errno.ETIMEDOUT})

#: Azure's auto-thaw default, and qemu-ga has none.
DEFAULT_FREEZE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FreezerSettings:
    """Where the node's config is and how freezes are bounded."""

    config_path: str | None
    #: The config was named explicitly: missing is an error, not "no config".
    config_required: bool = False
    #: ``--timeout``; None: the config's ``freezeTimeoutSeconds`` (default 60).
    timeout_s: float | None = None
    run_dir: str = "/run/quiesce"
    pluginhost_path: str | None = None
    vmbackup_conf: str | None = None
    hook: FsfreezeHook | None = None


class Freezer:
    """The fsfreeze state of the agent; every method is called from the server's thread."""

    def __init__(self, settings: FreezerSettings, log: EventLog) -> None:
        self.settings = settings
        self.log = log
        self._window: Window | None = None
        self._thaw_hook: HookOutcome | None = None

    @property
    def frozen(self) -> bool:
        """Filesystems are frozen by this agent (the frozen-state allowlist applies)."""
        return self._window is not None and self._window.holding

    def status(self) -> str:
        """``guest-fsfreeze-status``: true also after the guardian thawed at the deadline."""
        return "frozen" if self.frozen else "thawed"

    # -- freeze -------------------------------------------------------------

    def freeze(self, mountpoints: Sequence[str] | None, stopping: Callable[[], bool] = lambda: False) -> int:
        """Run the pre steps and freeze; the number of filesystems frozen (raises :class:`QgaError`)."""
        self._forget_finished()
        loaded = self._load_config()
        targets = self._select(loaded, mountpoints)
        # qemu-ga calls the hook with "freeze" on every freeze, before it looks at the
        # mounts: also when nothing listed can be frozen (then no "thaw" call follows
        # until the host's thaw, as there).
        hook = self._hook()
        if hook is not None:
            outcome = self._run_hook(hook, "freeze")
            if not outcome.ok:
                raise QgaError(outcome.error or "fsfreeze hook failed")
        if not targets:
            self.log("freeze: nothing to freeze (no selected filesystem named); 0 frozen")
            return 0
        ext_timeout = (
            loaded.config.quiesce.freeze_timeout_s if loaded is not None else DEFAULT_FREEZE_TIMEOUT_S
        )
        spec = WindowSpec(
            targets=tuple(glob.escape(t) if glob.has_magic(t) else t for t in targets),
            timeout_s=self.settings.timeout_s or ext_timeout,
            run_dir=self.settings.run_dir,
            config=loaded,
            pluginhost_path=self.settings.pluginhost_path,
            vmbackup_conf=self.settings.vmbackup_conf,
        )
        self._thaw_hook = None
        window = Window(
            spec,
            on_frozen=self._frozen,
            on_auto_thaw=self._auto_thawed,
            after=lambda: self._after(hook),
            stopping=stopping,
        )
        self._window = window
        window.start()
        if window.wait_frozen(stopping) and not stopping():
            return window.count
        window.release()  # stopping: what froze meanwhile is thawed at once, never reported frozen
        window.join()
        self._window = None
        self.log.release()
        self._log_window(window)
        if stopping():
            raise QgaError("freeze failed, nothing is frozen: the agent is stopping")
        failed = window.failed_fifreeze()
        if failed is not None and failed[1] not in OWN_FREEZE_ERRNOS:
            # qemu-ga's words for a FIFREEZE it does not skip; it too thaws what it froze.
            raise QgaError(f"failed to freeze {failed[0]}: {os.strerror(failed[1])}")
        raise QgaError(f"freeze failed, nothing is frozen: {window.failure()}")

    def _hook(self) -> FsfreezeHook | None:
        hook = self.settings.hook
        return hook if hook is not None and hook.present() else None

    def _load_config(self) -> quiesce.LoadedConfig | None:
        path = self.settings.config_path
        if path is None or (not self.settings.config_required and not os.path.lexists(path)):
            return None
        try:
            return quiesce.load_config(path)
        except quiesce.QuiesceError as err:
            name = getattr(err, "azure_name", None)
            raise QgaError(
                f"the node's quiesce config is not usable ({name or type(err).__name__}): {err}"
            ) from err

    def _select(self, loaded: quiesce.LoadedConfig | None, mountpoints: Sequence[str] | None) -> list[str]:
        """Mount points to freeze: the config's selection, narrowed to ``mountpoints`` if given."""
        ext = loaded.config.quiesce if loaded is not None else None
        try:
            plan = quiesce.plan(
                ext.targets if ext is not None else (),
                exclude=ext.exclude if ext is not None else (),
                exclude_fstypes=ext.exclude_fstypes if ext is not None else (),
                vmbackup_conf=self.settings.vmbackup_conf,
                read_only=True,  # qemu-ga freezes (and counts) read-only filesystems too
            )
        except quiesce.QuiesceError as err:
            raise QgaError(f"cannot list the filesystems: {err}") from err
        if mountpoints is None:
            return [t.mount.mount_point for t in plan.targets]
        wanted = set(mountpoints)
        devs = {t.mount.dev for t in plan.targets if t.mount.mount_point in wanted}
        for s in plan.skipped:
            if s.reason is quiesce.SkipReason.DUPLICATE and s.mount.mount_point in wanted:
                devs.add(s.mount.dev)
        chosen = [t.mount.mount_point for t in plan.targets if t.mount.dev in devs]
        why = {s.mount.mount_point: f"{s.reason.value}: {s.detail}" for s in plan.skipped}
        for name in sorted(wanted - set(chosen)):
            if name not in why or not why[name].startswith(quiesce.SkipReason.DUPLICATE.value):
                self.log(f"freeze-list: {name} not frozen ({why.get(name, 'not a mount point')})")
        return chosen

    def _frozen(self, count: int) -> None:
        # From the worker thread, inside the window: nothing may be written now.
        self.log.hold()

    def _auto_thawed(self) -> None:
        self.log.release()
        self.log("the guardian thawed at the deadline before any thaw came: the next thaw will be an error")

    def _after(self, hook: FsfreezeHook | None) -> None:
        """The worker's last step: qemu-ga's thaw hook, after the thaw and the post steps."""
        self.log.release()
        if hook is not None:
            self._thaw_hook = self._run_hook(hook, "thaw")

    def _forget_finished(self) -> None:
        """A window the guardian ended and no thaw acknowledged: the host moved on."""
        window = self._window
        if window is None:
            return
        if window.holding:
            raise disabled_while_frozen("guest-fsfreeze-freeze")
        window.join()
        self._window = None
        self._log_window(window)
        self.log("a new freeze came without a thaw for the previous one, which the guardian had ended")

    # -- thaw ---------------------------------------------------------------

    def thaw(self) -> int:
        """Release the freeze, run the post steps; the number thawed (raises when untrustworthy)."""
        window = self._window
        if window is None:
            # Nothing frozen by quiesce: touch nothing (qemu-ga would thaw everyone's). The
            # hook's "thaw" call still comes, as qemu-ga makes it on every thaw, and its
            # failure is the thaw's error.
            hook = self._hook()
            if hook is not None:
                outcome = self._run_hook(hook, "thaw")
                if not outcome.ok:
                    raise QgaError(outcome.error or "fsfreeze hook failed")
            return 0
        window.release()
        window.join()
        self._window = None
        self._log_window(window)
        problems = window.problems()
        if self._thaw_hook is not None and not self._thaw_hook.ok:
            problems.append(self._thaw_hook.error or "fsfreeze hook failed")
        if problems:
            raise QgaError("; ".join(problems))
        return window.thawed_count()

    def shutdown(self) -> None:
        """Stopping: thaw now (post steps included) and wait for it."""
        window = self._window
        if window is not None:
            self.log("stopping: releasing the freeze")
            window.release()
            window.join()
            self._window = None
            self._log_window(window)

    # -- logging ------------------------------------------------------------

    def _run_hook(self, hook: FsfreezeHook, arg: str) -> HookOutcome:
        outcome = hook.run(arg)
        how = "ok" if outcome.ok else outcome.error
        self.log(f"fsfreeze hook {arg}: {how} ({outcome.duration_ns / 1e6:.1f} ms)")
        for line in outcome.output.splitlines()[-20:]:
            self.log(f"  | {line}")
        return outcome

    def _log_window(self, window: Window) -> None:
        report, result = window.report, window.result
        if report is not None and report.window_ns is not None:
            mounts = ", ".join(
                f"{t.mount_point} {t.state} (freeze {_ms(t.freeze_ns)}, thaw {_ms(t.thaw_ns)})"
                for t in report.targets
            )
            self.log(f"window {report.window_ns / 1e6:.3f} ms: {mounts}")
        if result is not None:
            self.log(f"run {result.run_id}: {result.consistency}")
            for w in result.warnings:
                self.log(f"warning: {w}")
        for p in window.problems():
            self.log(f"problem: {p}")


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f} ms"
