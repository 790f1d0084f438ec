"""Checking a pre- or post-script (or a hook) before it runs as root, and holding it open.

Azure's rule, kept: a script is owned by root and not writable by group or
others. quiesce adds what Azure leaves out, because a script runs as root
while filesystems are about to freeze:

- every directory on the way to the file is owned by root and writable by no
  one else, sticky bit or not (:mod:`quiesce.engine.trust`), and none of it
  lies on a FUSE filesystem a user mounted (:mod:`quiesce.engine.usermounts`);
- the script is not a symlink, not hard-linked, a regular file, executable by
  its owner, and has no setuid or setgid bit;
- the interpreter on its ``#!`` line, which runs as root too, is owned by
  root, writable by no one else, and reached only through directories and
  links only root can change;
- the file checked is the file used. Azure checks a path and then executes the
  path, so whoever can swap the file in between chooses what runs as root.

Why the order of :func:`open_script` makes its fd the checked file. It first
walks the path from ``/`` the way the kernel will (following symlinks in the
middle, refusing one at the end) and checks every directory it looks a name up
in. Only then does it open the resolved path with ``O_NOFOLLOW`` and check the
open fd with ``fstat``. To make that open reach another file than the one the
walk found, someone must change a directory on that path (rename, unlink, link
or plant an entry), which needs write access to it, and the walk has just
shown that only root has that. Whatever happens to the path after the open
does not matter: the caller never uses the path again, it executes the fd
(``execveat(fd, "", AT_EMPTY_PATH)``), and ``fstat`` described exactly that
file.

Every refusal names what is wrong, the path, its owner and mode, and the
command that fixes it, with the phase's Azure name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from quiesce.closeable import Closeable
from quiesce.engine.trust import (
    NOT_FOUND_ERRNOS,
    OPEN_FLAGS,
    SAFE_DIRECTORY_EXAMPLE,
    Refusal,
    UnsafeDirectoryError,
    file_type,
    fix_for,
    os_reason,
    program_problems,
    refusal_message,
    refuse_nul,
    same_file_or_raise,
    target_state,
    walk,
)
from quiesce.errors import ScriptNotFound, ScriptPermissionError
from quiesce.supervise import shebang

_PHASES = ("pre", "post")
#: Errors that mean no file can be at the path: missing, a file where a
#: directory must be, a name longer than the kernel takes, a symlink loop on
#: the way. Azure's os.path.isfile says False for each: "ScriptNotFound".
_NO_FILE_ERRNOS = NOT_FOUND_ERRNOS | {errno.ENAMETOOLONG, errno.ELOOP}


@dataclass(eq=False)
class CheckedScript(Closeable):
    """A pre- or post-script that passed every check, held open.

    ``fd`` is the checked file itself (``O_RDONLY``, ``O_CLOEXEC`` set): the
    spawner dups it without ``O_CLOEXEC`` (an interpreter reads a script
    through ``/dev/fd/N``) and executes it with ``execveat(fd, "",
    AT_EMPTY_PATH)``. Close it with :meth:`close` or a ``with`` block; one
    left open warns with :class:`ResourceWarning` when collected.
    """

    #: The path as the config gave it.
    path: str
    #: The path with every symlink resolved: the file that was opened.
    real_path: str
    #: An open fd of the checked file; -1 once closed.
    fd: int
    #: "pre" or "post".
    phase: str
    #: True when the file starts with "#!" (the kernel will run an interpreter).
    has_shebang: bool
    #: The interpreter named on the "#!" line, for reports; None without one.
    interpreter: str | None
    uid: int
    #: Permission bits (``stat.S_IMODE``), e.g. 0o700.
    mode: int
    size: int
    dev: int
    ino: int

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self.fd < 0

    def fileno(self) -> int:
        """The open fd; ``ValueError`` once closed."""
        if self.fd < 0:
            raise ValueError(f"{self.phase}-script {self.path} is closed")
        return self.fd

    def close(self) -> None:
        """Close the fd; calling it again does nothing."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            warnings.warn(
                f"{self.phase}-script {self.path} was not closed (fd {self.fd})",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
            self.close()


