"""The run directory, and every file quiesce writes: root's alone, reached through a directory fd.

quiesce runs as root and acts on what it finds in its run directory: it
signals the process a ledger names, thaws the filesystems it lists, writes
the value it records to ``/sys``. So the directory (``/run/quiesce``,
``--run-dir``, ``$QUIESCE_RUN_DIR``, or ``run_dir`` in the API) is used only
when root owns it and nobody else can write it or any directory above it
(the chain check of :mod:`quiesce.engine.trust`), and everything in it is
reached through the directory's open fd, never a path again:

- a file is opened relative to the fd with ``O_NOFOLLOW`` (a planted
  symlink is refused, never followed), then checked with ``fstat``;
- a file quiesce reads back and acts on (the ledger, the last report) is
  trusted only as a regular file owned by root, with no group or other
  bits and a single link (:meth:`RunDir.read_trusted`);
- a file is written whole under an unpredictable temp name (``O_EXCL``,
  random) in the same directory and renamed over its name
  (:func:`atomic_write`): no reader sees half a file, no one can plant the
  temp name in advance.

A missing run directory is made one level at a time with ``mkdirat``,
mode 700, each level opened with ``O_NOFOLLOW`` and checked before the next
is made in it. The same checks guard the directory of ``--metrics``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import stat

from quiesce.closeable import Closeable
from quiesce.engine.trust import WRITABLE_BY_OTHERS, UnsafeDirectoryError, check_directory, owner_and_mode
from quiesce.errors import UnsafeRunDirError, UntrustedFileError

#: Where the lock, the ledger and the guardian's log live. tmpfs on a normal
#: system, so never frozen. Any run directory must be root's alone (this
#: module's checks); a missing one is made with mode 700.
RUN_DIR = "/run/quiesce"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK and O_NOCTTY: a FIFO or a terminal at the name must not block or be adopted.
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
#: Where the fix in a message points to.
DEFAULT_HINT = RUN_DIR
#: The most quiesce reads back from one file of its run directory.
TRUSTED_MAX_BYTES = 1 << 20


def open_safe_dir(path: str, *, create: bool, what: str = "run directory") -> tuple[str, int]:
    """Open the directory at ``path`` if only root can change it; returns (absolute path, fd).

    With ``create``, a missing directory (and missing parents) is made with
    mode 700. Raises :class:`UnsafeRunDirError` naming the directory, its
    owner, mode and the fix; ``FileNotFoundError`` when it is missing and
    not to be created.
    """
    if "\0" in path:
        raise UnsafeRunDirError(f"{what} {path!r} contains a NUL byte")
    absolute = os.path.abspath(path)
    try:
        return absolute, _open_or_create(absolute, create)
    except UnsafeDirectoryError as err:
        raise _unsafe(what, absolute, err) from err
    except FileNotFoundError:
        raise
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise UnsafeRunDirError(f"{what} {absolute} cannot be used: {err.strerror}{where}") from err


def _open_or_create(path: str, create: bool) -> int:
    try:
        return _open_existing(path)
    except FileNotFoundError:
        parent, name = os.path.split(path)
        if not create or not name:
            raise
    parent_fd = _open_or_create(parent, create)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
    try:
        _check_dir_fd(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_existing(path: str) -> int:
    real, lst = check_directory(path)
    fd = os.open(real, _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
            raise UnsafeRunDirError(f"{path} was replaced while it was being checked")
        _check_dir_fd(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unsafe(what: str, path: str, err: UnsafeDirectoryError) -> UnsafeRunDirError:
    where = "it" if err.path == path else f"directory {err.path} above it"
    shared = err.mode & stat.S_ISVTX and err.mode & WRITABLE_BY_OTHERS
    if err.path == path and shared:  # /tmp and its kind: never tell anyone to lock it down
        fix = f"use a directory of quiesce's own, such as {DEFAULT_HINT} ({path} is shared: do not change it)"
    elif err.path == path and err.mount_problem is None:
        fix = f"chown root:root {shlex.quote(path)} && chmod 700 {shlex.quote(path)}"
    else:
        fix = f"use a directory only root can write, on a path only root can change (such as {DEFAULT_HINT})"
    return UnsafeRunDirError(
        f"{what} {path} is unsafe: {where} {'; '.join(err.problems)} "
        f"(owner uid {err.uid}, mode {stat.S_IMODE(err.mode):04o}), so another user could plant "
        f"files or links there that quiesce would act on as root; fix: {fix}"
    )


def _check_dir_fd(path: str, fd: int) -> None:
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectoryError(path, st)


def atomic_write(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``name`` in the directory ``dir_fd`` with ``data``, whole or not at all.

    The data goes to a new file with a random name (``O_CREAT|O_EXCL``,
    ``O_NOFOLLOW``), is given ``mode`` and fsynced, and is renamed over
    ``name`` (a symlink there is replaced, never followed).
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    tmp = f".{name}.{os.urandom(8).hex()}.tmp"  # as secrets.token_hex(8), without loading secrets
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


class RunDir(Closeable):
    """An open, checked run directory; files in it are reached only through its fd.

    :meth:`open` checks (and if asked, creates) it; close it with
    :meth:`close` or a ``with`` block.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: str, *, create: bool = True) -> RunDir:
        """Open the run directory at ``path`` (made, mode 700, if missing and ``create``).

        Raises :class:`UnsafeRunDirError` unless root owns it and only root
        can write it and every directory above it; ``FileNotFoundError``
        when it is missing and ``create`` is false.
        """
        absolute, fd = open_safe_dir(path, create=create)
        return cls(absolute, fd)

    @classmethod
    def open_existing(cls, path: str) -> RunDir | None:
        """The run directory at ``path``, or None when it does not exist (it is not made)."""
        try:
            return cls.open(path, create=False)
        except FileNotFoundError:
            return None

    def path_of(self, name: str) -> str:
        """The path of ``name`` in the directory, for messages and for sockets a child must reach."""
        return os.path.join(self.path, name)

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open (or create) ``name`` here without following a link; it must be root's regular file."""
        try:
            fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UntrustedFileError(f"{self.path_of(name)} is a symlink: not followed") from err
            raise
        try:
            _check_own_file(self.path_of(name), os.fstat(fd), private=False)
        except BaseException:
            os.close(fd)
            raise
        os.set_blocking(fd, True)
        return fd

    def read_trusted(self, name: str, limit: int = TRUSTED_MAX_BYTES) -> bytes | None:
        """The bytes of ``name``, or None when it does not exist.

        Raises :class:`UntrustedFileError` unless it is a regular file owned
        by root, with no group or other bits, one link, at most ``limit``
        bytes: only such a file can have been written by quiesce.
        """
        path = self.path_of(name)
        try:
            fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UntrustedFileError(f"{path} is a symlink: not followed") from err
            raise
        try:
            _check_own_file(path, os.fstat(fd), private=True)
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise UntrustedFileError(f"{path} is larger than {limit} bytes")
        return data

    def write(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Replace ``name`` atomically (see :func:`atomic_write`)."""
        atomic_write(self.fd, name, data, mode)

    def unlink(self, name: str) -> None:
        """Remove ``name`` if it is there."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def make_private(self, name: str) -> RunDir:
        """Make and open a new subdirectory ``name``, mode 700 (an existing one is an error)."""
        os.mkdir(name, 0o700, dir_fd=self.fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        os.fchmod(fd, 0o700)
        return RunDir(self.path_of(name), fd)

    def remove_private(self, name: str) -> None:
        """Remove the subdirectory ``name`` made by :meth:`make_private` and the entries in it."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return
        try:
            for entry in os.listdir(fd):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=self.fd)

    def close(self) -> None:
        """Close the directory fd (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _check_own_file(path: str, st: os.stat_result, *, private: bool) -> None:
    problems = []
    if not stat.S_ISREG(st.st_mode):
        problems.append("is not a regular file")
    if st.st_uid != 0:
        problems.append(f"is owned by uid {st.st_uid}, not root")
    if private and st.st_mode & 0o077:
        problems.append("has group or other permission bits (quiesce writes it mode 600)")
    if st.st_nlink != 1:
        problems.append(f"has {st.st_nlink} links")
    if problems:
        raise UntrustedFileError(f"{path} {'; '.join(problems)} ({owner_and_mode(st)}): not trusted")
