"""Named targets: resolved the way root may trust them, planned, and checked.

Reads the mount table, calls :func:`quiesce.engine.selection.select`, and
checks named targets: a target the user named that cannot be frozen is an
error naming the reason, never a silent skip.

A named path is resolved without trusting what a local user controls
(:func:`resolve_target`): a symlink on the way is followed only when it sits
in a directory that only root can write. A link planted by another user (say
in ``/srv/u/app``, when the target is ``/srv/u/app/data``) could otherwise
point root's freeze at any filesystem, ``/`` included. A path that reaches
``/`` through a link is refused too: ``/`` is frozen only when named as
``/``. A link in a directory on a FUSE filesystem a user mounted is not
followed either: that user's server can show it as root's and re-point it.
A directory that is not itself a mount point is refused, naming the
filesystem it lives on: freezing a whole filesystem because a directory on
it was named would freeze more than asked (often ``/``).

:func:`freeze_targets` checks what a freeze is handed: planned Targets,
each filesystem once (a second FIFREEZE of one would fail with EBUSY, read
as "frozen by someone else").
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from quiesce.engine.mountinfo import Mount, holding_mount, read_mountinfo
from quiesce.engine.plan import Plan, SkipReason, Target
from quiesce.engine.selection import select
from quiesce.engine.trust import MAX_SYMLINKS, components
from quiesce.engine.usermounts import MountCheck
from quiesce.errors import TargetError

#: A path as the API takes it.
PathName = str | bytes | os.PathLike[str] | os.PathLike[bytes]


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
    pending = components(absolute)
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
            if len(links) > MAX_SYMLINKS:
                return Resolved(given, None, f"{given}: too many symlinks ({os.strerror(errno.ELOOP)})")
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = "/"
            pending[:0] = components(target)
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


def _lookup_problem(given: str, candidate: str, err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        where = "" if os.path.normpath(given) == candidate else f" ({candidate} not found)"
        return f"{given}: no such file or directory{where}"
    return f"{given}: cannot look up {candidate}: {os.strerror(err.errno or 0)}"


def _untrusted_directory(path: str) -> str | None:
    """How someone other than root can change the directory ``path``, or None.

    Its owner and mode, and its mount: on a user's FUSE mount the owner and
    mode are what that user's server says (:mod:`quiesce.engine.usermounts`).
    """
    with MountCheck() as mounts:
        try:
            st = mounts.lstat(path)
            refused = mounts.refused()
        except OSError as err:
            return f"cannot be examined ({os.strerror(err.errno or 0)})"
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None if refused is None else refused.problem


def plan_targets(
    targets: Iterable[PathName] = (),
    *,
    exclude: Iterable[PathName] = (),
    exclude_fstypes: Iterable[str] = (),
    extra_fstypes: Iterable[str] = (),
    loop_backing_fstypes: Iterable[str] = (),
    mountinfo: str = "/proc/self/mountinfo",
    read_only: bool = False,
) -> Plan:
    """Plan a freeze of ``targets`` (all freezable filesystems when empty).

    ``read_only``: read-only filesystems are frozen too (see :func:`select`).
    Every list is read once; a path may be ``str``, ``bytes`` or a path
    object; one string where a list is expected is a TypeError
    (:func:`list_of_names`).

    Named targets are resolved with :func:`resolve_target`; the plan's
    ``named`` and ``problems`` say what each became. Nothing is raised for a
    bad target here (``quiesce mounts`` shows the plan); see
    :func:`check_explicit`. Azure's ``MountsToSkip`` is honoured by
    :func:`quiesce.azure.planning.make_plan`, which calls this.
    """
    targets = list_of_names("targets", targets)
    exclude, exclude_fstypes = (
        list_of_names("exclude", exclude),
        list_of_names("exclude_fstypes", exclude_fstypes),
    )
    extra_fstypes = list_of_names("extra_fstypes", extra_fstypes)
    loop_backing_fstypes = list_of_names("loop_backing_fstypes", loop_backing_fstypes)
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
        exclude=exclude,
        exclude_fstypes=exclude_fstypes,
        extra_fstypes=extra_fstypes,
        loop_backing_fstypes=loop_backing_fstypes,
        read_only=read_only,
    )
    return replace(plan, named=tuple(named), problems=tuple(problems))


def list_of_names(key: str, value: Iterable[PathName]) -> list[str]:
    """``value`` read once into a list of str (paths may be bytes or path objects).

    One string where a list is expected would be read character by character:
    ``"/data"`` as ``"/"``, ``"d"``... and ``"/"`` is the root filesystem. It is
    a TypeError instead.
    """
    if isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{key} is a list of paths or names, not one path: write [{value!r}]")
    try:
        return [os.fsdecode(v) for v in value]
    except TypeError as err:
        raise TypeError(f"{key}: {err}") from None


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


def freeze_targets(targets: Iterable[Target]) -> tuple[Target, ...]:
    """``targets`` read once into a tuple: planned Targets, each filesystem once (else an exception)."""
    if isinstance(targets, (str, bytes, os.PathLike)):
        raise TypeError(
            "targets are a list of planned Targets (quiesce.plan(paths).targets), not one path; "
            "quiesce.frozen() also takes paths"
        )
    try:
        items = tuple(targets)
    except TypeError:
        raise TypeError(f"targets must be an iterable of Targets, not {type(targets).__name__}") from None
    for t in items:
        if not isinstance(t, Target):
            raise TypeError(
                f"a Freeze takes planned Targets (quiesce.plan(paths).targets), not {type(t).__name__} "
                f"{t!r}; quiesce.frozen() also takes paths"
            )
    seen: dict[str, str] = {}
    for t in items:
        m = t.mount
        if m.dev in seen:
            raise TargetError(
                f"the filesystem {m.dev} is named twice ({seen[m.dev]} and {m.mount_point}): "
                "a filesystem is frozen once"
            )
        seen[m.dev] = m.mount_point
    return items
