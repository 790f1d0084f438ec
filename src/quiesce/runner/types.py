"""A run's plain data: its options, its timeline, its result, the hold's announcement."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from quiesce.azure.config import DEFAULT_CONFIG_PATH, DEFAULT_PLUGINHOST_PATH, PluginConfig
from quiesce.azure.verdict import APPLICATION, FAILED
from quiesce.azure.vmbackup import VMBACKUP_CONF
from quiesce.engine.freeze import Freeze
from quiesce.engine.options import check_switches, path_option
from quiesce.engine.report import FreezeReport
from quiesce.engine.rundir import RUN_DIR
from quiesce.supervise.launch import Attempt
from quiesce.supervise.scripts import Progress, ScriptResult

#: The snapshot step, when quiesce is embedded: called inside the frozen window.
SnapshotStep = Callable[[], None]


@dataclass(frozen=True)
class HoldAnnouncement:
    """What the ``hold`` step tells the external snapshotter before it waits for the release.

    ``frozen`` lists the mount points frozen now; ``not_frozen`` the planned
    ones that are not, with ``reason`` saying why (``fsFreezeEnabled`` false,
    a failed freeze). The snapshotter takes its snapshot now either way and
    then releases; ``remaining_ns`` is the time left before the deadline
    (the guardian's, or the hold's own without a freeze).
    """

    run_id: str
    pid: int
    frozen: tuple[str, ...]
    not_frozen: tuple[str, ...]
    reason: str | None
    remaining_ns: int | None

    def to_event(self) -> dict[str, Any]:
        """The JSON ``frozen`` event (``targets``: what is frozen; ``is_frozen``: whether anything is)."""
        return {
            "event": "frozen",
            "run_id": self.run_id,
            "pid": self.pid,
            "targets": list(self.frozen),
            "is_frozen": bool(self.frozen),
            "not_frozen": list(self.not_frozen),
            "reason": self.reason,
            "remaining_ns": self.remaining_ns,
        }


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads its files and how it reports."""

    config_path: str = DEFAULT_CONFIG_PATH
    pluginhost_path: str | None = DEFAULT_PLUGINHOST_PATH
    vmbackup_conf: str | None = VMBACKUP_CONF
    run_dir: str = RUN_DIR
    progress: Progress | None = None
    #: Called once frozen, with the freeze, and only when the filesystems are
    #: frozen. ``hold`` mode: announce it (``on_hold`` is called in every case);
    #: the run then waits for a line or EOF on stdin (if ``hold_stdin``), a
    #: signal, or the deadline. With an embedded ``snapshot`` callable: called
    #: just before it (never before a snapshot taken unfrozen after a failed freeze).
    on_frozen: Callable[[Freeze], None] | None = None
    #: ``hold`` mode: called before the wait for the release, frozen or not
    #: (``fsFreezeEnabled`` false, or a failed freeze that may continue). If it
    #: raises, the snapshotter was never told: the hold ends at once, not trusted.
    on_hold: Callable[[HoldAnnouncement], None] | None = None
    hold_stdin: bool = True
    #: Called after the pre steps, the pre-flush and the guardian's arming,
    #: just before the first FIFREEZE (a fleet agent's barrier). Raising
    #: from it aborts the window: nothing is frozen, the post steps run, the
    #: run is not consistent (``FreezeAborted``).
    before_freeze: Callable[[Freeze], None] | None = None
    #: SIGTERM/SIGINT/SIGHUP stop the run (thaw, post steps, report), SIGUSR1
    #: (``quiesce thaw``) ends a window early. Needs the main thread; the CLI
    #: sets it, an embedding tool handles its own.
    handle_signals: bool = False
    #: The run's parent cgroup for its scripts; run() sets it (quiesce.supervise.cgroups.RunCgroup).
    cgroup_parent: str | None = None
    #: Called once the config is checked, before anything runs (the CLI paces
    #: its progress lines by ``ScriptsExecutionPollTimeSeconds``).
    on_config: Callable[[PluginConfig], None] | None = None

    def __post_init__(self) -> None:
        # Checked now, not found inside the window: a "no" that reads as true, a callback that is a string.
        check_switches(self, "handle_signals", "hold_stdin")
        for name in ("progress", "on_frozen", "on_hold", "before_freeze", "on_config"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a callable or None, not {type(value).__name__} {value!r}")
        for name in ("config_path", "pluginhost_path", "vmbackup_conf", "run_dir", "cgroup_parent"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, path_option(name, value))


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
    #: ok: the snapshot step ran and succeeded (and was not cut short); failed:
    #: it was due and gave no trusted snapshot; skipped: it was not due.
    snapshot: str = "skipped"
    snapshot_mode: str = "none"
    #: The snapshot step ran with every target frozen (False: without a freeze).
    snapshot_frozen: bool = False
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

    def set_error(self, name: str | None, code: int | None, message: str | None) -> None:
        """Record the run's error: the first one stays (later ones are in the steps' results)."""
        if self.error_name is None and name is not None:
            self.error_name, self.error_code, self.message = name, code, message


class Timeline:
    """Appends a timed :class:`Phase` to a result for each step."""

    def __init__(self, result: RunResult) -> None:
        self.result = result

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Time the block as phase ``name``; an exception marks it "error"."""
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

    def note(self, name: str, status: str, detail: str | None = None) -> None:
        """An untimed entry (something that did not run, or an event)."""
        self.result.phases.append(Phase(name, status, 0, detail))
