"""Who may have written the config and the scripts quiesce runs as root.

Azure's rules, kept: the plugin config is owned by root with mode 600 or
stricter (no group or other bits, no owner execute bit); a script is owned by
root and not writable by group or others. quiesce adds what Azure leaves out,
because a script runs as root while filesystems are about to freeze:

- every directory on the way to the file is owned by root and writable by no
  one else, sticky bit or not (so nothing under ``/tmp`` is accepted);
- the script is not a symlink, not hard-linked, a regular file, executable by
  its owner, and has no setuid or setgid bit;
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
file. :func:`read_config_file` does the same and returns the bytes read from
the fd it checked, so the config checked is the config parsed.

Every refusal names what is wrong, the path, its owner and mode, and the
command that fixes it. No ``OSError`` escapes as a traceback: each becomes the
Azure-named error of the caller (config or pre/post-script).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shlex
import stat
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from quiesce import shebang
from quiesce.errors import (
    ConfigNotFoundError,
    ConfigPermissionError,
    IncorrectPluginhostFile,
    QuiesceError,
    ScriptNotFound,
    ScriptPermissionError,
    VmbackupConfError,
)

__all__ = [
    "CONFIG_MAX_BYTES",
    "CheckedScript",
    "UnsafeDirectoryError",
    "check_directory",
    "check_directory_chain",
    "fix_for",
    "open_script",
    "owner_and_mode",
    "parse_shebang",
    "read_config_file",
    "read_pluginhost_file",
    "read_vmbackup_conf",
]

#: The largest config quiesce accepts. :func:`read_config_file` reads one byte
#: more, so that its caller can tell a file of exactly this size from a larger one.
CONFIG_MAX_BYTES = 1 << 20

#: Where the fixes suggest moving a file out of a shared directory.
SAFE_DIRECTORY_EXAMPLE = "/etc/azure"

# O_NONBLOCK: opening a FIFO planted at the path must not block. O_NOCTTY: a
# terminal planted there must not become our controlling terminal.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK

# The kernel's MAXSYMLINKS: more symlinks than this on one path is ELOOP.
_MAX_SYMLINKS = 40

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_CONFIG_ALLOWED_BITS = stat.S_IRUSR | stat.S_IWUSR
_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
_NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})

_PHASES = ("pre", "post")

#: Builds a caller's permission error from the problem, the file's state and the fix.
_Refusal = Callable[[str, os.stat_result | None, str], QuiesceError]


class UnsafeDirectoryError(QuiesceError):
    """A directory on the way to a config or script can be written by someone but root.

    Raised by :func:`check_directory_chain`; the config and script checks
    re-raise it as their own Azure-named error, with this message inside.
    """

    def __init__(self, path: str, st: os.stat_result) -> None:
        self.path = path
        self.uid = st.st_uid
        self.mode = st.st_mode
        self.problems = _directory_problems(st)
        self.fix = fix_for("directory", path, st)
        super().__init__(_message(f"directory {path}", "; ".join(self.problems), st, self.fix))


# --------------------------------------------------------------------------
# the plugin config


def read_config_file(path: str) -> bytes:
    """Check the plugin config at ``path`` and return its bytes, read from the fd checked.

    At most :data:`CONFIG_MAX_BYTES` + 1 bytes are returned; the caller
    rejects a config that long. A relative ``path`` is taken from the current
    directory, whose chain is then checked like any other.

    Raises :class:`ConfigNotFoundError` when there is no file at ``path``
    (said first, before any directory is judged) and
    :class:`ConfigPermissionError` when it is a symlink, not a regular file,
    not owned by root, has any mode bit beyond 600, sits in a directory that
    anyone but root can write, or cannot be read.
    """
    return _read_checked(path, _CONFIG_RULE)


def read_pluginhost_file(path: str) -> bytes:
    """Check Azure's plugin host INI at ``path`` like the config; return its bytes.

    The same rules as :func:`read_config_file` (owner root, mode 600 or
    stricter, a root-only directory chain, no symlink), since it caps the
    scripts' timeouts and names the config to load. A missing file raises
    ``FileNotFoundError`` (the file is optional); anything unsafe raises
    :class:`IncorrectPluginhostFile` (304).
    """
    return _read_checked(path, _PLUGINHOST_RULE)


def read_vmbackup_conf(path: str) -> bytes:
    """Check Azure's ``vmbackup.conf`` at ``path``; return its bytes.

    Its ``MountsToSkip`` steers which filesystems are frozen, so it must be
    owned by root, writable by no one else, in a root-only directory chain
    and not a symlink. Others may read it (Azure's own file is often 644).
    A missing file raises ``FileNotFoundError`` (the file is optional);
    anything unsafe raises :class:`VmbackupConfError`.
    """
    return _read_checked(path, _VMBACKUP_RULE)


@dataclass(frozen=True)
class _FileRule:
    """What a checked configuration file is called, which mode bits it may have, how refusals look."""

    subject: str
    allowed_bits: int
    fix_mode: str
    #: The mode rule in words, for a refusal.
    mode_rule: str
    refuse: Callable[[str], QuiesceError]
    #: None: a missing file raises FileNotFoundError (an optional file).
    missing: Callable[[str], QuiesceError] | None


def _read_checked(path: str, rule: _FileRule) -> bytes:
    subject = f"{rule.subject} {path}"
    refuse = _file_refusal(subject, rule.refuse)
    absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    with _file_errors(subject, path, rule):
        _refuse_nul(path, refuse)
        # Missing is said first: judging the directories of a file that is
        # not there would send the reader after the wrong problem.
        os.lstat(absolute)
        real, lst = _walk(absolute)
        if stat.S_ISLNK(lst.st_mode):
            raise rule.refuse(_symlink_message(subject, path, rule))
        if not stat.S_ISREG(lst.st_mode):
            raise refuse(
                f"is {_file_type(lst.st_mode)}, not a regular file",
                lst,
                f"replace it with a regular file owned by root with mode {rule.fix_mode}",
            )
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise rule.refuse(_symlink_message(subject, path, rule)) from err
            raise
        try:
            st = os.fstat(fd)
            _same_file_or_raise(lst, st, refuse)
            problems = _file_problems(st, rule.allowed_bits, rule.mode_rule)
            if problems:
                raise refuse("; ".join(problems), st, _file_fix(path, st, rule))
            return _read_up_to(fd, CONFIG_MAX_BYTES + 1)
        finally:
            os.close(fd)


def _file_problems(st: os.stat_result, allowed_bits: int, mode_rule: str) -> list[str]:
    if not stat.S_ISREG(st.st_mode):
        return [f"is {_file_type(st.st_mode)}, not a regular file"]
    problems = _owner_problems(st)
    extra = stat.S_IMODE(st.st_mode) & ~allowed_bits
    if extra:
        problems.append(f"has mode bits {extra:04o} set: {mode_rule}")
    return problems


def _file_fix(path: str, st: os.stat_result, rule: _FileRule) -> str:
    p = _q(path)
    chmod = "chmod 600" if rule.allowed_bits == _CONFIG_ALLOWED_BITS else "chmod go-w"
    if st.st_uid != 0:
        return f"chown root:root {p} && {chmod} {p}"
    return f"{chmod} {p}" if stat.S_IMODE(st.st_mode) & ~rule.allowed_bits else ""


def _file_refusal(subject: str, make: Callable[[str], QuiesceError]) -> _Refusal:
    def refuse(problem: str, st: os.stat_result | None, fix: str) -> QuiesceError:
        return make(_message(subject, problem, st, fix))

    return refuse


def _symlink_message(subject: str, path: str, rule: _FileRule) -> str:
    target = os.path.realpath(path)
    chmod = "chmod 600" if rule.allowed_bits == _CONFIG_ALLOWED_BITS else "chmod go-w"
    p = _q(path)
    fix = f"cp --remove-destination {_q(target)} {p} && chown root:root {p} && {chmod} {p}"
    return (
        f"{subject} is a symlink (to {target}{_target_state(target)}); a symlink can"
        f" be re-pointed after it is checked; fix: replace it with the file: {fix}"
    )


@contextlib.contextmanager
def _file_errors(subject: str, path: str, rule: _FileRule) -> Iterator[None]:
    """Turn what escapes a file check into the file's own named errors."""
    try:
        yield
    except UnsafeDirectoryError as err:
        raise rule.refuse(f"{subject} is in an unsafe directory: {err}") from err
    except OSError as err:
        if err.errno in _NOT_FOUND_ERRNOS:
            if rule.missing is None:
                raise FileNotFoundError(err.errno, os.strerror(err.errno or 0), path) from err
            raise rule.missing(
                f"{subject} does not exist ({_os_reason(err)}); fix: create it"
                f" (owner root, mode {rule.fix_mode}) or pass the right path"
            ) from err
        raise rule.refuse(
            f"{subject} cannot be checked: {_os_reason(err)}; fix: make {err.filename or path}"
            f" readable by root as a regular file"
        ) from err


_OWNER_READ_WRITE = "only owner read and write are allowed (600 or stricter)"
_CONFIG_RULE = _FileRule(
    "plugin config",
    _CONFIG_ALLOWED_BITS,
    "600",
    _OWNER_READ_WRITE,
    ConfigPermissionError,
    ConfigNotFoundError,
)
_PLUGINHOST_RULE = _FileRule(
    "plugin host file", _CONFIG_ALLOWED_BITS, "600", _OWNER_READ_WRITE, IncorrectPluginhostFile, None
)
_VMBACKUP_RULE = _FileRule(
    "vmbackup.conf",
    0o7777 & ~_WRITABLE_BY_OTHERS & ~_SET_ID_BITS,
    "644",
    "only the owner may write, and no setuid or setgid bit (644 or stricter)",
    VmbackupConfError,
    None,
)


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------
# scripts


@dataclass(eq=False)
class CheckedScript:
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

    def __enter__(self) -> CheckedScript:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
    file there, and :class:`ScriptPermissionError` when the path is relative,
    the file is a symlink, not a regular file, not owned by root, writable by
    group or others, not executable by its owner, setuid or setgid,
    hard-linked, sits in a directory that anyone but root can write, or cannot
    be examined. Both carry the phase's Azure name.
    """
    if phase not in _PHASES:
        raise ValueError(f"phase must be 'pre' or 'post', not {phase!r}")
    refuse = _script_refusal(path, phase)
    with _script_errors(path, phase):
        _refuse_nul(path, refuse)
        if not os.path.isabs(path):
            raise refuse(
                "is not an absolute path (a relative one depends on the current directory)",
                None,
                f"set {phase}ScriptLocation to the script's full path,"
                f" e.g. {SAFE_DIRECTORY_EXAMPLE}/{phase}.sh",
            )
        real, lst = _walk(path)
        if stat.S_ISLNK(lst.st_mode):
            raise _script_symlink_error(path, phase)
        if not stat.S_ISREG(lst.st_mode):
            # Refused before opening: opening a device can have side effects.
            raise refuse(
                f"is {_file_type(lst.st_mode)}, not a regular file",
                lst,
                f"point {phase}ScriptLocation at the script file itself",
            )
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _script_symlink_error(path, phase) from err
            raise
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(os.close, fd)
            st = os.fstat(fd)
            _same_file_or_raise(lst, st, refuse)
            problems = _script_problems(st)
            if problems:
                raise refuse("; ".join(problems), st, fix_for("script", path, st))
            os.set_blocking(fd, True)
            has_shebang, interpreter = parse_shebang(os.pread(fd, shebang.SHEBANG_BYTES, 0))
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

    The interpreter is read as the kernel reads it (:mod:`quiesce.shebang`):
    up to the next space, tab or newline, so a carriage return from a
    Windows editor stays part of it. None when there is no "#!" or no word
    after it.
    """
    if not head.startswith(b"#!"):
        return False, None
    name = shebang.interpreter(head)
    return True, None if name is None else os.fsdecode(name)


def _script_problems(st: os.stat_result) -> list[str]:
    if not stat.S_ISREG(st.st_mode):
        return [f"is {_file_type(st.st_mode)}, not a regular file"]
    problems = _owner_problems(st)
    writable = _writable_by(st.st_mode)
    if writable:
        problems.append(f"is writable by {writable}")
    set_id = [name for bit, name in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")) if st.st_mode & bit]
    if set_id:
        problems.append(f"has the {' and '.join(set_id)} bit{'s' if len(set_id) > 1 else ''}")
    if not st.st_mode & stat.S_IXUSR:
        problems.append("is not executable by its owner")
    if st.st_nlink > 1:
        problems.append(
            f"has {st.st_nlink} hard links: another name for this file can keep a stale or"
            f" altered copy of a root script alive, and changes made through it change the script"
        )
    return problems


def _script_refusal(path: str, phase: str) -> _Refusal:
    def refuse(problem: str, st: os.stat_result | None, fix: str) -> ScriptPermissionError:
        return ScriptPermissionError(_message(f"{phase}-script {path}", problem, st, fix), phase)

    return refuse


def _script_symlink_error(path: str, phase: str) -> ScriptPermissionError:
    target = os.path.realpath(path)
    return ScriptPermissionError(
        f"{phase}-script {path} is a symlink (to {target}{_target_state(target)}); a symlink can"
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
        if err.errno in _NOT_FOUND_ERRNOS:
            raise ScriptNotFound(
                f"{phase}-script {path} does not exist ({_os_reason(err)}); fix: install the script"
                f" there (owner root, mode 700) or correct {phase}ScriptLocation",
                phase,
            ) from err
        raise ScriptPermissionError(
            f"{phase}-script {path} cannot be checked: {_os_reason(err)}; fix: make"
            f" {err.filename or path} readable by root as a regular file",
            phase,
        ) from err


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
    _walk(path)


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
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path!r}")
    for _ in range(_MAX_SYMLINKS + 1):
        real, st = _walk(path)
        if not stat.S_ISLNK(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), real)
            _check_directory(real, st)
            return real, st
        # The directory holding the link was checked by the walk.
        path = os.path.join(os.path.dirname(real), os.readlink(real))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def _walk(path: str) -> tuple[str, os.stat_result]:
    """Resolve ``path`` like the kernel, checking each directory a name is looked up in.

    Returns the resolved path and the ``lstat`` of its last component, which
    is not followed if it is a symlink.
    """
    pending = _components(path)
    current = "/"
    st = os.lstat(current)
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
        st = os.lstat(candidate)
        if not pending:
            return candidate, st
        if stat.S_ISLNK(st.st_mode):
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = "/"
            pending[:0] = _components(target)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), candidate)
        _check_directory(candidate, st)
        current = candidate
    return current, st


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _check_directory(path: str, st: os.stat_result) -> None:
    if _directory_problems(st):
        raise UnsafeDirectoryError(path, st)