def open_script(path: str, phase: str) -> CheckedScript:
    """Check the ``phase`` ("pre" or "post") script at ``path`` and return it open.

    ``path`` must be absolute. Raises :class:`ScriptNotFound` when there is no
    file there (nothing, or a directory, FIFO, socket or device, or a name
    no file can have), and :class:`ScriptPermissionError` when the path is
    relative, the file is a symlink, not owned by root, writable by
    group or others, not executable by its owner, setuid or setgid,
    hard-linked, sits in a directory that anyone but root can write, or cannot
    be examined. Both carry the phase's Azure name.
    """
    if phase not in _PHASES:
        raise ValueError(f"phase must be 'pre' or 'post', not {phase!r}")
    refuse = _script_refusal(path, phase)
    with _script_errors(path, phase):
        refuse_nul(path, refuse)
        if not os.path.isabs(path):
            raise refuse(
                "is not an absolute path (a relative one depends on the current directory)",
                None,
                f"set {phase}ScriptLocation to the script's full path,"
                f" e.g. {SAFE_DIRECTORY_EXAMPLE}/{phase}.sh",
            )
        real, lst = walk(path)
        if stat.S_ISLNK(lst.st_mode):
            raise _script_symlink_error(path, phase)
        if not stat.S_ISREG(lst.st_mode):
            # Not opened: opening a device can have side effects. No script is
            # there, as Azure says of anything but a file (os.path.isfile).
            raise ScriptNotFound(
                f"{phase}-script {path} is {file_type(lst.st_mode)}, not a regular file: no script"
                f" there; fix: point {phase}ScriptLocation at the script file itself",
                phase,
            )
        try:
            fd = os.open(real, OPEN_FLAGS)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _script_symlink_error(path, phase) from err
            raise
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(os.close, fd)
            st = os.fstat(fd)
            same_file_or_raise(lst, st, refuse)
            problems = _script_problems(st)
            if problems:
                raise refuse("; ".join(problems), st, fix_for("script", path, st))
            os.set_blocking(fd, True)
            head = os.pread(fd, shebang.SHEBANG_BYTES, 0)
            has_shebang, interpreter = parse_shebang(head)
            untrusted = shebang.untrusted_interpreter(head)
            if untrusted is not None:
                # The interpreter runs as root with the script: it must be root's alone too.
                raise refuse(
                    f"cannot run as root: {untrusted}",
                    None,
                    "name an interpreter only root can change on the #! line",
                )
            script = CheckedScript(
                path=path,
                real_path=real,
                fd=fd,
                phase=phase,
                has_shebang=has_shebang,
                interpreter=interpreter,
                uid=st.st_uid,
                mode=stat.S_IMODE(st.st_mode),
                size=st.st_size,
                dev=st.st_dev,
                ino=st.st_ino,
            )
            on_failure.pop_all()
        return script


def parse_shebang(head: bytes) -> tuple[bool, str | None]:
    """Whether ``head`` (a file's first bytes) starts with "#!", and the interpreter it names.

    The interpreter is read as the kernel reads it (:mod:`quiesce.supervise.shebang`):
    up to the next space, tab or newline, so a carriage return from a
    Windows editor stays part of it. None when there is no "#!" or no word
    after it.
    """
    if not head.startswith(b"#!"):
        return False, None
    name = shebang.interpreter(head)
    return True, None if name is None else os.fsdecode(name)


def _script_problems(st: os.stat_result) -> list[str]:
    # A program's rules (a regular file, root's, writable by no one else, executable), and more.
    problems = program_problems(st)
    if not stat.S_ISREG(st.st_mode):
        return problems
    set_id = [name for bit, name in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")) if st.st_mode & bit]
    if set_id:
        problems.append(f"has the {' and '.join(set_id)} bit{'s' if len(set_id) > 1 else ''}")
    if st.st_nlink > 1:
        problems.append(
            f"has {st.st_nlink} hard links: another name for this file can keep a stale or"
            f" altered copy of a root script alive, and changes made through it change the script"
        )
    return problems


def _script_refusal(path: str, phase: str) -> Refusal:
    def refuse(problem: str, st: os.stat_result | None, fix: str) -> ScriptPermissionError:
        return ScriptPermissionError(refusal_message(f"{phase}-script {path}", problem, st, fix), phase)

    return refuse


def _script_symlink_error(path: str, phase: str) -> ScriptPermissionError:
    target = os.path.realpath(path)
    return ScriptPermissionError(
        f"{phase}-script {path} is a symlink (to {target}{target_state(target)}); a symlink can"
        f" be re-pointed after it is checked; fix: point {phase}ScriptLocation at the real file {target}",
        phase,
    )


@contextlib.contextmanager
def _script_errors(path: str, phase: str) -> Iterator[None]:
    """Turn what escapes the script check into the phase's Azure-named errors."""
    try:
        yield
    except UnsafeDirectoryError as err:
        raise ScriptPermissionError(f"{phase}-script {path} is in an unsafe directory: {err}", phase) from err
    except OSError as err:
        if err.errno in _NO_FILE_ERRNOS:
            raise ScriptNotFound(
                f"{phase}-script {path} does not exist ({os_reason(err)}); fix: install the script"
                f" there (owner root, mode 700) or correct {phase}ScriptLocation",
                phase,
            ) from err
        raise ScriptPermissionError(
            f"{phase}-script {path} cannot be checked: {os_reason(err)}; fix: make"
            f" {err.filename or path} readable by root as a regular file",
            phase,
        ) from err
