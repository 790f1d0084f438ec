"""The freeze lock: one quiesce freeze on a machine at a time.

An ``flock`` on ``RUN_DIR/lock``. The lock belongs to the open file, so the
guardian, which inherits the fd, keeps it held while it may still thaw: a new
freeze cannot start before the previous guardian is done. The holder's pid
is written into the file for the error message. The file is opened through
the checked run directory's fd, never following a link
(:class:`quiesce.engine.rundir.RunDir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from quiesce.engine.rundir import RunDir
from quiesce.errors import LockHeldError, QuiesceError, QuiesceOSError

LOCK_NAME = "lock"


class FreezeLock:
    """An acquired freeze lock; :meth:`release` (or the context) gives it back."""

    def __init__(self, run_dir: RunDir | str, name: str = LOCK_NAME, what: str = "freeze") -> None:
        opened = RunDir.open(run_dir) if isinstance(run_dir, str) else None
        d = opened or run_dir
        assert isinstance(d, RunDir)
        self.path = d.path_of(name)
        try:
            try:
                self.fd = d.open_file(name, os.O_RDWR | os.O_CREAT)
            except OSError as err:
                raise QuiesceOSError(err.errno or 0, "opening the lock", self.path) from err
        finally:
            if opened is not None:
                opened.close()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(self.fd)
            os.close(self.fd)
            who = f"pid {holder}" if holder else "another process"
            if holder == os.getpid():
                who = f"this process, pid {holder}, through another Freeze or run"
            raise LockHeldError(
                f"another quiesce {what} is in progress ({who} holds {self.path}); "
                "wait for it, or see `quiesce status`",
                holder,
            ) from None
        # The pid is only for messages: a full disk must not fail the lock.
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FreezeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


#: The kernel's PID_MAX_LIMIT: no pid is larger.
_PID_MAX = 1 << 22


def _holder_of(fd: int) -> int | None:
    """The pid a lock file names, if it is a process alive now (the file may hold anything, or a dead pid)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).strip() or 0)
        if 0 < pid <= _PID_MAX and os.path.exists(f"/proc/{pid}"):
            return pid
    return None


def held_by(run_dir: RunDir, name: str = LOCK_NAME) -> tuple[bool, int | None]:
    """Whether some process holds the lock now, and the pid the holder wrote (only if held).

    Looking takes no lock (see :func:`_flocked`): a freeze or run that starts
    meanwhile never finds its lock taken by ``quiesce status`` or ``recover``.
    """
    try:
        fd = run_dir.open_file(name, os.O_RDONLY)
    except FileNotFoundError:
        return False, None
    try:
        held = _flocked(fd)
        return held, _holder_of(fd) if held else None
    finally:
        os.close(fd)


#: The kernel's table of file locks: "1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE 0 EOF" (hex device).
PROC_LOCKS = "/proc/locks"


def _devices(fd: int, st: os.stat_result) -> set[tuple[int, int]]:
    """The devices the lock table may name the file of ``fd`` by: its superblock's, and ``st_dev``.

    The table names the superblock's device, which ``stat`` does not always
    report (a btrfs subvolume has a device of its own): the mount table has it.
    """
    from quiesce.engine.mountinfo import read_mountinfo  # only status and recover look
    from quiesce.engine.usermounts import mount_id_of_fd

    devices = {(os.major(st.st_dev), os.minor(st.st_dev))}
    with contextlib.suppress(OSError, QuiesceError):  # no mount table: st_dev it is
        mount_id = mount_id_of_fd(fd)
        devices.update((m.major, m.minor) for m in read_mountinfo() if m.mount_id == mount_id)
    return devices


def _flocked(fd: int) -> bool:
    """True when some process holds an flock on the file of ``fd``.

    Read from the kernel's lock table, not by trying a shared lock: that
    try held the lock for an instant, and a freeze or run starting in it
    was refused as if another one were in progress. Without the table
    (no /proc), the try it is.
    """
    st = os.fstat(fd)
    keys = {f"{major:02x}:{minor:02x}:{st.st_ino}" for major, minor in _devices(fd, st)}
    try:
        with open(PROC_LOCKS) as f:
            # A process waiting for a lock has a "->" line; only holders count.
            return any(
                len(fields) > 5 and fields[1] == "FLOCK" and fields[5] in keys
                for fields in (line.split() for line in f)
            )
    except OSError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def is_held(run_dir: RunDir | str) -> bool:
    """True when some process holds the freeze lock now."""
    if isinstance(run_dir, RunDir):
        return held_by(run_dir)[0]
    d = RunDir.open_existing(run_dir)
    if d is None:
        return False
    with d:
        return held_by(d)[0]