def _directory_problems(st: os.stat_result) -> list[str]:
    problems = _owner_problems(st)
    writable = _writable_by(st.st_mode)
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
    p = _q(path)
    mode = stat.S_IMODE(st.st_mode)
    if kind == "config":
        if st.st_uid != 0:
            return f"chown root:root {p} && chmod 600 {p}"
        return f"chmod 600 {p}" if mode & ~_CONFIG_ALLOWED_BITS else ""
    if kind == "script":
        commands = []
        if st.st_uid != 0:
            commands.append(f"chown root:root {p} && chmod 700 {p}")
        else:
            changes = [
                change
                for wrong, change in (
                    (mode & _WRITABLE_BY_OTHERS, "go-w"),
                    (mode & _SET_ID_BITS, "ug-s"),
                    (not mode & stat.S_IXUSR, "u+x"),
                )
                if wrong
            ]
            if changes:
                commands.append(f"chmod {','.join(changes)} {p}")
        if st.st_nlink > 1:
            # A fresh copy gives the path its own inode; the other names keep the old one.
            commands.append(f"cp -p {p} {_q(path + '.new')} && mv -f {_q(path + '.new')} {p}")
        return " && ".join(commands)
    if kind == "directory":
        move = f"move the file to a directory only root can write, such as {SAFE_DIRECTORY_EXAMPLE}"
        writable = bool(mode & _WRITABLE_BY_OTHERS)
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


