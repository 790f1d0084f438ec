"""Who may have written Azure's files: the plugin config, the plugin host INI, vmbackup.conf.

Azure's rule, kept: the plugin config is owned by root with mode 600 or
stricter (no group or other bits, no owner execute bit). quiesce adds what
Azure leaves out: every directory on the way to the file is owned by root
and writable by no one else (:mod:`quiesce.engine.trust`), the file is not
a symlink, and the bytes parsed are the bytes read from the descriptor
that was checked: the path is walked and checked first, then opened with
``O_NOFOLLOW`` and checked again on the open fd with ``fstat``. The plugin
host INI gets the same rules (it caps the scripts' timeouts and names the
config); vmbackup.conf may be world-readable but written only by root (its
``MountsToSkip`` steers what is frozen).

Every refusal names what is wrong, the path, its owner and mode, and the
command that fixes it. No ``OSError`` escapes as a traceback: each becomes
the file's Azure-named error. The scripts' own checks are in
:mod:`quiesce.supervise.checked`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from quiesce.azure.text import MAX_CONFIG_BYTES, read_up_to
from quiesce.engine.trust import (
    CONFIG_ALLOWED_BITS,
    NOT_FOUND_ERRNOS,
    OPEN_FLAGS,
    SET_ID_BITS,
    WRITABLE_BY_OTHERS,
    Refusal,
    UnsafeDirectoryError,
    file_type,
    os_reason,
    owner_problems,
    quote,
    refusal_message,
    refuse_nul,
    same_file_or_raise,
    target_state,
    walk,
)
from quiesce.errors import (
    ConfigNotFoundError,
    ConfigPermissionError,
    IncorrectPluginhostFile,
    QuiesceError,
    VmbackupConfError,
)


def read_config_file(path: str) -> bytes:
    """Check the plugin config at ``path`` and return its bytes, read from the fd checked.

    At most :data:`~quiesce.azure.text.MAX_CONFIG_BYTES` + 1 bytes are returned (one more than
    a config may have, so that a file of exactly that size is told from a larger one); the caller
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
        refuse_nul(path, refuse)
        # Missing is said first: judging the directories of a file that is
        # not there would send the reader after the wrong problem.
        os.lstat(absolute)
        real, lst = walk(absolute)
        if stat.S_ISLNK(lst.st_mode):
            raise rule.refuse(_symlinkrefusal_message(subject, path, rule))
        if not stat.S_ISREG(lst.st_mode):
            raise refuse(
                f"is {file_type(lst.st_mode)}, not a regular file",
                lst,
                f"replace it with a regular file owned by root with mode {rule.fix_mode}",
            )
        try:
            fd = os.open(real, OPEN_FLAGS)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise rule.refuse(_symlinkrefusal_message(subject, path, rule)) from err
            raise
        try:
            st = os.fstat(fd)
            same_file_or_raise(lst, st, refuse)
            problems = _file_problems(st, rule.allowed_bits, rule.mode_rule)
            if problems:
                raise refuse("; ".join(problems), st, _file_fix(path, st, rule))
            return read_up_to(fd, MAX_CONFIG_BYTES + 1)
        finally:
            os.close(fd)


def _file_problems(st: os.stat_result, allowed_bits: int, mode_rule: str) -> list[str]:
    if not stat.S_ISREG(st.st_mode):
        return [f"is {file_type(st.st_mode)}, not a regular file"]
    problems = owner_problems(st)
    extra = stat.S_IMODE(st.st_mode) & ~allowed_bits
    if extra:
        problems.append(f"has mode bits {extra:04o} set: {mode_rule}")
    return problems


def _file_fix(path: str, st: os.stat_result, rule: _FileRule) -> str:
    p = quote(path)
    chmod = "chmod 600" if rule.allowed_bits == CONFIG_ALLOWED_BITS else "chmod go-w"
    if st.st_uid != 0:
        return f"chown root:root {p} && {chmod} {p}"
    return f"{chmod} {p}" if stat.S_IMODE(st.st_mode) & ~rule.allowed_bits else ""


def _file_refusal(subject: str, make: Callable[[str], QuiesceError]) -> Refusal:
    def refuse(problem: str, st: os.stat_result | None, fix: str) -> QuiesceError:
        return make(refusal_message(subject, problem, st, fix))

    return refuse


def _symlinkrefusal_message(subject: str, path: str, rule: _FileRule) -> str:
    target = os.path.realpath(path)
    chmod = "chmod 600" if rule.allowed_bits == CONFIG_ALLOWED_BITS else "chmod go-w"
    p = quote(path)
    fix = f"cp --remove-destination {quote(target)} {p} && chown root:root {p} && {chmod} {p}"
    return (
        f"{subject} is a symlink (to {target}{target_state(target)}); a symlink can"
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
        if err.errno in NOT_FOUND_ERRNOS:
            if rule.missing is None:
                raise FileNotFoundError(err.errno, os.strerror(err.errno or 0), path) from err
            raise rule.missing(
                f"{subject} does not exist ({os_reason(err)}); fix: create it"
                f" (owner root, mode {rule.fix_mode}) or pass the right path"
            ) from err
        raise rule.refuse(
            f"{subject} cannot be checked: {os_reason(err)}; fix: make {err.filename or path}"
            f" readable by root as a regular file"
        ) from err


_OWNER_READ_WRITE = "only owner read and write are allowed (600 or stricter)"
_CONFIG_RULE = _FileRule(
    "plugin config",
    CONFIG_ALLOWED_BITS,
    "600",
    _OWNER_READ_WRITE,
    ConfigPermissionError,
    ConfigNotFoundError,
)
_PLUGINHOST_RULE = _FileRule(
    "plugin host file", CONFIG_ALLOWED_BITS, "600", _OWNER_READ_WRITE, IncorrectPluginhostFile, None
)
_VMBACKUP_RULE = _FileRule(
    "vmbackup.conf",
    0o7777 & ~WRITABLE_BY_OTHERS & ~SET_ID_BITS,
    "644",
    "only the owner may write, and no setuid or setgid bit (644 or stricter)",
    VmbackupConfError,
    None,
)
