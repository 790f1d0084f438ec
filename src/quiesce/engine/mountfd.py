"""Opening a planned mount point: no symlink on the way, and the fd on the mount that was planned.

What is frozen is always the mount point itself. Between planning and
freezing, a directory could be replaced by a link or a mount unmounted and
another mounted there: :func:`open_target` walks the path without
following any link and checks the open fd's mount ID (``mnt_id`` in
``/proc/self/fdinfo``) and that mount's device against the plan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from quiesce.engine.mountinfo import Mount
from quiesce.engine.plan import Target
from quiesce.engine.usermounts import mount_id_of_fd
from quiesce.errors import QuiesceOSError, TargetError


def open_target(target: Target, current: Mapping[int, Mount] | None = None) -> int:
    """Open a target's mount point and check, on the fd, that it is still the planned mount.

    The path is walked one component at a time without following any
    symlink (a mount point as mountinfo shows it has none; one found now was
    planted since). The fd's mount ID must be the planned one and, with
    ``current`` (the mount table now, by mount ID), so must its device and
    mount point: a mount ID freed by an unmount can be given to a new mount.
    """
    path = target.mount.mount_point
    try:
        fd = open_no_symlinks(path)
    except OSError as err:
        raise QuiesceOSError(err.errno or 0, "opening the mount point", path) from err
    mnt_id = mount_id_of_fd(fd)
    now = None if current is None or mnt_id is None else current.get(mnt_id)
    planned = target.mount
    changed = None
    if mnt_id is None:
        changed = "its mount ID cannot be read"
    elif mnt_id != planned.mount_id:
        changed = f"mount ID {mnt_id}, planned {planned.mount_id}"
    elif current is not None and (now is None or (now.dev, now.mount_point) != (planned.dev, path)):
        seen = "gone" if now is None else f"{now.dev} at {now.mount_point}"
        changed = f"mount ID {mnt_id} is now {seen}, planned {planned.dev} at {path}"
    if changed is not None:
        os.close(fd)
        raise TargetError(f"{path}: the mount changed since it was planned ({changed}); plan again")
    return fd


def open_no_symlinks(path: str) -> int:
    """``open(path, O_RDONLY | O_DIRECTORY)`` refusing a symlink in any component (ELOOP/ENOTDIR)."""
    names = [part for part in path.split("/") if part]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(names):
            last = i == len(names) - 1
            flags = (os.O_RDONLY if last else os.O_PATH) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            next_fd = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        if not names:
            root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.close(fd)
            fd = root
    except BaseException:
        os.close(fd)
        raise
    return fd
