"""Which filesystems to freeze, and in what order.

The kernel freezes a superblock, not a mount: every mount of one filesystem
(one ``major:minor`` in ``/proc/self/mountinfo``) is frozen by a single
FIFREEZE, and a second FIFREEZE through another mount of it fails with EBUSY.
So this module reads mountinfo, groups mounts by filesystem, explains every
mount it leaves out (:class:`Skipped`), and picks one reachable mount point per
filesystem to freeze through (:class:`Target`), ordered so that a filesystem on
a loop device is frozen before the filesystem holding its backing file.

It also reads the ``MountsToSkip`` list of Azure's ``/etc/azure/vmbackup.conf``.
Nothing here needs root or touches a filesystem's freeze state.
"""

from __future__ import annotations

import configparser
import errno
import fnmatch
import heapq
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from quiesce.errors import ConfigError, MountinfoError, QuiesceOSError

__all__ = [
    "FREEZABLE_FSTYPES",
    "NETWORK_FSTYPES",
    "PSEUDO_FSTYPES",
    "UNFREEZABLE_FSTYPES",
    "Mount",
    "Plan",
    "SkipReason",
    "Skipped",
    "Target",
    "block_device_number",
    "holding_mount",
    "parse_mountinfo",
    "read_loop_backing",
    "read_mountinfo",
    "read_mounts_to_skip",
    "select",
]

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

_OCTAL_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")
_NUMBER = re.compile(r"[0-9]+")
_DEVICE = re.compile(r"([0-9]+):([0-9]+)")
_FIELDS_BEFORE_SEPARATOR = 6
_FIELDS_AFTER_SEPARATOR = 3
_DELETED_SUFFIX = " (deleted)"


# --------------------------------------------------------------------------
# mountinfo


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/<pid>/mountinfo``: one mount of one filesystem."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def dev(self) -> str:
        """The filesystem's device number as ``"major:minor"``."""
        return f"{self.major}:{self.minor}"

    @property
    def read_only(self) -> bool:
        """True when the superblock itself is read-only (nothing to freeze)."""
        return "ro" in self.super_options

    @property
    def mount_read_only(self) -> bool:
        """True when this mount is read-only (the superblock may still be writable)."""
        return "ro" in self.mount_options

    def to_dict(self) -> dict[str, object]:
        """Every field, plus ``dev``, as JSON-serialisable plain data."""
        return {
            "mount_id": self.mount_id,
            "parent_id": self.parent_id,
            "dev": self.dev,
            "major": self.major,
            "minor": self.minor,
            "root": self.root,
            "mount_point": self.mount_point,
            "mount_options": list(self.mount_options),
            "optional_fields": list(self.optional_fields),
            "fstype": self.fstype,
            "source": self.source,
            "super_options": list(self.super_options),
        }


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text into mounts, in file order; blank lines are ignored.

    Raises :class:`MountinfoError` naming the 1-based line number and the fault.
    """
    # split("\n"), not splitlines(): the kernel escapes only space, tab, newline
    # and backslash, so a path may hold \r, \f or U+2028 verbatim.
    return [
        _parse_line(line, number) for number, line in enumerate(text.split("\n"), start=1) if line.strip()
    ]


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """Read and parse a mountinfo file (see :func:`parse_mountinfo`).

    An unreadable file raises :class:`QuiesceOSError`; a malformed one
    :class:`MountinfoError` naming the file and the line.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as err:
        raise QuiesceOSError(err.errno or errno.EIO, "read mountinfo", path) from err
    try:
        return parse_mountinfo(os.fsdecode(raw))
    except MountinfoError as err:
        raise MountinfoError(f"{path}: {err}") from err


def _parse_line(line: str, number: int) -> Mount:
    # Split on single spaces so that an empty source (possible with the new
    # mount API) stays an empty field instead of shifting the others.
    fields = line.split(" ")
    separator = _separator_index(fields, number)
    tail = fields[separator + 1 :]
    if len(tail) != _FIELDS_AFTER_SEPARATOR:
        raise _line_error(
            number,
            f"expected 3 fields after the '-' separator (fstype, source, super options), found {len(tail)}",
        )
    major, minor = _parse_device(fields[2], number)
    return Mount(
        mount_id=_parse_number(fields[0], "mount ID", number),
        parent_id=_parse_number(fields[1], "parent ID", number),
        major=major,
        minor=minor,
        root=_unescape(fields[3], number),
        mount_point=_nonempty(_unescape(fields[4], number), "mount point", number),
        mount_options=_parse_options(fields[5], number),
        optional_fields=tuple(fields[_FIELDS_BEFORE_SEPARATOR:separator]),
        fstype=_nonempty(_unescape(tail[0], number), "filesystem type", number),
        source=_unescape(tail[1], number),
        super_options=_parse_options(tail[2], number),
    )


