"""One frozen window for the guest agent, held in a worker thread until the host's thaw.

The host's ``guest-fsfreeze-freeze`` must be answered while frozen, and the
thaw comes later as a separate command, so the window lives in a thread:
with a config, ``quiesce.run`` (pre-script, hook directory, session hooks,
freeze, and as its snapshot step a wait for the thaw, then the post steps);
without one, a bare :class:`quiesce.Freeze`. Either way the guardian bounds
the window: if no thaw comes by the deadline, the guardian thaws, the wait
ends, the post steps run, and the window remembers that it was cut short so
the host's late thaw can be told.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import quiesce

#: How long, past the deadline, to wait for the guardian's own thaw to show.
GUARDIAN_SETTLE_S = 0.5


@dataclass(frozen=True)
class WindowSpec:
    """What one window freezes and how: exact mount points, deadline, the node's config."""

    targets: tuple[str, ...]
    timeout_s: float
    run_dir: str
    config: quiesce.LoadedConfig | None = None
    pluginhost_path: str | None = None
    vmbackup_conf: str | None = None


class WindowCancelled(Exception):
    """Raised just before the first FIFREEZE when the agent is stopping: nothing is frozen."""


class Window:
    """Freeze ``spec.targets`` in a worker thread and hold them until :meth:`release` or the deadline.

    ``on_frozen(count)`` and ``on_auto_thaw()`` are called from the worker
    thread; ``after()`` runs in it once the window is over, whatever happened
    (qemu-ga's thaw hook goes there). ``stopping()`` true just before the
    first FIFREEZE (the agent got a stop signal while the pre steps ran)
    means nothing is frozen.
    """

    def __init__(
        self,
        spec: WindowSpec,
        *,
        on_frozen: Callable[[int], None],
        on_auto_thaw: Callable[[], None],
        after: Callable[[], None],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.spec = spec
        self._stopping = stopping
        self._on_frozen = on_frozen
        self._on_auto_thaw = on_auto_thaw
        self._after = after
        self._release = threading.Event()
        self._changed = threading.Event()
        self._done = threading.Event()
        self._freeze: quiesce.Freeze | None = None
        self.count = 0
        self.auto_thawed = False
        self.result: quiesce.RunResult | None = None
        self.report: quiesce.FreezeReport | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._main, name="quiesce-qga-window", daemon=True)

    # -- the host's side (main thread) --------------------------------------

    def start(self) -> None:
        """Start freezing (pre steps first, when there is a config)."""
        self._thread.start()

    def wait_frozen(self, stopping: Callable[[], bool]) -> bool:
        """Block until frozen (True) or over without a freeze (False); ``stopping()`` releases early."""
        while not self._changed.wait(0.25):
            if stopping():
                self._release.set()
        # Frozen, even if the guardian has already cut it short: the thaw's reply says so.
        return self._freeze is not None

    @property
    def holding(self) -> bool:
        """Frozen by this window and not yet thawed by anyone."""
        return self._freeze is not None and not self.auto_thawed and not self._release.is_set()

    @property
    def finished(self) -> bool:
        """The worker is done (post steps and the after step included)."""
        return self._done.is_set()

    def release(self) -> None:
        """The host's thaw: thaw now, in this thread; the worker then runs the post steps.

        Thawing here, not after waking the worker, keeps a thread hand-off out
        of the window. The native thaw claims each filesystem atomically, so
        it cannot collide with the guardian's or the worker's own.
        """
        freeze = self._freeze
        if freeze is not None and self.holding:
            with contextlib.suppress(quiesce.QuiesceError):
                freeze.thaw()  # a failure is found again, and reported, by the run's own thaw
        self._release.set()

    def join(self) -> None:
        """Wait for the worker to finish everything."""
        self._thread.join()

    def thawed_count(self) -> int:
        """Filesystems this window froze and then thawed itself."""
        if self.report is None:
            return 0
        return sum(1 for t in self.report.targets if t.state == "thawed")

    def problems(self) -> list[str]:
        """What makes this window's snapshot untrustworthy, for the thaw's reply (empty: none)."""
        out = []
        report = self.report
        if self.auto_thawed or (report is not None and report.guardian_reason is not None):
            why = report.guardian_reason if report is not None else None
            out.append(
                f"the filesystems were thawed before this thaw: quiesce's guardian thawed them "
                f"({why or 'deadline'}, at most {self.spec.timeout_s:g} s after the freeze); "
                f"a snapshot taken after that is not consistent"
            )
        if report is not None:
            external = [t.mount_point for t in report.targets if t.state == "thawed-externally"]
            if external:
                out.append(f"thawed by another tool during the window: {', '.join(external)}")
            if report.error is not None and not out:
                out.append(f"thaw failed: {report.error}")
        if self.result is not None and self.result.consistency == quiesce.FAILED and not out:
            name, message = self.result.error_name, self.result.message
            out.append(f"the node's quiesce config failed the backup ({name}): {message}")
        if self.error is not None:
            out.append(self.error)
        return out

    def failed_fifreeze(self) -> tuple[str, int] | None:
        """The mount point whose FIFREEZE failed and its errno, when that ended the freeze."""
        report = self.report
        if report is None:
            return None
        return next(((t.mount_point, t.freeze_errno) for t in report.targets if t.freeze_errno), None)

    def failure(self) -> str:
        """Why nothing was frozen, for the freeze's reply."""
        if self.error is not None:
            return self.error
        if self.result is not None and self.result.message:
            return f"{self.result.error_name}: {self.result.message}"
        if self.report is not None and self.report.error:
            return self.report.error
        return "nothing was frozen"

    # -- the worker ---------------------------------------------------------

    def _main(self) -> None:
        try:
            if self.spec.config is not None:
                self._run_config(self.spec.config)
            else:
                self._run_bare()
        except Exception as err:  # any failure must reach the host as an error reply
            self.error = f"{type(err).__name__}: {err}"
        finally:
            try:
                self._after()
            finally:
                self._done.set()
                self._changed.set()

    def _run_config(self, loaded: quiesce.LoadedConfig) -> None:
        cfg = loaded.config
        ext = dataclasses.replace(
            cfg.quiesce,
            targets=self.spec.targets,
            freeze_timeout_s=self.spec.timeout_s,
            freeze_read_only=True,
        )
        # The host asked for a freeze: fsFreezeEnabled false cannot turn it into none.
        cfg = dataclasses.replace(cfg, fs_freeze_enabled=True, quiesce=ext)
        options = quiesce.RunOptions(
            pluginhost_path=self.spec.pluginhost_path,
            vmbackup_conf=self.spec.vmbackup_conf,
            run_dir=self.spec.run_dir,
            on_frozen=self._frozen,
            before_freeze=self._before_freeze,
        )
        self.result = quiesce.run(
            dataclasses.replace(loaded, config=cfg), snapshot=self._hold, options=options
        )
        self.report = self.result.freeze

    def _run_bare(self) -> None:
        plan = quiesce.plan(self.spec.targets, vmbackup_conf=None, read_only=True)
        freeze = quiesce.Freeze(
            plan.targets, quiesce.FreezeOptions(self.spec.timeout_s, run_dir=self.spec.run_dir)
        )
        try:
            with freeze:
                freeze.prepare()
                if self._cancelled():
                    return
                freeze.freeze()
                self._frozen(freeze)
                self._hold()
        finally:
            self.report = freeze.report

    def _cancelled(self) -> bool:
        """A release or a stop came before the freeze: freeze nothing."""
        return self._release.is_set() or self._stopping()

    def _before_freeze(self, freeze: quiesce.Freeze) -> None:
        """The run's last step before the first FIFREEZE; raising aborts it, nothing frozen."""
        if self._cancelled():
            raise WindowCancelled("the agent is stopping")

    def _frozen(self, freeze: quiesce.Freeze) -> None:
        self._freeze = freeze
        self.count = len(freeze.targets)
        self._on_frozen(self.count)
        self._changed.set()

    def _hold(self) -> None:
        """The snapshot step: wait for the host's thaw, at most until the guardian's deadline."""
        freeze = self._freeze
        if freeze is None:
            return  # the run takes its snapshot unfrozen after a failed freeze: nothing to hold
        while not self._release.is_set():
            left = freeze.remaining_ns()
            if left is None or left <= 0:
                break
            self._release.wait(left / 1e9)
        if self._release.is_set():
            return
        # The deadline: the guardian thaws on its own now. Wait until it shows,
        # and thaw what it has not reached yet, so that guest-fsfreeze-status
        # says "thawed" only once it is true.
        settle = time.monotonic() + GUARDIAN_SETTLE_S
        while not freeze.guardian_fired and time.monotonic() < settle:
            time.sleep(0.001)
        with contextlib.suppress(quiesce.QuiesceError):
            freeze.thaw()  # a real failure is raised again, and reported, by the run's own thaw
        self.auto_thawed = True
        self._on_auto_thaw()
