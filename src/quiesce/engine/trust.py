"""Who could have changed a file or a directory: root's trust in what it reads and runs.

quiesce runs as root and acts on files others could have planted: its run
directory, the configs, the scripts. Each is trusted only if nobody but
root could have set it: every directory on the way to it is owned by root
and writable by no one else, sticky bit or not (so nothing under ``/tmp``
is accepted), and none of it lies on a FUSE filesystem a user mounted,
whose server says what owner and mode it shows (:mod:`quiesce.engine.usermounts`).
:func:`walk` resolves a path the way the kernel will (following symlinks
in the middle) and checks every directory it looks a name up in, and the
mount of every path it looks at; :func:`resolve` follows a symlink at the end the same way (only
from a checked directory); :func:`check_directory` checks a directory and
its chain, :func:`check_program` a program root executes by its path.

Every refusal names what is wrong, the path, its owner and mode, and the
command that fixes it (:func:`fix_for`, :func:`refusal_message`): the
callers (the run directory, the config and script checks) re-raise it as
their own named errors.
"""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from quiesce.engine.usermounts import MountCheck
from quiesce.errors import QuiesceError

if TYPE_CHECKING:
    from quiesce.engine.mountinfo import Mount

#: Where the fixes suggest moving a file out of a shared directory.
SAFE_DIRECTORY_EXAMPLE = "/etc/azure"

#: Opening a checked file: never a symlink at the end. O_NONBLOCK: opening a
#: FIFO planted at the path must not block. O_NOCTTY: a terminal planted there
#: must not become our controlling terminal.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK

#: The kernel's MAXSYMLINKS: more symlinks than this on one path is ELOOP.
MAX_SYMLINKS = 40

WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
#: The only mode bits a config may have (600).
CONFIG_ALLOWED_BITS = stat.S_IRUSR | stat.S_IWUSR
SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
#: What a missing file looks like to a lookup.
NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})

#: Builds a caller's permission error from the problem, the file's state and the fix.
Refusal = Callable[[str, os.stat_result | None, str], QuiesceError]


class UnsafeDirectoryError(QuiesceError):
    """A directory on the way to a config or script can be written by someone but root.

    Raised by :func:`check_directory_chain`; the config and script checks
    re-raise it as their own Azure-named error, with this message inside.
    Also raised for any path a walk looked at on a FUSE filesystem a user
    mounted: ``mount_problem`` says so (None for an owner or mode problem),
    ``user_mount`` is that mount (when the table still has it).
    """

    def __init__(
        self, path: str, st: os.stat_result, mount_problem: str | None = None, mount: Mount | None = None
    ) -> None:
        self.path = path
        self.uid = st.st_uid
        self.mode = st.st_mode
        self.mount_problem = mount_problem
        self.user_mount = mount
        if mount_problem is None:
            self.problems = _directory_problems(st)
            self.fix = fix_for("directory", path, st)
        else:
            self.problems = [mount_problem]
            self.fix = f"move it to a filesystem root mounted, such as {SAFE_DIRECTORY_EXAMPLE}"
        subject = f"directory {path}" if stat.S_ISDIR(st.st_mode) else path
        super().__init__(refusal_message(subject, "; ".join(self.problems), st, self.fix))


# --------------------------------------------------------------------------
# directories


def check_directory_chain(path: str) -> None:
    """Check every directory that looking up the absolute ``path`` passes through.

    That is ``/``, each directory below it on the way, and the directories
    that hold the symlinks followed on the way (a symlink in the middle of the
    path is followed, as the kernel would; ``path`` itself is not examined
    beyond its existence). Each must be owned by root and writable by neither
    group nor others; a sticky bit does not excuse it.

    Raises :class:`UnsafeDirectoryError` for the first directory that fails,
    ``ValueError`` for a relative path, and lets ``OSError`` through (ENOENT,
    ENOTDIR, ELOOP, ...) for the caller to name.
    """
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path!r}")
    walk(path)


def check_directory(path: str) -> tuple[str, os.stat_result]:
    """Check the directory at the absolute ``path`` itself and every directory above it.

    Like :func:`check_directory_chain`, and then the directory the path names
    (a symlink at the end is followed the same way, its holder checked): it
    must be a directory, owned by root and writable by neither group nor
    others. Returns its resolved path and its ``lstat``, for the caller to
    compare with the fd it opens there.

    Raises :class:`UnsafeDirectoryError`, ``ValueError`` for a relative
    path, and lets ``OSError`` through (ENOENT, ENOTDIR, ELOOP, ...).
    """
    real, st = resolve(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), real)
    _check_directory(real, st)
    return real, st