def _separator_index(fields: list[str], number: int) -> int:
    # The optional fields never equal "-", and the search starts after the
    # six fixed fields, so a mount point named "-" cannot be mistaken for it.
    for index in range(_FIELDS_BEFORE_SEPARATOR, len(fields)):
        if fields[index] == "-":
            return index
    raise _line_error(
        number,
        f"no '-' separator after the {_FIELDS_BEFORE_SEPARATOR} leading fields ({len(fields)} fields in all)",
    )


def _parse_number(field: str, name: str, number: int) -> int:
    # A regex rather than int() alone: int() accepts "+1", "1_0" and non-ASCII digits.
    if not _NUMBER.fullmatch(field):
        raise _line_error(number, f"{name} {field!r} is not a non-negative integer")
    return int(field)


def _parse_device(field: str, number: int) -> tuple[int, int]:
    match = _DEVICE.fullmatch(field)
    if match is None:
        raise _line_error(number, f"device {field!r} is not major:minor")
    return int(match.group(1)), int(match.group(2))


def _parse_options(field: str, number: int) -> tuple[str, ...]:
    # Split before unescaping: a comma inside an option value arrives as \054.
    return tuple(_unescape(option, number) for option in field.split(",") if option)


def _nonempty(value: str, name: str, number: int) -> str:
    if not value:
        raise _line_error(number, f"empty {name}")
    return value


def _unescape(field: str, number: int) -> str:
    """Decode the kernel's ``\\ooo`` octal escapes.

    Escapes stand for bytes, so a run of them may spell one UTF-8 character;
    decoding goes through bytes the way ``open()`` will encode the path.
    A backslash not followed by three octal digits is kept as it is.
    """
    if "\\" not in field:
        return field
    try:
        raw = os.fsencode(field)
    except UnicodeEncodeError as err:
        raise _line_error(number, f"undecodable text in {field!r}") from err
    return os.fsdecode(_OCTAL_ESCAPE.sub(_escaped_byte, raw))


def _escaped_byte(match: re.Match[bytes]) -> bytes:
    return bytes([int(match.group(1), 8)])


def _line_error(number: int, what: str) -> MountinfoError:
    return MountinfoError(f"mountinfo line {number}: {what}")


# --------------------------------------------------------------------------
# selection results


class SkipReason(StrEnum):
    """Why a mount is not frozen; each value is the string the CLI and JSON show."""

    PSEUDO = "pseudo"
    NETWORK = "network"
    FUSE = "fuse"
    READ_ONLY = "read-only"
    DUPLICATE = "duplicate"
    EXCLUDED = "excluded"
    UNSUPPORTED = "unsupported"
    NOT_INCLUDED = "not-included"
    #: On a loop device whose image lives on FUSE: its daemon can block FIFREEZE.
    FUSE_BACKED = "fuse-backed"
    #: On a loop device whose image lives on a network filesystem.
    NETWORK_BACKED = "network-backed"


def _mount_summary(mount: Mount) -> dict[str, object]:
    return {
        "mount_point": mount.mount_point,
        "fstype": mount.fstype,
        "dev": mount.dev,
        "source": mount.source,
        "mount_id": mount.mount_id,
    }


