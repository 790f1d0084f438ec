"""Turning what the user asked for into a freeze plan.

Reads the mount table and Azure's ``MountsToSkip``, calls
:func:`quiesce.mounts.select`, and checks explicit targets: a target the user
named that cannot be frozen is an error naming the reason, never a silent
skip.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from quiesce.errors import TargetError
from quiesce.mounts import Plan, SkipReason, Target, read_mountinfo, read_mounts_to_skip, select

#: Azure Backup's snapshot settings; ``[SnapshotThread] MountsToSkip`` is honoured.
VMBACKUP_CONF = "/etc/azure/vmbackup.conf"


def _is_glob(pattern: str) -> bool:
    return glob.has_magic(pattern)


def normalise_target(path: str) -> str:
    """An explicit target as an absolute, symlink-free path (globs left alone)."""
    return path if _is_glob(path) else os.path.realpath(path)


def make_plan(
    targets: Sequence[str] = (),
    *,
    exclude: Sequence[str] = (),
    exclude_fstypes: Sequence[str] = (),
    extra_fstypes: Sequence[str] = (),
    vmbackup_conf: str | None = VMBACKUP_CONF,
    mountinfo: str = "/proc/self/mountinfo",
) -> Plan:
    """Plan a freeze of ``targets`` (all freezable filesystems when empty)."""
    skip = read_mounts_to_skip(vmbackup_conf) if vmbackup_conf else ()
    include = [normalise_target(t) for t in targets]
    return select(
        read_mountinfo(mountinfo),
        include=include,
        exclude=[*exclude, *skip],
        exclude_fstypes=exclude_fstypes,
        extra_fstypes=extra_fstypes,
    )


def check_explicit(plan: Plan, targets: Sequence[str]) -> None:
    """Raise TargetError when an explicitly named target will not be frozen."""
    problems = [f"{t}: not a mount point" for t in plan.unmatched]
    named = {normalise_target(t) for t in targets if not _is_glob(t)}
    chosen = {t.mount.mount_point for t in plan.targets}
    for skipped in plan.skipped:
        m = skipped.mount
        if m.mount_point not in named or m.mount_point in chosen:
            continue
        if skipped.reason is SkipReason.DUPLICATE:
            continue  # frozen through another mount of the same filesystem
        problems.append(f"{m.mount_point}: {skipped.reason.value}: {skipped.detail}")
    if problems:
        raise TargetError("cannot freeze: " + "; ".join(problems))
    if not plan.targets:
        raise TargetError("nothing to freeze: no freezable filesystem selected")


def parallel_groups(targets: Sequence[Target]) -> tuple[list[Target], list[int]]:
    """Regroup planned targets for a parallel freeze: (targets in order, group of each).

    Filesystems of one group freeze at the same time, groups one after the
    other. A filesystem on a loop device is in an earlier group than the
    filesystem holding its image (the stacked one must freeze first), and
    ``/`` freezes alone, last, as in the sequential order. The result is
    still a valid sequential order.
    """
    uppers: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        if t.backing_target is not None:
            uppers.setdefault(t.backing_target, []).append(i)
    levels: dict[int, int] = {}

    def level(i: int) -> int:
        if i not in levels:
            above = uppers.get(targets[i].mount.mount_point, [])
            levels[i] = 1 + max((level(j) for j in above), default=-1)
        return levels[i]

    for i in range(len(targets)):
        level(i)
    last = max(levels.values(), default=0) + 1
    for i, t in enumerate(targets):
        if t.mount.mount_point == "/":
            levels[i] = last
    order = sorted(range(len(targets)), key=lambda i: (levels[i], i))
    return [targets[i] for i in order], [levels[i] for i in order]
