"""Session hooks' notify sockets: ``READY=1`` the systemd way, believed only from the hook itself.

A session hook says it holds the application quiesced by sending
``READY=1`` to ``$NOTIFY_SOCKET``; on that word quiesce freezes and reports
the snapshot application-consistent. So nothing but the hook may say it:

- each run's sockets live in a private directory, mode 700, made in the
  checked run directory (:class:`NotifyDir`): no other user can reach them;
- every datagram carries its sender's credentials (``SO_PASSCRED``, and a
  pidfd with ``SO_PASSPIDFD`` where the kernel has it), and it is accepted
  only when the sender is in the hook's cgroup (``/proc/PID/cgroup``, as
  systemd checks a unit's notifications), or, without cgroup v2, in the
  hook's session (the hook is its session leader; a process cannot join
  another session, while a process group can be left for another of the
  same session). A root process elsewhere is refused too.

Refused datagrams are counted, and the run names them in its warnings.
Descriptors passed with any datagram are closed at once (``systemd-notify``
waits for its ``BARRIER=1`` pipe to be closed: closing is the answer).
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Callable

from quiesce.engine.rundir import RunDir
from quiesce.supervise.procs import cgroup_of, session_of

# Not in Python 3.11's socket module (Linux 6.5+): the sender's pidfd.
_SO_PASSPIDFD = 76
_SCM_PIDFD = 0x04
_UCRED = struct.Struct("iII")
_MAX_FDS = 64
_ANC_SIZE = socket.CMSG_SPACE(_MAX_FDS * 4) + socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(4)

#: The name of a run's notify directory in the run directory, before the run ID.
NOTIFY_PREFIX = "notify-"

#: Decides whether a sender's pid may speak for the hook.
SenderCheck = Callable[[int], bool]


def in_cgroup(cgroup: str) -> SenderCheck:
    """Accept senders in ``cgroup`` (a ``/proc/PID/cgroup`` path) or below it."""
    prefix = cgroup.rstrip("/") + "/"

    def check(pid: int) -> bool:
        where = cgroup_of(pid)
        return where is not None and (where == cgroup or where.startswith(prefix))

    return check


def in_session(sid: int) -> SenderCheck:
    """Accept senders in the session ``sid`` (the fallback without cgroup v2)."""

    def check(pid: int) -> bool:
        return session_of(pid) == sid

    return check


class NotifyDir:
    """A private directory (mode 700) in the run directory for one run's notify sockets."""

    def __init__(self, run_dir: str, run_id: str) -> None:
        self._run_dir = RunDir.open(run_dir)
        self.name = f"{NOTIFY_PREFIX}{run_id}"
        try:
            # A leftover of a crashed run with the same ID holds nothing alive.
            self._run_dir.remove_private(self.name)
            self.dir = self._run_dir.make_private(self.name)
        except BaseException:
            self._run_dir.close()
            raise
        self._count = 0

    def socket(self) -> NotifySocket:
        """A new notify socket in the directory; it accepts nothing until given a sender check."""
        name = str(self._count)
        self._count += 1
        return NotifySocket(self.dir, name)

    def close(self) -> None:
        """Remove the directory and its sockets (idempotent)."""
        if self.dir.fd >= 0:
            self.dir.close()
            with contextlib.suppress(OSError):
                self._run_dir.remove_private(self.name)
            self._run_dir.close()


class NotifySocket:
    """One hook's datagram socket; :meth:`receive` returns only what the hook itself sent."""

    def __init__(self, directory: RunDir, name: str) -> None:
        self.path = directory.path_of(name)
        self.check: SenderCheck | None = None
        self.refused = 0
        self.last_refused: tuple[int, int] | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            with contextlib.suppress(OSError):  # before Linux 6.5: credentials only
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_PASSPIDFD, 1)
            self.sock.bind(self.path)
            os.chmod(name, 0o600, dir_fd=directory.fd)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        """The socket's fd, for select."""
        return self.sock.fileno()

    def receive(self) -> list[str]:
        """One datagram's assignments, if one is waiting and its sender passes the check."""
        try:
            msg, ancdata, _, _ = self.sock.recvmsg(
                4096, _ANC_SIZE, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return []
        pid, uid, pidfd, fds = 0, -1, -1, array.array("i")
        for level, kind, data in ancdata:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            elif kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                pid, uid, _ = _UCRED.unpack_from(data)
            elif kind == _SCM_PIDFD and len(data) >= 4:
                (pidfd,) = struct.unpack("=i", data[:4])
        try:
            accepted = self._from_hook(pid, pidfd)
        finally:
            for fd in (*fds, pidfd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if not accepted:
            self.refused += 1
            self.last_refused = (pid, uid)
            return []
        return msg.decode(errors="replace").split("\n")

    def _from_hook(self, pid: int, pidfd: int) -> bool:
        if self.check is None or pid <= 0 or not self.check(pid):
            return False
        # With the sender's pidfd: the pid checked is still the sender's (not reaped and reused).
        return pidfd < 0 or _pid_of_pidfd(pidfd) == pid

    def refusals(self) -> str | None:
        """A warning naming the refused datagrams, or None."""
        if not self.refused or self.last_refused is None:
            return None
        pid, uid = self.last_refused
        return (
            f"ignored {self.refused} notification(s) on {self.path} from outside the hook "
            f"(last from pid {pid}, uid {uid})"
        )

    def close(self) -> None:
        """Close the socket (idempotent); the directory removes the file."""
        self.sock.close()


def _pid_of_pidfd(pidfd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
