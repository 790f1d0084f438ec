"""Turning what the user asked for into a freeze plan.

Reads the mount table and Azure's ``MountsToSkip``, calls
:func:`quiesce.mounts.select`, and checks named targets: a target the user
named that cannot be frozen is an error naming the reason, never a silent
skip.

A named path is resolved without trusting what a local user controls
(:func:`resolve_target`): a symlink on the way is followed only when it sits
in a directory that only root can write. A link planted by another user (say
in ``/srv/u/app``, when the target is ``/srv/u/app/data``) could otherwise
point root's freeze at any filesystem, ``/`` included. A path that reaches
``/`` through a link is refused too: ``/`` is frozen only when named as
``/``. A directory that is not itself a mount point is refused, naming the
filesystem it lives on: freezing a whole filesystem because a directory on
it was named would freeze more than asked (often ``/``).
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace

from quiesce.config import EXTENSION_KEY, Extensions
from quiesce.errors import IncorrectJSONConfigFile, TargetError
from quiesce.mounts import (
    Mount,
    Plan,
    SkipReason,
    Target,
    holding_mount,
    read_mountinfo,
    read_mounts_to_skip,
    select,
)

#: Azure Backup's snapshot settings; ``[SnapshotThread] MountsToSkip`` is honoured.
VMBACKUP_CONF = "/etc/azure/vmbackup.conf"

# The kernel's MAXSYMLINKS: more symlinks than this on one path is ELOOP.
_MAX_SYMLINKS = 40


def _is_glob(pattern: str) -> bool:
    return glob.has_magic(pattern)


@dataclass(frozen=True)
class Resolved:
    """A named target: the path it resolved to, or the problem that stopped it.

    ``links`` are the symlinks followed on the way (each in a root-only
    directory).
    """

    given: str
    path: str | None
    problem: str | None = None
    links: tuple[str, ...] = ()


def resolve_target(given: str) -> Resolved:
    """Resolve a named (non-glob) target the way root may trust it.

    Walks the path from ``/`` one component at a time, like the kernel, but
    follows a symlink only if the directory holding it is owned by root and
    writable by nobody else. Never raises: a problem is returned in words.
    """
    absolute = given if os.path.isabs(given) else os.path.join(os.getcwd(), given)
    pending = _components(absolute)
    current = "/"
    links: list[str] = []
    while pending:
        name = pending.pop(0)
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except OSError as err:
            return Resolved(given, None, _lookup_problem(given, candidate, err))
        if stat.S_ISLNK(st.st_mode):
            untrusted = _untrusted_directory(current)
            if untrusted is not None:
                return Resolved(
                    given,
                    None,
                    f"{given}: the path goes through the symlink {candidate}, in {current}, "
                    f"which {untrusted}: that user could point it at any filesystem; "
                    f"name the mount point itself",
                )
            links.append(candidate)
            if len(links) > _MAX_SYMLINKS:
                return Resolved(given, None, f"{given}: too many symlinks ({os.strerror(errno.ELOOP)})")
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = "/"
            pending[:0] = _components(target)
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            return Resolved(given, None, f"{given}: {candidate} is not a directory")
        current = candidate
    if current == "/" and os.path.normpath(absolute) != "/" and links:
        return Resolved(
            given,
            None,
            f"{given}: resolves to / through the symlink {links[-1]}; "
            "the root filesystem is frozen only when / itself is named",
        )
    return Resolved(given, current, None, tuple(links))


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _lookup_problem(given: str, candidate: str, err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        where = "" if os.path.normpath(given) == candidate else f" ({candidate} not found)"
        return f"{given}: no such file or directory{where}"
    return f"{given}: cannot look up {candidate}: {os.strerror(err.errno or 0)}"


def _untrusted_directory(path: str) -> str | None:
    """How someone other than root can change the directory ``path``, or None."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"cannot be examined ({os.strerror(err.errno or 0)})"
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def normalise_target(path: str) -> str:
    """A named target as the path it safely resolves to (globs only normalised).

    A target that does not resolve (see :func:`resolve_target`) is returned
    normalised as written; it then matches no mount point, or exactly the
    one that carries that name.
    """
    if _is_glob(path):
        return os.path.normpath(path)
    resolved = resolve_target(path)
    return resolved.path if resolved.path is not None else os.path.normpath(path)


