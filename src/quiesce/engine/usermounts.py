"""Mounts a local user controls: FUSE filesystems whose server is that user's process.

On FUSE, the kernel asks the filesystem's server what a file's owner, mode
and contents are. A user who mounts one (through the setuid ``fusermount``,
with ``user_allow_other`` in ``/etc/fuse.conf`` so that root sees it too)
decides what ``stat()`` says there: a file or a directory can show owner
root, mode 755, and change whenever the user likes, say on ``/run/user/1000``,
a directory of the user's below root's. Nothing on such a mount is root's
alone, whatever it shows, so the trust checks (:mod:`quiesce.engine.trust`)
judge the mount of every path they look at as well as its owner and mode.

The rule (:func:`mount_problem`): a ``fuse``, ``fuse.*`` or ``fuseblk`` mount
is a user's unless its ``user_id=`` super option, the uid that mounted it
(the kernel requires it; ``fusermount`` sets it to the user running it), is
0. A FUSE mount by root stays trusted: only root runs its server.

A path's mount is found without trusting its name (:class:`MountCheck`): the
path is opened ``O_PATH | O_NOFOLLOW`` and stat'ed through that fd, so the
owner and mode judged and the mount judged belong to one object; the fd's
mount ID (``mnt_id`` in ``/proc/self/fdinfo``) is looked up in
``/proc/self/mountinfo`` read after every fd of the check was opened, and
the fds stay open until then, so a mount ID cannot be freed and given to
another mount in between. A mount missing from that table was unmounted or
detached while it was checked: refused too.

Only the table's lines of the mounts seen are looked at, and a line is
parsed (:mod:`quiesce.engine.mountinfo`) only when it is a FUSE mount's:
``quiesce thaw`` checks its run directory this way and stays lean.
"""

from __future__ import annotations

import errno
import os
import pwd
from typing import TYPE_CHECKING, NamedTuple

from quiesce.closeable import Closeable
from quiesce.errors import QuiesceOSError

if TYPE_CHECKING:
    from quiesce.engine.mountinfo import Mount

MOUNTINFO = "/proc/self/mountinfo"
#: Opening a path to learn its mount: never following a link at the end, never reading it.
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def is_fuse(fstype: str) -> bool:
    """True for a FUSE filesystem type: ``fuse``, ``fuseblk``, ``fuse.<subtype>``."""
    return fstype in ("fuse", "fuseblk") or fstype.startswith("fuse.")


def mounter(mount: Mount) -> int | None:
    """The uid that mounted ``mount`` (its ``user_id=`` super option); None when it names none."""
    for option in mount.super_options:
        key, _, value = option.partition("=")
        if key == "user_id":
            return int(value) if value.isascii() and value.isdigit() else None
    return None


def mount_problem(mount: Mount) -> str | None:
    """Why nothing on ``mount`` is root's alone, or None: a FUSE filesystem someone but root mounted.

    A FUSE mount that names no mounter is refused as well: who runs its
    server cannot be told.
    """
    from quiesce.engine.mountinfo import escape_path

    if not is_fuse(mount.fstype):
        return None
    uid = mounter(mount)
    if uid == 0:
        return None
    who = "a user it does not name (no user_id=)" if uid is None else f"uid {uid}{_name(uid)}"
    return (
        f"is on a FUSE filesystem mounted by {who}, {mount.fstype} from {escape_path(mount.source)}"
        f" at {escape_path(mount.mount_point)} (mount ID {mount.mount_id}): that user's FUSE server,"
        " not the kernel, decides what it contains and which owner and mode it shows, at any time"
    )


