"""quiesce: application-consistent snapshots on Linux.

Freeze filesystems (FIFREEZE) for as short a window as the kernel allows,
with a guardian process that thaws whatever happens to the caller.

The public API::

    plan = quiesce.make_plan(["/data", "/var/lib/db"])
    with quiesce.frozen(plan.targets, quiesce.FreezeOptions(timeout_s=10)) as f:
        take_snapshot()
    print(f.report.window_ns)
"""

from quiesce.errors import (
    FreezeError,
    FreezeNotSupportedError,
    FreezeTimeoutError,
    FrozenByOtherError,
    LockHeldError,
    NotFrozenError,
    QuiesceError,
    TargetError,
    ThawError,
)
from quiesce.freeze import FilesystemResult, Freeze, FreezeOptions, FreezeReport, frozen
from quiesce.mounts import Plan, Skipped, SkipReason, Target
from quiesce.plan import make_plan

__all__ = [
    "FilesystemResult",
    "Freeze",
    "FreezeError",
    "FreezeNotSupportedError",
    "FreezeOptions",
    "FreezeReport",
    "FreezeTimeoutError",
    "FrozenByOtherError",
    "LockHeldError",
    "NotFrozenError",
    "Plan",
    "QuiesceError",
    "SkipReason",
    "Skipped",
    "Target",
    "TargetError",
    "ThawError",
    "frozen",
    "make_plan",
]