def make_plan(
    targets: Sequence[str] = (),
    *,
    exclude: Sequence[str] = (),
    exclude_fstypes: Sequence[str] = (),
    extra_fstypes: Sequence[str] = (),
    loop_backing_fstypes: Sequence[str] = (),
    vmbackup_conf: str | None = VMBACKUP_CONF,
    mountinfo: str = "/proc/self/mountinfo",
) -> Plan:
    """Plan a freeze of ``targets`` (all freezable filesystems when empty).

    Named targets are resolved with :func:`resolve_target`; the plan's
    ``named`` and ``problems`` say what each became. Nothing is raised for a
    bad target here (``quiesce mounts`` shows the plan); see
    :func:`check_explicit`.
    """
    from quiesce.permissions import read_vmbackup_conf

    skip = read_mounts_to_skip(vmbackup_conf, read=read_vmbackup_conf) if vmbackup_conf else ()
    mounts = read_mountinfo(mountinfo)
    include: list[str] = []
    named: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    for given in targets:
        if _is_glob(given):
            include.append(given)
            continue
        resolved = resolve_target(given)
        if resolved.path is None:
            # Kept as written, so that it shows as unmatched and never widens the selection.
            include.append(given)
            problems.append((given, str(resolved.problem)))
            continue
        include.append(resolved.path)
        named.append((given, resolved.path))
        if not any(m.mount_point == resolved.path for m in mounts):
            problems.append((given, _not_a_mount_point(given, resolved.path, mounts)))
    plan = select(
        mounts,
        include=include,
        exclude=[*exclude, *skip],
        exclude_fstypes=exclude_fstypes,
        extra_fstypes=extra_fstypes,
        loop_backing_fstypes=loop_backing_fstypes,
    )
    return replace(plan, named=tuple(named), problems=tuple(problems))


def _not_a_mount_point(given: str, path: str, mounts: Sequence[Mount]) -> str:
    shown = given if os.path.normpath(given) == path else f"{given} (resolved to {path})"
    holder = holding_mount(path, mounts)
    if holder is None:
        return f"{shown}: not a mount point"
    return (
        f"{shown}: not a mount point: it is on the filesystem mounted at {holder.mount_point} "
        f"({holder.fstype}, {holder.dev}); name {holder.mount_point} to freeze that filesystem"
    )


def target_problems(plan: Plan, targets: Sequence[str]) -> list[str]:
    """Each named target that will not be frozen, with the reason (empty when all are fine)."""
    problems = [why for _, why in plan.problems]
    explained = {given for given, _ in plan.problems}
    explained |= {path for given, path in plan.named if given in explained}
    problems += [
        f"{t}: {'matches no mount point' if _is_glob(t) else 'not a mount point'}"
        for t in plan.unmatched
        if t not in explained
    ]
    problems += _globs_selecting_nothing(
        plan, [t for t in targets if _is_glob(t) and t not in plan.unmatched]
    )
    named = {path for _, path in plan.named} | {os.path.normpath(t) for t in targets if not _is_glob(t)}
    chosen = {t.mount.mount_point for t in plan.targets}
    for skipped in plan.skipped:
        m = skipped.mount
        if m.mount_point not in named or m.mount_point in chosen:
            continue
        if skipped.reason is SkipReason.DUPLICATE:
            continue  # frozen through another mount of the same filesystem
        problems.append(f"{m.mount_point}: {skipped.reason.value}: {skipped.detail}")
    return problems


def _globs_selecting_nothing(plan: Plan, globs: Sequence[str]) -> list[str]:
    """A glob that matches mount points, none of them freezable, selects nothing: say so."""
    frozen = [t.mount for t in plan.targets]
    frozen += [s.mount for s in plan.skipped if s.reason is SkipReason.DUPLICATE]
    problems = []
    for pattern in globs:
        normal = os.path.normpath(pattern)
        if any(fnmatch.fnmatchcase(m.mount_point, normal) for m in frozen):
            continue
        seen = [s for s in plan.skipped if fnmatch.fnmatchcase(s.mount.mount_point, normal)]
        why = ", ".join(f"{s.mount.mount_point} {s.reason.value}" for s in seen[:5])
        more = f" and {len(seen) - 5} more" if len(seen) > 5 else ""
        problems.append(f"{pattern}: matches no freezable filesystem (only {why}{more})")
    return problems


def check_explicit(plan: Plan, targets: Sequence[str]) -> None:
    """Raise TargetError when a named target will not be frozen, or nothing will."""
    problems = target_problems(plan, targets)
    if problems:
        raise TargetError("cannot freeze: " + "; ".join(problems))
    if not plan.targets:
        raise TargetError("nothing to freeze: no freezable filesystem selected")


def plan_config(ext: Extensions, vmbackup_conf: str | None = VMBACKUP_CONF) -> Plan:
    """The plan for a config's ``"quiesce"`` settings; TargetError if a named target cannot be frozen."""
    plan = make_plan(
        ext.targets,
        exclude=ext.exclude,
        exclude_fstypes=ext.exclude_fstypes,
        loop_backing_fstypes=ext.loop_backing_fstypes,
        vmbackup_conf=vmbackup_conf,
    )
    problems = target_problems(plan, ext.targets)
    if problems:
        raise TargetError(f"{EXTENSION_KEY}.targets: cannot freeze: " + "; ".join(problems))
    return plan


def check_config_targets(
    ext: Extensions, vmbackup_conf: str | None = VMBACKUP_CONF, source: str = "<config>"
) -> Plan:
    """:func:`plan_config` before anything runs: a bad named target is a config error (nothing runs)."""
    try:
        return plan_config(ext, vmbackup_conf)
    except TargetError as err:
        raise IncorrectJSONConfigFile(f"{source}: {err}") from err


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
