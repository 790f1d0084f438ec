"""The hook directory: which of its entries are hooks, in which order, and which are session hooks.

Every executable in the hook directory (``/etc/quiesce/hooks.d`` unless the
config says otherwise) is a hook, run in name order. Package-manager
leftovers (``*.dpkg-*``, ``*.rpmnew``, ``*.rpmsave``, ``*.rpmorig``,
``*~``) and hidden files are skipped; a file nobody may execute (a README,
say), and anything that is not a regular file (a subdirectory, a FIFO, a
socket, a device, a symlink to one of these) is skipped with a warning. A
hook named ``*.session`` is a session hook (:mod:`quiesce.supervise.session`).
An unsafe directory (writable by someone but root) runs no hook at all.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field

from quiesce.engine.trust import UnsafeDirectoryError, check_directory, file_type

DEFAULT_HOOK_DIR = "/etc/quiesce/hooks.d"
#: Files in the hook directory that are never hooks.
SKIP_PATTERNS = ("*.dpkg-*", "*.rpmnew", "*.rpmsave", "*.rpmorig", "*~", ".*")
SESSION_SUFFIX = ".session"


@dataclass(frozen=True)
class Hook:
    """One entry of the hook directory."""

    name: str
    path: str
    session: bool


@dataclass
class HookDirectory:
    """The hooks found in a directory, in name order, and what was skipped."""

    path: str
    hooks: list[Hook] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def discover(directory: str) -> HookDirectory:
    """List the hooks of ``directory``; a missing directory has none.

    An unsafe directory (writable by someone but root) is an error: none of
    its hooks may run.
    """
    found = HookDirectory(directory)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    except OSError as err:
        found.error = f"hook directory {directory}: {err.strerror}"
        return found
    try:
        # The directory itself too: whoever can write it can plant hooks in it.
        check_directory(os.path.abspath(directory))
    except UnsafeDirectoryError as err:
        found.error = f"hook directory {directory} is unsafe: {err}"
        return found
    for name in names:
        if any(fnmatch.fnmatch(name, p) for p in SKIP_PATTERNS):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        skip = _not_a_hook(path, st)
        if skip is not None:
            found.warnings.append(f"hook directory: {path} {skip}, skipped")
            continue
        found.hooks.append(Hook(name, path, name.endswith(SESSION_SUFFIX)))
    return found


def _not_a_hook(path: str, st: os.stat_result) -> str | None:
    """Why the entry at ``path`` is not a hook (skipped with a warning), or None.

    A subdirectory, FIFO, socket or device is not a program; a symlink to
    one (or a dangling symlink) neither. A symlink to a regular file is
    kept: it is meant as a hook, and the script checks refuse it by name.
    """
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            return "is a dangling symlink"
        if stat.S_ISREG(target.st_mode):
            return None
        return f"is a symlink to {file_type(target.st_mode)}, not a program"
    if not stat.S_ISREG(st.st_mode):
        return f"is {file_type(st.st_mode)}, not a program"
    if not st.st_mode & 0o111:
        return "is not executable"
    return None