@dataclass(frozen=True)
class Skipped:
    """A mount that will not be frozen, why (``reason``), and a sentence saying so."""

    mount: Mount
    reason: SkipReason
    detail: str

    def to_dict(self) -> dict[str, object]:
        """The mount's identity, the reason's value and the detail, as plain data."""
        return {**_mount_summary(self.mount), "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True)
class Target:
    """A filesystem to freeze, through the mount point of ``mount``.

    ``backing_file`` is the loop device's backing file when the filesystem sits
    on one; ``backing_target`` is the mount point of the selected target that
    holds that file (it must be frozen after this one and thawed before it).
    """

    mount: Mount
    backing_file: str | None
    backing_target: str | None

    def to_dict(self) -> dict[str, object]:
        """The mount's identity and the loop backing, as plain data."""
        return {
            **_mount_summary(self.mount),
            "backing_file": self.backing_file,
            "backing_target": self.backing_target,
        }


@dataclass(frozen=True)
class Plan:
    """The outcome of :func:`select`.

    ``targets`` are in freeze order (thaw in reverse); ``skipped`` lists every
    other mount in mountinfo order; ``unmatched`` holds the include patterns,
    as given, that matched no mount at all. ``named`` and ``problems`` are
    filled by :func:`quiesce.plan.make_plan`: each named path with the path
    it resolved to, and each named path that cannot be used with a sentence
    saying why (missing, not a mount point, reached through a link a user
    could plant).
    """

    targets: tuple[Target, ...]
    skipped: tuple[Skipped, ...]
    unmatched: tuple[str, ...]
    named: tuple[tuple[str, str], ...] = ()
    problems: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The whole plan as plain data."""
        return {
            "targets": [target.to_dict() for target in self.targets],
            "skipped": [skipped.to_dict() for skipped in self.skipped],
            "unmatched": list(self.unmatched),
            "named": [{"given": given, "path": path} for given, path in self.named],
            "problems": [{"given": given, "problem": why} for given, why in self.problems],
        }


# --------------------------------------------------------------------------
# loop devices


def read_loop_backing(major: int, minor: int, *, sysfs: str = "/sys") -> str | None:
    """The backing file of loop device ``major:minor``, or None.

    None when the device is not a loop device, is not bound, or its backing file
    was deleted. A partition of a loop device reports its parent's file.
    """
    device = os.path.join(sysfs, "dev", "block", f"{major}:{minor}")
    backing = _read_sysfs_line(os.path.join(device, "loop", "backing_file"))
    if backing is None and os.path.exists(os.path.join(device, "partition")):
        # sysfs resolves ".." physically: from loop0p1 to loop0.
        backing = _read_sysfs_line(os.path.join(device, "..", "loop", "backing_file"))
    if not backing or backing.endswith(_DELETED_SUFFIX):
        return None
    return backing


def _read_sysfs_line(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError:
        return None
    text = os.fsdecode(raw)
    return text[:-1] if text.endswith("\n") else text


def block_device_number(path: str) -> tuple[int, int] | None:
    """``(major, minor)`` of the block device at ``path``, or None if it is not one."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISBLK(info.st_mode):
        return None
    return os.major(info.st_rdev), os.minor(info.st_rdev)


# --------------------------------------------------------------------------
# selection

_Verdict = tuple[SkipReason, str]


@dataclass(frozen=True)
class _Rules:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    exclude_fstypes: tuple[str, ...]
    extra_fstypes: frozenset[str]
    loop_backing_fstypes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Candidate:
    index: int
    backing_file: str | None
    holder: int | None


def select(
    mounts: Iterable[Mount],
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    exclude_fstypes: Iterable[str] = (),
    extra_fstypes: Iterable[str] = (),
    loop_backing_fstypes: Iterable[str] = (),
    loop_backing: Callable[[int, int], str | None] = read_loop_backing,
    source_device: Callable[[str], tuple[int, int] | None] = block_device_number,
) -> Plan:
    """Choose the filesystems to freeze among ``mounts`` and order them.

    A filesystem (one ``major:minor``) is skipped, for all its mounts, when its
    type is FUSE, network, pseudo or has no freeze support, when its superblock
    is read-only, when any of its mounts matches ``exclude`` (mount points or
    fnmatch globs) or its type matches ``exclude_fstypes``, or, with a
    non-empty ``include``, when none of its mounts matches ``include``. These
    are checked in that order, so an included pseudo filesystem is reported as
    pseudo. ``extra_fstypes`` adds types that freeze; it does not override the
    FUSE, network, pseudo or stacking lists.

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
    )
    hidden = _hidden_mounts(mounts)
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
    candidates = _break_cycles(mounts, _candidates(mounts, chosen, hidden, loop_backing, source_device))
    return Plan(
        targets=_targets(mounts, _freeze_order(mounts, candidates), candidates),
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
# reachability: a mount covered by a later one cannot be opened by its path


def _hidden_mounts(mounts: Sequence[Mount]) -> dict[int, str]:
    """Map the index of every unreachable mount to the path of the mount covering it.

    A mount is covered by a mount stacked on it (its child at the same path),
    or by a later mount at its own path or at an ancestor path that is not one
    of its ancestors in the mount tree. The tree check keeps mounts that were
    moved under a newer root (as after an initramfs switch_root, where /proc
    precedes / in mountinfo) reachable.
    """
    at_path: dict[str, list[int]] = {}
    for index, mount in enumerate(mounts):
        at_path.setdefault(mount.mount_point, []).append(index)
    by_id = {mount.mount_id: mount for mount in mounts}
    hidden: dict[int, str] = {}
    for index, mount in enumerate(mounts):
        cover = _cover(index, mounts, at_path, _ancestor_ids(mount, by_id))
        if cover is not None:
            hidden[index] = cover
    return hidden


def _cover(
    index: int,
    mounts: Sequence[Mount],
    at_path: dict[str, list[int]],
    ancestors: frozenset[int],
) -> str | None:
    mount = mounts[index]
    for path in _path_prefixes(mount.mount_point):
        for other in at_path.get(path, ()):
            if other == index:
                continue
            candidate = mounts[other]
            stacked = path == mount.mount_point and candidate.parent_id == mount.mount_id
            later = other > index and candidate.mount_id not in ancestors
            if stacked or later:
                return path
    return None


def _ancestor_ids(mount: Mount, by_id: dict[int, Mount]) -> frozenset[int]:
    seen: set[int] = set()
    parent = by_id.get(mount.parent_id)
    # The namespace root's parent is itself or invisible; a cycle ends the walk too.
    while parent is not None and parent.mount_id not in seen and parent is not mount:
        seen.add(parent.mount_id)
        parent = by_id.get(parent.parent_id)
    return frozenset(seen)


def _path_prefixes(path: str) -> Iterable[str]:
    """``path`` and each of its ancestors, longest first: /a/b, /a, /."""
    yield path
    while path != "/" and "/" in path:
        path = path.rsplit("/", 1)[0] or "/"
        yield path


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
    verdict = _kind_verdict(group, rules.extra_fstypes) or _fstype_exclusion(group[0], rules)
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


def _kind_verdict(group: list[Mount], extra: frozenset[str]) -> _Verdict | None:
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
    if all(member.read_only for member in group):
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


# --------------------------------------------------------------------------
# loop stacks and freeze order


def _candidates(
    mounts: Sequence[Mount],
    chosen: list[int],
    hidden: dict[int, str],
    loop_backing: Callable[[int, int], str | None],
    source_device: Callable[[str], tuple[int, int] | None],
) -> dict[int, _Candidate]:
    """Each chosen mount with its loop backing file and the chosen mount holding that file."""
    representative_of = {(mounts[i].major, mounts[i].minor): i for i in chosen}
    candidates: dict[int, _Candidate] = {}
    for index in chosen:
        backing = _backing_file(mounts[index], loop_backing, source_device)
        holder = None
        if backing is not None:
            holding = _holding_mount(os.path.normpath(backing), mounts, hidden)
            if holding is not None:
                held_by = mounts[holding]
                holder = representative_of.get((held_by.major, held_by.minor))
        # A file "on itself" is a path that now resolves through the upper's own
        # mount (it was mounted over its image): no constraint can be drawn.
        candidates[index] = _Candidate(index, backing, None if holder == index else holder)
    return candidates


def _backing_file(
    mount: Mount,
    loop_backing: Callable[[int, int], str | None],
    source_device: Callable[[str], tuple[int, int] | None],
) -> str | None:
    if mount.major != 0:
        return loop_backing(mount.major, mount.minor)
    # btrfs shows an anonymous 0:N; its source names the real device.
    if mount.source.startswith("/dev/"):
        device = source_device(mount.source)
        if device is not None:
            return loop_backing(*device)
    return None


def _is_fuse(fstype: str) -> bool:
    return fstype in ("fuse", "fuseblk") or fstype.startswith("fuse.")


def _remote_backing(
    mounts: Sequence[Mount],
    index: int,
    hidden: dict[int, str],
    rules: _Rules,
    loop_backing: Callable[[int, int], str | None],
    source_device: Callable[[str], tuple[int, int] | None],
) -> _Verdict | None:
    """Why the filesystem at ``index`` must not be frozen because of where its image lives, or None.

    Follows the chain of loop devices down: an image on an ext4 that is itself
    a loop device on FUSE is as exposed as an image on FUSE.
    """
    seen = {index}
    mount = mounts[index]
    while True:
        backing = _backing_file(mount, loop_backing, source_device)
        if backing is None:
            return None
        holder = _holding_mount(os.path.normpath(backing), mounts, hidden)
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


def holding_mount(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The reachable mount that ``path`` (absolute, normalised) lives on, by its text alone."""
    mounts = tuple(mounts)
    index = _holding_mount(path, mounts, _hidden_mounts(mounts))
    return None if index is None else mounts[index]


def _holding_mount(path: str, mounts: Sequence[Mount], hidden: dict[int, str]) -> int | None:
    """The reachable mount whose mount point is the longest component-wise prefix of ``path``.

    Among equal mount points the last one in mountinfo order wins.
    """
    best: int | None = None
    best_length = -1
    for index, mount in enumerate(mounts):
        point = mount.mount_point
        if index in hidden or not _is_within(path, point):
            continue
        if len(point) >= best_length:
            best, best_length = index, len(point)
    return best


def _is_within(path: str, directory: str) -> bool:
    # Component-wise: /data2/x is not within /data.
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _rank(mounts: Sequence[Mount], index: int) -> tuple[bool, int]:
    """Sort key among unconstrained targets: later mounts first, ``/`` last."""
    return mounts[index].mount_point == "/", -index


def _break_cycles(mounts: Sequence[Mount], candidates: dict[int, _Candidate]) -> dict[int, _Candidate]:
    """Drop one backing link from every cycle of "upper -> holder" links.

    A cycle cannot happen on a sane system, but backing paths are only text and
    can mislead. Each target has at most one holder, so following holders from
    any target ends at a root or loops once; the link dropped is the one leaving
    the cycle's best-ranked member, which keeps the result deterministic.
    """
    result = dict(candidates)
    done: set[int] = set()
    for start in sorted(result):
        walk: list[int] = []
        node: int | None = start
        while node is not None and node not in done and node not in walk:
            walk.append(node)
            node = result[node].holder
        if node is not None and node in walk:
            cut = min(walk[walk.index(node) :], key=lambda i: _rank(mounts, i))
            result[cut] = replace(result[cut], holder=None)
        done.update(walk)
    return result


def _freeze_order(mounts: Sequence[Mount], candidates: dict[int, _Candidate]) -> list[int]:
    """Topological order: each upper before the target holding its backing file.

    Kahn's algorithm over an acyclic graph; among the targets that are free to
    go, later mounts go first and ``/`` last.
    """
    waiting = {index: 0 for index in candidates}
    for candidate in candidates.values():
        if candidate.holder is not None:
            waiting[candidate.holder] += 1
    ready = [(_rank(mounts, index), index) for index, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(index)
        holder = candidates[index].holder
        if holder is not None:
            waiting[holder] -= 1
            if waiting[holder] == 0:
                heapq.heappush(ready, (_rank(mounts, holder), holder))
    return order


def _targets(
    mounts: Sequence[Mount], order: list[int], candidates: dict[int, _Candidate]
) -> tuple[Target, ...]:
    targets: list[Target] = []
    for index in order:
        candidate = candidates[index]
        holder = candidate.holder
        targets.append(
            Target(
                mount=mounts[index],
                backing_file=candidate.backing_file,
                backing_target=None if holder is None else mounts[holder].mount_point,
            )
        )
    return tuple(targets)


# --------------------------------------------------------------------------
# Azure's vmbackup.conf


def read_mounts_to_skip(
    path: str = "/etc/azure/vmbackup.conf", *, read: Callable[[str], bytes] | None = None
) -> tuple[str, ...]:
    """The ``MountsToSkip`` mount points of ``[SnapshotThread]`` in Azure's vmbackup.conf.

    ``read`` replaces the plain file read (quiesce passes
    :func:`quiesce.permissions.read_vmbackup_conf`, which checks owner, mode
    and directories first and raises its own error). A missing file, section
    or key gives ``()``. An unreadable or unparseable file raises
    :class:`ConfigError` naming it.
    """
    try:
        if read is None:
            with open(path, "rb") as file:
                raw = file.read()
        else:
            raw = read(path)
        # utf-8-sig: a file saved by a Windows editor starts with a BOM, which
        # configparser would otherwise read as part of the first section header.
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        return ()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from err
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as err:
        raise ConfigError(f"{path} is not a valid INI file: {err}") from err
    value = parser.get("SnapshotThread", "MountsToSkip", fallback="")
    return tuple(item.strip() for item in value.split(",") if item.strip())


# Space, tab, newline and backslash as the kernel writes them in mountinfo,
# and every other control character the same way.
_PATH_ESCAPES = {i: f"\\{i:03o}" for i in (*range(0x20), 0x20, 0x5C, 0x7F)}


def escape_path(path: str) -> str:
    """A path as one mountinfo field: ``\\ooo`` for space, tab, newline, backslash and controls.

    What quiesce hands to scripts as lines (``QUIESCE_TARGETS``) or prints
    as text: a mount point named ``"/srv/m\\n/srv/x"`` stays one line,
    ``/srv/m\\012/srv/x``. Decode it as mountinfo is decoded.
    """
    return path.translate(_PATH_ESCAPES)