def walk(path: str) -> tuple[str, os.stat_result]:
    """Resolve ``path`` like the kernel, checking each directory a name is looked up in.

    Returns the resolved path and the ``lstat`` of its last component, which
    is not followed if it is a symlink. A path ending in "/" or "/." must name
    a directory (or a symlink), as for the kernel: ``NotADirectoryError``
    otherwise. Every path looked at, the last one included, must not lie on a
    FUSE filesystem a user mounted (:class:`~quiesce.engine.usermounts.MountCheck`):
    :class:`UnsafeDirectoryError` names it, its mount and the mounter.
    """
    with MountCheck() as mounts:
        found = _walk(path, mounts)
        # Judged once every path was looked at: the mount table is read after each was opened.
        refused = mounts.refused()
    if refused is not None:
        raise UnsafeDirectoryError(refused.path, refused.st, refused.problem, refused.mount)
    return found


def _walk(path: str, mounts: MountCheck) -> tuple[str, os.stat_result]:
    pending = components(path)
    # "file/" and "file/." name no file: the kernel fails them with ENOTDIR.
    directory_only = path.split("/")[-1] in ("", ".")
    current = "/"
    st = mounts.lstat(current)
    _check_directory(current, st)
    followed = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            # Every ancestor of `current` was checked on the way down.
            current = os.path.dirname(current)
            st = os.lstat(current)
            continue
        candidate = os.path.join(current, name)
        st = mounts.lstat(candidate)
        if not pending:
            # A symlink is left to the caller (as without the slash): none follows one blindly.
            if directory_only and not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            return candidate, st
        if stat.S_ISLNK(st.st_mode):
            followed += 1
            if followed > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = "/"
            pending[:0] = components(target)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), candidate)
        _check_directory(candidate, st)
        current = candidate
    return current, st


def check_program(path: str) -> tuple[str, os.stat_result]:
    """Check a program root will execute by path: ``path``, every directory on the way, its links.

    For a program that is executed by its path rather than through a held
    fd (the snapshot command, qemu-ga's fsfreeze hook, whose ``$0`` must
    stay its path). Every directory a name is looked up in must be root's
    alone (:func:`walk`); a symlink, also the last one, is followed only
    from such a directory, so only root can re-point it. The file must be
    a regular file owned by root, writable by neither group nor others, and
    executable by its owner. Executing the same absolute path afterwards
    reaches the same file: changing which file a name leads to, or the
    file itself, needs write access only root has.

    Returns the resolved path and its ``stat``. Raises
    :class:`UnsafeProgramError` naming what is wrong, ``ValueError`` for a
    relative path, and lets ``OSError`` through (ENOENT, ENOTDIR, ELOOP...).
    """
    real, st = resolve(path)
    problems = program_problems(st)
    if problems:
        raise UnsafeProgramError(real, st, problems)
    return real, st


def resolve(path: str) -> tuple[str, os.stat_result]:
    """Resolve the absolute ``path`` to the file it leads to, following links only root can change.

    Like :func:`walk`, and a symlink at the end is followed too, each only
    from a directory the walk checked (owned by root, writable by no one
    else), hop after hop: a link planted in a directory another user can
    write, anywhere on the way, is refused (:class:`UnsafeDirectoryError`).
    Returns the resolved path and its ``lstat`` (not a symlink).

    Raises ``ValueError`` for a relative path, and lets ``OSError`` through
    (ENOENT, ENOTDIR, ELOOP...).
    """
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path!r}")
    here = path
    for _ in range(MAX_SYMLINKS + 1):
        real, st = walk(here)
        if not stat.S_ISLNK(st.st_mode):
            return real, st
        # The directory holding the link was checked by the walk.
        here = os.path.join(os.path.dirname(real), os.readlink(real))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def root_alone_problems(st: os.stat_result) -> list[str]:
    """Who but root could change the file ``st`` describes: its owner, group or others ([] for nobody)."""
    problems = owner_problems(st)
    writable = writable_by(st.st_mode)
    if writable:
        problems.append(f"is writable by {writable}")
    return problems


def program_problems(st: os.stat_result) -> list[str]:
    """What makes the file ``st`` describes unfit to run as root ([] when nothing)."""
    if not stat.S_ISREG(st.st_mode):
        return [f"is {file_type(st.st_mode)}, not a regular file"]
    problems = root_alone_problems(st)
    if not st.st_mode & stat.S_IXUSR:
        problems.append("is not executable by its owner")
    return problems