def _message(subject: str, problem: str, st: os.stat_result | None, fix: str) -> str:
    state = f" ({owner_and_mode(st)})" if st is not None else ""
    return f"{subject} {problem}{state}; fix: {fix}" if fix else f"{subject} {problem}{state}"


def _target_state(target: str) -> str:
    # A symlink's own owner and mode mean nothing; its target's tell whether it would pass.
    try:
        return f", {owner_and_mode(os.stat(target))}"
    except OSError as err:
        return f", {_os_reason(err)}"


def _owner_problems(st: os.stat_result) -> list[str]:
    return [] if st.st_uid == 0 else [f"is owned by uid {st.st_uid}, not root"]


def _writable_by(mode: int) -> str:
    who = [name for bit, name in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit]
    return " and ".join(who)


def _same_file_or_raise(before: os.stat_result, after: os.stat_result, refuse: _Refusal) -> None:
    # Only root can change a checked directory, so this is defence in depth.
    if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
        raise refuse("was replaced while it was being checked", after, "run again")


def _refuse_nul(path: str, refuse: _Refusal) -> None:
    if "\0" in path:
        raise refuse("contains a NUL byte", None, "remove it from the path")


def _file_type(mode: int) -> str:
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


def _os_reason(err: OSError) -> str:
    code = errno.errorcode.get(err.errno or 0, str(err.errno))
    where = f" at {err.filename}" if err.filename is not None else ""
    return f"{os.strerror(err.errno or 0)} ({code}){where}"


def _q(path: str) -> str:
    return shlex.quote(path)
