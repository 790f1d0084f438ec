"""A cgroup v2 per script attempt, so the whole tree can be killed at once.

A script that forks and calls ``setsid`` leaves its process group; it cannot
leave its cgroup. Each attempt gets ``<cgroup2>/quiesce/<name>``, the child
starts directly inside it (``CLONE_INTO_CGROUP``), and ``cgroup.kill`` ends
everything in it. Without a writable cgroup v2 hierarchy the caller falls
back to the process group, and says so in the result.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from types import TracebackType

from quiesce.mounts import read_mountinfo

PARENT = "quiesce"


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup``, or ``.../unified`` on hybrid)."""
    for m in read_mountinfo(mountinfo):
        if m.fstype == "cgroup2":
            return m.mount_point
    return None


class ScriptCgroup:
    """One cgroup for one script attempt; remove it with :meth:`close`."""

    def __init__(self, root: str, name: str) -> None:
        parent = os.path.join(root, PARENT)
        with contextlib.suppress(FileExistsError):
            os.mkdir(parent, 0o755)
        self.path = os.path.join(parent, name)
        os.mkdir(self.path, 0o755)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.rmdir(self.path)
            raise

    @classmethod
    def create(cls, name: str, root: str | None = None) -> ScriptCgroup | None:
        """A new cgroup, or None when cgroup v2 is missing or not writable."""
        root = root or cgroup2_root()
        if root is None:
            return None
        try:
            return cls(root, name)
        except OSError:
            return None

    def pids(self) -> list[int]:
        """The processes in the cgroup now."""
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        """True while any process is in the cgroup."""
        with open(os.path.join(self.path, "cgroup.events")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
        return False

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, setsid escapees included."""
        with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
            f.write("1")

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait (on cgroup.events, no polling loop) until empty; False on timeout."""
        path = os.path.join(self.path, "cgroup.events")
        end = time.monotonic() + timeout_s
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            poller = select.poll()
            # The kernel signals a change of cgroup.events as POLLPRI.
            poller.register(fd, select.POLLPRI)
            while self.populated():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(left * 1000)
                os.lseek(fd, 0, os.SEEK_SET)
                os.read(fd, 4096)
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        """Kill what is left, wait for it, and remove the cgroup."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if self.populated():
                self.kill()
                self.wait_empty(5.0)
        os.close(self.fd)
        self.fd = -1
        with contextlib.suppress(OSError):
            os.rmdir(self.path)

    def __enter__(self) -> ScriptCgroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
