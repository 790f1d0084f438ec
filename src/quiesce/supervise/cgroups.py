"""A cgroup v2 per script attempt, so the whole tree can be killed at once.

A script that forks and calls ``setsid`` leaves its process group; it cannot
leave its cgroup. Each attempt gets ``<cgroup2>/quiesce/<name>``, the child
starts directly inside it (``CLONE_INTO_CGROUP``), and ``cgroup.kill`` ends
everything in it. Without a writable cgroup v2 hierarchy the caller falls
back to the process group, and says so in the result.

Under systemd with ``Delegate=yes`` (``systemd/quiesce.service``) the
service owns its cgroup and systemd the rest of the tree: quiesce then
makes its cgroups under its own, ``<service cgroup>/quiesce/...``
(:func:`run_parent`). systemd marks a delegated cgroup with the
``trusted.delegate`` xattr.
"""

from __future__ import annotations

import contextlib
import os
import select
import time

from quiesce.closeable import Closeable
from quiesce.engine import native
from quiesce.engine.ledger import run_pid
from quiesce.engine.mountinfo import read_mountinfo
from quiesce.supervise.procs import cgroup_of

PARENT = "quiesce"
#: The xattr systemd's system manager sets to 1 on a cgroup it delegated.
DELEGATE_XATTR = "trusted.delegate"


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup``, or ``.../unified`` on hybrid)."""
    # Only the cgroup2 lines are parsed: this runs before every script, and a machine
    # with many mounts would otherwise parse them all each time.
    for m in read_mountinfo(mountinfo, fstype="cgroup2"):
        return m.mount_point
    return None


def delegated_cgroup(root: str, own: str | None = None) -> str | None:
    """This process's cgroup (or ``own``, a /proc/PID/cgroup path) if it was delegated to it, else None.

    Delegated means: marked ``trusted.delegate=1`` (only a privileged
    manager can set a ``trusted.`` xattr) and owned by this process's user,
    as systemd leaves a ``Delegate=yes`` unit's cgroup.
    """
    own = own if own is not None else cgroup_of(os.getpid())
    if own is None or own.strip("/") == "":
        return None
    path = os.path.join(root, own.strip("/"))
    try:
        if os.stat(path).st_uid != os.geteuid():
            return None
        return path if os.getxattr(path, DELEGATE_XATTR).strip() == b"1" else None
    except OSError:
        return None


def run_parent(root: str) -> str:
    """Where a run's cgroups go: under a delegated cgroup of ours, else at the hierarchy's top."""
    return os.path.join(delegated_cgroup(root) or root, PARENT)


class ScriptCgroup(Closeable):
    """One cgroup for one script attempt; remove it with :meth:`close`."""

    def __init__(self, root: str, name: str, parent: str | None = None) -> None:
        self.root = root
        if parent is None:
            parent = run_parent(root)
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
    def create(cls, name: str, root: str | None = None, parent: str | None = None) -> ScriptCgroup | None:
        """A new cgroup (under ``parent``, a run's cgroup, if given), or None without cgroup v2.

        ``QUIESCE_FALLBACK=no-cgroup`` makes it None too: the process-group
        fallback, forced (the tests cover that path on machines with cgroup v2).
        """
        if "no-cgroup" in native.fallbacks():
            return None
        root = root or cgroup2_root()
        if root is None:
            return None
        try:
            return cls(root, name, parent)
        except OSError:
            return None

    @property
    def relative_path(self) -> str:
        """The cgroup as ``/proc/PID/cgroup`` names it: its path below the hierarchy's root."""
        return "/" + os.path.relpath(self.path, self.root)

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


class RunCgroup(Closeable):
    """The parent cgroup of one run's scripts, with a watchdog that kills it if the run dies.

    ``<cgroup2>/quiesce/<run_id>`` (under the service's own cgroup when
    systemd delegated it); every script, hook and snapshot command of
    the run gets a child cgroup under it. If the run's process dies (SIGKILL
    included), the watchdog writes ``cgroup.kill`` here: nothing the run
    started survives it. :func:`kill_orphaned_run_cgroups` removes what is
    left of runs that died.
    """

    def __init__(self, run_id: str, root: str | None = None) -> None:
        self.path: str | None = None
        self._kill_fd = -1
        self._watchdog: native.Watchdog | None = None
        cg = ScriptCgroup.create(run_id, root)
        if cg is None:
            return
        os.close(cg.fd)
        self.path = cg.path
        try:
            self._kill_fd = os.open(os.path.join(cg.path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
            self._watchdog = native.Watchdog(self._kill_fd)
        except OSError:
            self.close()

    def close(self) -> None:
        """Kill anything left, stop the watchdog, remove the cgroups (idempotent)."""
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if self._kill_fd >= 0:
            os.close(self._kill_fd)
            self._kill_fd = -1
        if self.path is not None:
            _remove_tree(self.path)
            self.path = None


def _remove_tree(path: str) -> None:
    """cgroup.kill a cgroup subtree, wait for it to empty, and rmdir it bottom-up."""
    # Never created: the kernel's file, or none (a kernel before 5.14, or not a cgroup).
    with contextlib.suppress(OSError):
        fd = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
    for dirpath, dirnames, _ in sorted(os.walk(path, topdown=False), key=lambda e: -len(e[0])):
        del dirnames
        for _ in range(100):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)  # its last processes are still exiting after the kill


def kill_orphaned_run_cgroups(root: str | None = None) -> list[str]:
    """Kill and remove the cgroups of runs whose process is gone; returns their names.

    Looks under this process's delegated cgroup (if any) and at the top of
    the hierarchy.
    """
    root = root or cgroup2_root()
    if root is None:
        return []
    removed = []
    for parent in dict.fromkeys((run_parent(root), os.path.join(root, PARENT))):
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            continue
        for name in sorted(names):
            path = os.path.join(parent, name)
            pid = run_pid(name)
            if not os.path.isdir(path) or pid is None or os.path.exists(f"/proc/{pid}"):
                continue
            _remove_tree(path)
            removed.append(name)
    return removed