def line_problem(line: str) -> tuple[str | None, Mount | None]:
    """:func:`mount_problem` of one mountinfo line, and the mount when it is a FUSE one.

    Any other type is told from the line's text alone, without parsing it.
    Raises :class:`~quiesce.errors.QuiesceOSError` for a FUSE line that
    cannot be parsed.
    """
    # The kernel escapes spaces in paths: " - " is only the separator.
    _, separator, tail = line.partition(" - ")
    if not separator or not is_fuse(tail.split(" ", 1)[0]):
        return None, None
    from quiesce.engine.mountinfo import parse_mountinfo
    from quiesce.errors import MountinfoError

    try:
        mount = parse_mountinfo(line)[0]
    except MountinfoError as err:
        raise QuiesceOSError(errno.EIO, f"read mountinfo ({err})", MOUNTINFO) from err
    return mount_problem(mount), mount


def _name(uid: int) -> str:
    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""


def mount_id_of_fd(fd: int) -> int | None:
    """The mount ID an open fd lives on (``mnt_id`` in ``/proc/self/fdinfo``)."""
    # os.open and one read, not open(): the trust checks ask this of every path they look at.
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # mnt_id is among the first lines, which one read returns whole.
        head = os.read(info, 4096)
    finally:
        os.close(info)
    for line in head.split(b"\n"):
        if line.startswith(b"mnt_id:"):
            return int(line.split()[1])
    return None


class Refused(NamedTuple):
    """A path a check looked at that lies on a mount root cannot trust, and why."""

    path: str
    #: Its ``stat``, as the check saw it (through the fd).
    st: os.stat_result
    problem: str
    #: The mount, when the table has it (None: it left the table, or has no ID).
    mount: Mount | None


class MountCheck(Closeable):
    """The mounts of the paths one check looks at, held open until they are judged.

    :meth:`lstat` replaces ``os.lstat`` in a check: the path is opened
    ``O_PATH | O_NOFOLLOW`` and stat'ed through the fd, which is kept.
    :meth:`refused` then reads the mount table once and judges every mount
    seen. :meth:`close` (or the end of a ``with`` block) closes the fds.
    """

    def __init__(self) -> None:
        self._seen: list[tuple[str, os.stat_result, int | None, int]] = []

    def lstat(self, path: str) -> os.stat_result:
        """``os.lstat(path)``, through an fd whose mount is judged later; the same errors."""
        fd = os.open(path, PATH_FLAGS)
        try:
            st = os.fstat(fd)
            mount_id = mount_id_of_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        self._seen.append((path, st, mount_id, fd))
        return st

    def refused(self) -> Refused | None:
        """The first path seen that lies on a mount root cannot trust (:func:`mount_problem`), or None.

        A path whose mount ID cannot be read, or whose mount is no longer
        in the table, is refused too. Raises ``OSError`` when the mount
        table cannot be read.
        """
        lines = lines_by_id({mount_id for _, _, mount_id, _ in self._seen if mount_id is not None})
        for path, st, mount_id, _ in self._seen:
            line = None if mount_id is None else lines.get(mount_id)
            mount = None
            if mount_id is None:
                problem: str | None = "cannot be placed on a mount (no mnt_id in /proc/self/fdinfo)"
            elif line is None:
                problem = f"was on mount ID {mount_id}, which left the mount table while it was being checked"
            else:
                problem, mount = line_problem(line)
            if problem is not None:
                return Refused(path, st, problem, mount)
        return None

    def close(self) -> None:
        """Close every fd held (idempotent)."""
        seen, self._seen = self._seen, []
        for _, _, _, fd in seen:
            os.close(fd)


def lines_by_id(ids: set[int], path: str = MOUNTINFO) -> dict[int, str]:
    """The lines of the mount table ``path`` of the mounts with these IDs, as text, by mount ID.

    Raises :class:`~quiesce.errors.QuiesceOSError` when the table cannot be read.
    """
    if not ids:
        return {}
    try:
        with open(path, "rb") as file:
            text = os.fsdecode(file.read())
    except OSError as err:
        raise QuiesceOSError(err.errno or errno.EIO, "read mountinfo", path) from err
    wanted = {str(mount_id): mount_id for mount_id in ids}
    found = {}
    for line in text.split("\n"):
        mount_id = wanted.get(line.split(" ", 1)[0])
        if mount_id is not None:
            found[mount_id] = line
    return found
