"""The mount table: ``/proc/self/mountinfo`` parsed, and what it says about each mount.

The kernel freezes a superblock, not a mount: every mount of one filesystem
(one ``major:minor``) is frozen by a single FIFREEZE. This module reads the
table (:func:`read_mountinfo`), writes a path back the way the table escapes
it (:func:`escape_path`), tells which mounts are hidden under later ones
(:func:`hidden_mounts`) and which mount a path lives on
(:func:`holding_mount`), and where a loop device keeps its image
(:func:`read_loop_backing`). Nothing here needs root or touches a
filesystem's freeze state.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quiesce.errors import MountinfoError, QuiesceOSError

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


def parse_mountinfo(text: str, fstype: str | None = None) -> list[Mount]:
    """Parse mountinfo text into mounts, in file order; blank lines are ignored.

    With ``fstype``, only the mounts of that type are parsed (and checked):
    the kernel escapes spaces in paths, so `` - <fstype> `` appears on a line
    only as its separator and type. Raises :class:`MountinfoError` naming the
    1-based line number and the fault.
    """
    marker = None if fstype is None else f" - {fstype} "
    # split("\n"), not splitlines(): the kernel escapes only space, tab, newline
    # and backslash, so a path may hold \r, \f or U+2028 verbatim.
    return [
        _parse_line(line, number)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip() and (marker is None or marker in line)
    ]


def read_mountinfo(path: str = "/proc/self/mountinfo", fstype: str | None = None) -> list[Mount]:
    """Read and parse a mountinfo file (see :func:`parse_mountinfo`; ``fstype`` as there).

    An unreadable file raises :class:`QuiesceOSError`; a malformed one
    :class:`MountinfoError` naming the file and the line.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as err:
        raise QuiesceOSError(err.errno or errno.EIO, "read mountinfo", path) from err
    try:
        return parse_mountinfo(os.fsdecode(raw), fstype)
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


def mount_summary(mount: Mount) -> dict[str, object]:
    """The identity of a mount in a plan's JSON: mount point, type, device, source, mount ID."""
    return {
        "mount_point": mount.mount_point,
        "fstype": mount.fstype,
        "dev": mount.dev,
        "source": mount.source,
        "mount_id": mount.mount_id,
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
# reachability: a mount covered by a later one cannot be opened by its path


def hidden_mounts(mounts: Sequence[Mount]) -> dict[int, str]:
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


def holding_mount(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The reachable mount that ``path`` (absolute, normalised) lives on, by its text alone."""
    mounts = tuple(mounts)
    index = holding_index(path, mounts, hidden_mounts(mounts))
    return None if index is None else mounts[index]


def holding_index(path: str, mounts: Sequence[Mount], hidden: dict[int, str]) -> int | None:
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


# and every other control character the same way.
_PATH_ESCAPES = {i: f"\\{i:03o}" for i in (*range(0x20), 0x20, 0x5C, 0x7F)}


def escape_path(path: str) -> str:
    """A path as one mountinfo field: ``\\ooo`` for space, tab, newline, backslash and controls.

    What quiesce hands to scripts as lines (``QUIESCE_TARGETS``) or prints
    as text: a mount point named ``"/srv/m\\n/srv/x"`` stays one line,
    ``/srv/m\\012/srv/x``. Decode it as mountinfo is decoded.
    """
    return path.translate(_PATH_ESCAPES)
