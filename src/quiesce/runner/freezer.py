"""The freezer a run drives: planning, freezing, the snapshot command, the hold's release.

:class:`Freezer` is the seam between the run's rules (``quiesce.runner.window``,
``quiesce.runner.job``) and the kernel: :class:`RealFreezer` plans from the mount
table, freezes with :class:`~quiesce.engine.freeze.Freeze` and runs commands as
real processes; tests drive the same scheduler with a freezer whose
outcomes they choose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from quiesce.azure.config import Extensions
from quiesce.azure.planning import plan_config
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.plan import Target
from quiesce.engine.report import FreezeReport
from quiesce.runner.hold import Release
from quiesce.supervise.launch import Attempt
from quiesce.supervise.snapshot_command import run_command, run_snapshot_command, unsafe_command


class FreezeLike(Protocol):
    """One freeze, as the run uses it (:class:`~quiesce.engine.freeze.Freeze`)."""

    targets: tuple[Target, ...]
    report: FreezeReport

    def prepare(self) -> None:
        """Lock, open, arm the guardian, write the ledger, pre-flush."""

    def freeze(self) -> None:
        """FIFREEZE every target; on failure nothing stays frozen."""

    def close(self) -> None:
        """Thaw what is left and clean up; the report is complete after."""

    def remaining_ns(self) -> int | None:
        """Time left before the guardian's deadline."""

    def record_error(self, err: BaseException) -> None:
        """Note the error that ended the freeze in the report."""


class ReleaseLike(Protocol):
    """The hold's wait for its release (:class:`~quiesce.runner.hold.Release`)."""

    #: A releasing signal that already arrived (before the wait began), or None.
    received: int | None

    def wait(self, remaining_ns: Callable[[], int | None], use_stdin: bool) -> str:
        """Block until released; returns what released it ("deadline" when time ran out)."""

    def close(self) -> None:
        """Restore what the wait changed."""


class Freezer(Protocol):
    """Everything a run does to filesystems and snapshot commands."""

    def plan(self, ext: Extensions, vmbackup_conf: str | None) -> Sequence[Target]:
        """The targets to freeze, in freeze order."""

    def open(self, targets: Sequence[Target], options: FreezeOptions) -> FreezeLike:
        """A freeze of ``targets`` (not prepared yet)."""

    def command(
        self,
        freeze: FreezeLike | None,
        argv: Sequence[str],
        *,
        timeout_s: float,
        grace_s: float,
        env: Mapping[str, str],
        run_id: str,
        cgroup_parent: str | None,
        release_fd: int,
        release_sig: int,
    ) -> Attempt:
        """Run the snapshot command: inside ``freeze``'s window (freezing it), or without one."""

    def release(self) -> ReleaseLike:
        """Set up the hold's release (before the freeze: nothing is set up inside the window)."""

    def check_command(self, argv: Sequence[str]) -> str | None:
        """Why the snapshot command must not run as root (checked with the scripts), or None."""


class RealFreezer:
    """The kernel's freezer and real processes."""

    def plan(self, ext: Extensions, vmbackup_conf: str | None) -> Sequence[Target]:
        """Plan from ``/proc/self/mountinfo``; TargetError if a named target cannot be frozen.

        See :func:`quiesce.azure.planning.plan_config`.
        """
        return plan_config(ext, vmbackup_conf).targets

    def open(self, targets: Sequence[Target], options: FreezeOptions) -> Freeze:
        """A :class:`~quiesce.engine.freeze.Freeze`."""
        return Freeze(targets, options)

    def command(
        self,
        freeze: FreezeLike | None,
        argv: Sequence[str],
        *,
        timeout_s: float,
        grace_s: float,
        env: Mapping[str, str],
        run_id: str,
        cgroup_parent: str | None,
        release_fd: int,
        release_sig: int,
    ) -> Attempt:
        """The command in one native window with ``freeze``, or as a supervised process without."""
        if freeze is None:
            return run_command(
                argv,
                timeout_s=timeout_s,
                grace_s=grace_s,
                env=env,
                run_id=run_id,
                cgroup_parent=cgroup_parent,
            )
        if not isinstance(freeze, Freeze):
            raise TypeError(f"a real snapshot command needs a real Freeze, not {type(freeze).__name__}")
        return run_snapshot_command(
            freeze,
            argv,
            timeout_s=timeout_s,
            grace_s=grace_s,
            env=env,
            run_id=run_id,
            cgroup_parent=cgroup_parent,
            release_fd=release_fd,
            release_sig=release_sig,
        )

    def release(self) -> Release:
        """:class:`~quiesce.runner.hold.Release`: its pipe and signal handlers, set up now."""
        return Release()

    def check_command(self, argv: Sequence[str]) -> str | None:
        """:func:`~quiesce.supervise.snapshot_command.unsafe_command` of ``argv[0]``, as a sentence."""
        unsafe = unsafe_command(argv[0])
        return None if unsafe is None else f"snapshot command {argv[0]} {unsafe}"