class UnsafeProgramError(QuiesceError):
    """A program root would execute by path is not root's alone (:func:`check_program`)."""

    def __init__(self, path: str, st: os.stat_result, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        fix = ""
        if stat.S_ISREG(st.st_mode):
            p = quote(path)
            chown = f"chown root:root {p} && " if st.st_uid != 0 else ""
            fix = f"{chown}chmod go-w,u+x {p}"
        super().__init__(refusal_message(path, "; ".join(problems), st, fix))


def components(path: str) -> list[str]:
    """The names of ``path`` between slashes, without empty ones and "."."""
    return [part for part in path.split("/") if part not in ("", ".")]


def _check_directory(path: str, st: os.stat_result) -> None:
    if _directory_problems(st):
        raise UnsafeDirectoryError(path, st)


def _directory_problems(st: os.stat_result) -> list[str]:
    problems = owner_problems(st)
    writable = writable_by(st.st_mode)
    if writable:
        sticky = " (the sticky bit does not make it safe: others can still add files)"
        problems.append(f"is writable by {writable}{sticky if st.st_mode & stat.S_ISVTX else ''}")
    return problems


# --------------------------------------------------------------------------
# messages and fixes


def fix_for(kind: str, path: str, st: os.stat_result) -> str:
    """The fix for what is wrong with the owner, mode or links of ``path``.

    ``kind`` is "config", "script" or "directory"; ``st`` is the file's
    current state. Returns shell commands, or an instruction where no command
    is right (a shared directory such as ``/tmp`` must not be changed; the
    file must move). Returns "" when nothing is wrong.
    """
    p = quote(path)
    mode = stat.S_IMODE(st.st_mode)
    if kind == "config":
        if st.st_uid != 0:
            return f"chown root:root {p} && chmod 600 {p}"
        return f"chmod 600 {p}" if mode & ~CONFIG_ALLOWED_BITS else ""
    if kind == "script":
        commands = []
        if st.st_uid != 0:
            commands.append(f"chown root:root {p} && chmod 700 {p}")
        else:
            changes = [
                change
                for wrong, change in (
                    (mode & WRITABLE_BY_OTHERS, "go-w"),
                    (mode & SET_ID_BITS, "ug-s"),
                    (not mode & stat.S_IXUSR, "u+x"),
                )
                if wrong
            ]
            if changes:
                commands.append(f"chmod {','.join(changes)} {p}")
        if st.st_nlink > 1:
            # A fresh copy gives the path its own inode; the other names keep the old one.
            commands.append(f"cp -p {p} {quote(path + '.new')} && mv -f {quote(path + '.new')} {p}")
        return " && ".join(commands)
    if kind == "directory":
        move = f"move the file to a directory only root can write, such as {SAFE_DIRECTORY_EXAMPLE}"
        writable = bool(mode & WRITABLE_BY_OTHERS)
        if writable and mode & stat.S_ISVTX:
            return f"{move} ({path} is a shared directory: do not change it)"
        if st.st_uid != 0:
            chmod = f" && chmod go-w {p}" if writable else ""
            return f"chown root:root {p}{chmod}, or {move}"
        return f"chmod go-w {p}" if writable else ""
    raise ValueError(f"kind must be 'config', 'script' or 'directory', not {kind!r}")


def owner_and_mode(st: os.stat_result) -> str:
    """ "owner uid N (name), mode 0NNN" for a message."""
    try:
        name = f" ({pwd.getpwuid(st.st_uid).pw_name})"
    except KeyError:
        name = ""
    return f"owner uid {st.st_uid}{name}, mode {stat.S_IMODE(st.st_mode):04o}"


def refusal_message(subject: str, problem: str, st: os.stat_result | None, fix: str) -> str:
    """ "SUBJECT PROBLEM (owner, mode); fix: FIX", the shape of every refusal."""
    state = f" ({owner_and_mode(st)})" if st is not None else ""
    return f"{subject} {problem}{state}; fix: {fix}" if fix else f"{subject} {problem}{state}"


def target_state(target: str) -> str:
    """ ", owner uid N, mode 0NNN" of a symlink's target, or why it cannot be examined."""
    # A symlink's own owner and mode mean nothing; its target's tell whether it would pass.
    try:
        return f", {owner_and_mode(os.stat(target))}"
    except OSError as err:
        return f", {os_reason(err)}"


def owner_problems(st: os.stat_result) -> list[str]:
    """What is wrong with the owner: anyone but root."""
    return [] if st.st_uid == 0 else [f"is owned by uid {st.st_uid}, not root"]


def writable_by(mode: int) -> str:
    """ "group", "others" or "group and others": who besides the owner may write ("" for none)."""
    who = [name for bit, name in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit]
    return " and ".join(who)


def same_file_or_raise(before: os.stat_result, after: os.stat_result, refuse: Refusal) -> None:
    """Refuse when the file opened is not the file examined before the open."""
    # Only root can change a checked directory, so this is defence in depth.
    if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
        raise refuse("was replaced while it was being checked", after, "run again")


def refuse_nul(path: str, refuse: Refusal) -> None:
    """Refuse a path with a NUL byte (no file can have one)."""
    if "\0" in path:
        raise refuse("contains a NUL byte", None, "remove it from the path")


def file_type(mode: int) -> str:
    """The kind of file ``mode`` describes, for a message: "a directory", "a FIFO"..."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return f"of unknown type {stat.S_IFMT(mode):o}"


def os_reason(err: OSError) -> str:
    """An OS error for a message: "No such file or directory (ENOENT) at PATH"."""
    code = errno.errorcode.get(err.errno or 0, str(err.errno))
    where = f" at {err.filename}" if err.filename is not None else ""
    return f"{os.strerror(err.errno or 0)} ({code}){where}"


def quote(path: str) -> str:
    """``path`` quoted for a shell command in a fix."""
    return shlex.quote(path)
