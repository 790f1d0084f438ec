"""Which filesystems to freeze: eligibility, include and exclude, and the reason for every skip.

:func:`select` judges each filesystem (one ``major:minor``, all its mounts
together): FUSE, network, pseudo, read-only and unsupported types are
skipped; so are excluded ones, and with an include list the ones it does
not name; a filesystem on a loop image that lives on FUSE or a network
filesystem is skipped too (whoever serves the image could block its
FIFREEZE). Every mount left out gets a :class:`~quiesce.engine.plan.Skipped`
with its reason; the chosen ones come back in freeze order
(:mod:`quiesce.engine.order`).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quiesce.engine.mountinfo import (
    Mount,
    block_device_number,
    hidden_mounts,
    holding_index,
    read_loop_backing,
)
from quiesce.engine.order import LoopBacking, SourceDevice, backing_file, stack_order
from quiesce.engine.plan import Plan, Skipped, SkipReason
from quiesce.errors import ConfigError

#: Filesystem types known to implement FIFREEZE.
FREEZABLE_FSTYPES = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs",
        "gfs2", "ocfs2", "nilfs2", "bcachefs",
    }
)  # fmt: skip

#: Filesystems whose data lives on another machine: a local freeze means nothing.
NETWORK_FSTYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p",
        "afs", "lustre", "ncpfs", "coda", "davfs",
    }
)  # fmt: skip

#: Virtual filesystems with no disk behind them.
PSEUDO_FSTYPES = frozenset(
    {
        "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup",
        "cgroup2", "securityfs", "debugfs", "tracefs", "configfs", "bpf",
        "pstore", "mqueue", "hugetlbfs", "autofs", "binfmt_misc", "fusectl",
        "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs", "rootfs", "nfsd",
        "cpuset", "smackfs", "xenfs",
    }
)  # fmt: skip

#: Stacking filesystems: FIFREEZE on them fails with EOPNOTSUPP.
UNFREEZABLE_FSTYPES = frozenset({"overlay", "aufs"})

# btrfs reports an anonymous 0:N device per superblock, so major 0 alone does
# not mean "no disk" for it.
_ANONYMOUS_DEVICE_FSTYPES = frozenset({"btrfs"})

_Verdict = tuple[SkipReason, str]


@dataclass(frozen=True)
class _Rules:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    exclude_fstypes: tuple[str, ...]
    extra_fstypes: frozenset[str]
    loop_backing_fstypes: tuple[str, ...] = ()
    read_only: bool = False


def select(
    mounts: Iterable[Mount],
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    exclude_fstypes: Iterable[str] = (),
    extra_fstypes: Iterable[str] = (),
    loop_backing_fstypes: Iterable[str] = (),
    loop_backing: LoopBacking = read_loop_backing,
    source_device: SourceDevice = block_device_number,
    read_only: bool = False,
) -> Plan:
    """Choose the filesystems to freeze among ``mounts`` and order them.

    A filesystem (one ``major:minor``) is skipped, for all its mounts, when its
    type is FUSE, network, pseudo or has no freeze support, when its superblock
    is read-only, when any of its mounts matches ``exclude`` (mount points or
    fnmatch globs) or its type matches ``exclude_fstypes``, or, with a
    non-empty ``include``, when none of its mounts matches ``include``. These
    are checked in that order, so an included pseudo filesystem is reported as
    pseudo. ``extra_fstypes`` adds types that freeze; it does not override the
    FUSE, network, pseudo or stacking lists. ``read_only`` selects read-only
    superblocks of a freezable type too (FIFREEZE succeeds on them and
    blocks a remount read-write until the thaw; qemu-ga freezes them).

    A filesystem on a loop device whose image lives on a FUSE or network
    filesystem (directly, or through further loop devices) is skipped as
    ``fuse-backed`` or ``network-backed``: its FIFREEZE writes through to
    that image, so whoever runs the FUSE daemon (any user, for their own
    mounts) or the network can block it. ``loop_backing_fstypes`` (fstypes or
    globs) names backing types to accept anyway. The backing file is judged
    by its path alone: a stat() on FUSE could itself block.

    A selected filesystem is frozen through one representative mount: a mount
    not hidden under a later mount, preferring one that is not read-only, then
    root ``/``, then the shortest mount point, then the lowest mount ID. The
    representative is the target even when another mount of the filesystem is
    the one that matched ``include``; the others are skipped as duplicates.

    ``loop_backing(major, minor)`` gives a loop device's backing file; for a
    filesystem with an anonymous device (btrfs) it is asked about the device
    ``source_device(source)`` names. Targets come in freeze order: a
    filesystem on a loop device before the target holding its backing file;
    otherwise later mounts first, and ``/`` last.
    """
    mounts = tuple(mounts)
    # Taken once: a generator could not be read again for Plan.unmatched.
    included = _pattern_tuple(include, "include")
    rules = _Rules(
        include=_normalise_all(included, "include"),
        exclude=_normalise_all(exclude, "exclude"),
        exclude_fstypes=_pattern_tuple(exclude_fstypes, "exclude_fstypes"),
        extra_fstypes=frozenset(_pattern_tuple(extra_fstypes, "extra_fstypes")),
        loop_backing_fstypes=_pattern_tuple(loop_backing_fstypes, "loop_backing_fstypes"),
        read_only=read_only,
    )
    hidden = hidden_mounts(mounts)
    skipped: dict[int, Skipped] = {}
    chosen: list[int] = []
    for members in _group_by_device(mounts).values():
        representative, skips = _judge_filesystem(mounts, members, hidden, rules)
        skipped.update(skips)
        if representative is None:
            continue
        remote = _remote_backing(mounts, representative, hidden, rules, loop_backing, source_device)
        if remote is not None:
            skipped.update({index: Skipped(mounts[index], *remote) for index in members})
            continue
        chosen.append(representative)
    return Plan(
        targets=stack_order(mounts, chosen, hidden, loop_backing, source_device),
        skipped=tuple(skipped[index] for index in sorted(skipped)),
        unmatched=_unmatched(mounts, included, rules.include),
    )


def _pattern_tuple(patterns: Iterable[str], name: str) -> tuple[str, ...]:
    # A bare string is iterable too; taking it letter by letter would turn
    # include="/data" into the patterns "/", "d", "a"...
    if isinstance(patterns, str):
        raise TypeError(f"{name} must be a collection of strings, not a str")
    return tuple(patterns)


def _normalise_all(patterns: Iterable[str], name: str) -> tuple[str, ...]:
    return tuple(_normalise(pattern, name) for pattern in _pattern_tuple(patterns, name))


def _normalise(pattern: str, name: str) -> str:
    # An empty include must not silently widen to "everything".
    if not pattern.strip():
        raise ConfigError(f"empty {name} pattern")
    path = os.path.normpath(pattern)
    # POSIX normpath keeps a leading "//"; mount points never have one.
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path


def _matches(mount_point: str, pattern: str) -> bool:
    # Equality first: a mount point may contain "[" or "*" literally.
    return mount_point == pattern or fnmatch.fnmatchcase(mount_point, pattern)


def _unmatched(
    mounts: Sequence[Mount], given: tuple[str, ...], normalised: tuple[str, ...]
) -> tuple[str, ...]:
    missing: list[str] = []
    for pattern, normal in zip(given, normalised, strict=True):
        if pattern not in missing and not any(_matches(m.mount_point, normal) for m in mounts):
            missing.append(pattern)
    return tuple(missing)


def _group_by_device(mounts: Sequence[Mount]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, mount in enumerate(mounts):
        groups.setdefault((mount.major, mount.minor), []).append(index)
    return groups


# --------------------------------------------------------------------------
# the verdict on one filesystem


def _judge_filesystem(
    mounts: Sequence[Mount],
    members: list[int],
    hidden: dict[int, str],
    rules: _Rules,
) -> tuple[int | None, dict[int, Skipped]]:
    """Return the representative mount (or None) and the skipped mounts of one filesystem."""
    group = [mounts[index] for index in members]
    verdict = _kind_verdict(group, rules.extra_fstypes, rules.read_only) or _fstype_exclusion(group[0], rules)
    if verdict is not None:
        return None, {index: Skipped(mounts[index], *verdict) for index in members}
    per_mount = _path_exclusion(group, rules.exclude) or _inclusion(group, rules.include)
    if per_mount is not None:
        return None, {index: Skipped(mounts[index], *per_mount[n]) for n, index in enumerate(members)}
    reachable = [index for index in members if index not in hidden]
    if not reachable:
        return None, {
            index: Skipped(mounts[index], SkipReason.UNSUPPORTED, _hidden_detail(hidden[index]))
            for index in members
        }
    representative = min(reachable, key=lambda index: _preference(mounts[index], index))
    return representative, _duplicates(mounts, members, representative, hidden)


def _kind_verdict(group: list[Mount], extra: frozenset[str], read_only: bool = False) -> _Verdict | None:
    mount = group[0]
    fstype = mount.fstype
    if _is_fuse(fstype):
        return SkipReason.FUSE, f"fstype {fstype} is a FUSE filesystem"
    if fstype in NETWORK_FSTYPES:
        return SkipReason.NETWORK, f"fstype {fstype} is a network filesystem"
    if fstype in UNFREEZABLE_FSTYPES:
        return (
            SkipReason.UNSUPPORTED,
            f"fstype {fstype} cannot be frozen (FIFREEZE fails with EOPNOTSUPP)",
        )
    if fstype in PSEUDO_FSTYPES:
        return SkipReason.PSEUDO, f"fstype {fstype} is a pseudo filesystem"
    if mount.major == 0 and fstype not in _ANONYMOUS_DEVICE_FSTYPES and fstype not in extra:
        return (
            SkipReason.PSEUDO,
            f"fstype {fstype} is a pseudo filesystem (no block device: {mount.dev})",
        )
    # Super options are per superblock; requiring every line to agree errs
    # towards freezing, which is harmless on a read-only superblock.
    if not read_only and all(member.read_only for member in group):
        return SkipReason.READ_ONLY, f"filesystem {mount.dev} is read-only"
    if fstype not in FREEZABLE_FSTYPES and fstype not in extra:
        return (
            SkipReason.UNSUPPORTED,
            f"fstype {fstype} has no freeze support (add it with extra_fstypes if it does)",
        )
    return None


def _fstype_exclusion(mount: Mount, rules: _Rules) -> _Verdict | None:
    for pattern in rules.exclude_fstypes:
        if mount.fstype == pattern:
            return SkipReason.EXCLUDED, f"fstype {mount.fstype} is excluded"
        if fnmatch.fnmatchcase(mount.fstype, pattern):
            return (
                SkipReason.EXCLUDED,
                f"fstype {mount.fstype} matches excluded fstype pattern {pattern}",
            )
    return None


def _path_exclusion(group: list[Mount], exclude: tuple[str, ...]) -> list[_Verdict] | None:
    # Freezing is per superblock: excluding one mount of a filesystem excludes them all.
    matched = [_first_match(mount.mount_point, exclude) for mount in group]
    culprit = next(((m, p) for m, p in zip(group, matched, strict=True) if p is not None), None)
    if culprit is None:
        return None
    first, first_pattern = culprit
    return [
        (SkipReason.EXCLUDED, f"matches exclude pattern {pattern}")
        if pattern is not None
        else (
            SkipReason.EXCLUDED,
            f"same filesystem ({mount.dev}) as {first.mount_point}, "
            f"which matches exclude pattern {first_pattern}",
        )
        for mount, pattern in zip(group, matched, strict=True)
    ]


def _inclusion(group: list[Mount], include: tuple[str, ...]) -> list[_Verdict] | None:
    if not include or any(_first_match(mount.mount_point, include) for mount in group):
        return None
    return [(SkipReason.NOT_INCLUDED, "matches no include pattern")] * len(group)


def _first_match(mount_point: str, patterns: tuple[str, ...]) -> str | None:
    return next((pattern for pattern in patterns if _matches(mount_point, pattern)), None)


def _preference(mount: Mount, index: int) -> tuple[bool, bool, int, int, int]:
    return (mount.mount_read_only, mount.root != "/", len(mount.mount_point), mount.mount_id, index)


def _duplicates(
    mounts: Sequence[Mount], members: list[int], representative: int, hidden: dict[int, str]
) -> dict[int, Skipped]:
    chosen = mounts[representative]
    skips: dict[int, Skipped] = {}
    for index in members:
        if index == representative:
            continue
        detail = f"same filesystem ({chosen.dev}) as {chosen.mount_point}"
        if index in hidden:
            detail += f"; {_hidden_detail(hidden[index])}"
        skips[index] = Skipped(mounts[index], SkipReason.DUPLICATE, detail)
    return skips


def _hidden_detail(cover: str) -> str:
    return f"hidden under a later mount at {cover}"


def _is_fuse(fstype: str) -> bool:
    return fstype in ("fuse", "fuseblk") or fstype.startswith("fuse.")


def _remote_backing(
    mounts: Sequence[Mount],
    index: int,
    hidden: dict[int, str],
    rules: _Rules,
    loop_backing: LoopBacking,
    source_device: SourceDevice,
) -> _Verdict | None:
    """Why the filesystem at ``index`` must not be frozen because of where its image lives, or None.

    Follows the chain of loop devices down: an image on an ext4 that is itself
    a loop device on FUSE is as exposed as an image on FUSE.
    """
    seen = {index}
    mount = mounts[index]
    while True:
        backing = backing_file(mount, loop_backing, source_device)
        if backing is None:
            return None
        holder = holding_index(os.path.normpath(backing), mounts, hidden)
        if holder is None or holder in seen:
            return None
        seen.add(holder)
        held_by = mounts[holder]
        fstype = held_by.fstype
        fuse = _is_fuse(fstype)
        if (fuse or fstype in NETWORK_FSTYPES) and not any(
            fnmatch.fnmatchcase(fstype, pattern) for pattern in rules.loop_backing_fstypes
        ):
            who = "its FUSE daemon" if fuse else "the network"
            return (
                SkipReason.FUSE_BACKED if fuse else SkipReason.NETWORK_BACKED,
                f"on a loop device whose image {backing} lives on {fstype} at {held_by.mount_point}: "
                f"{who} can block its FIFREEZE (accept it with loop_backing_fstypes, "
                f"`--loop-backing-fstype {fstype}`)",
            )
        mount = held_by
