"""Fixtures for privileged tests: loop filesystems in a private mount namespace.

The whole test process moves into its own mount namespace before the first
privileged test, so the loop mounts are invisible to the machine and vanish
with the process. Every fixture thaws what it built in its finalizer, before
unmounting, even when the test failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.mounts import Target
from quiesce.plan import make_plan
from quiesce.sandbox import LoopFs, Sandbox, enter_private_mount_namespace, thaw_quietly

pytestmark = pytest.mark.privileged

_namespace_entered = False


@pytest.fixture(scope="session", autouse=True)
def private_namespace() -> None:
    """Enter a private mount namespace once for the test process."""
    global _namespace_entered
    if os.geteuid() != 0:
        pytest.skip("privileged test: needs root")
    if not _namespace_entered:
        enter_private_mount_namespace()
        _namespace_entered = True


@pytest.fixture(scope="session")
def world(private_namespace: None) -> Iterator[Sandbox]:
    """ext4, xfs and btrfs loop filesystems, plus an ext4 stacked on an xfs."""
    with Sandbox() as sb:
        for fstype in ("ext4", "xfs", "btrfs"):
            sb.add(fstype, name=fstype)
        outer = sb.add("xfs", name="outer")
        sb.add("ext4", on=outer, name="inner")
        yield sb


@pytest.fixture
def fs(world: Sandbox) -> Iterator[dict[str, LoopFs]]:
    """The world's filesystems by name; fails the test if it left any frozen."""
    yield {f.mount_point.name: f for f in world.filesystems}
    left = world.thaw_all()
    assert not left, f"left frozen by the test: {[str(f) for f in left]}"


@pytest.fixture
def run_dir(tmp_path: Path) -> str:
    """A private run directory (lock, ledger, guardian log) for one test."""
    d = tmp_path / "run"
    d.mkdir()
    return str(d)


def targets(*filesystems: LoopFs) -> list[Target]:
    """Plan targets for the given filesystems, in the order given."""
    plan = make_plan([str(f.mount_point) for f in filesystems], vmbackup_conf=None)
    by_mount = {t.mount.mount_point: t for t in plan.targets}
    return [by_mount[str(f.mount_point)] for f in filesystems]


class Writer:
    """A child process that creates a file on a filesystem and exits.

    While the filesystem is frozen it sleeps in the kernel; its pidfd turns
    readable the moment it finishes.
    """

    def __init__(self, where: LoopFs, name: str = "probe") -> None:
        path = where.mount_point / f"{name}-{time.monotonic_ns()}"
        code = f"open({str(path)!r}, 'w').write('x' * 4096)"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.path = path

    def finished_within(self, seconds: float) -> bool:
        """True when the writer exits within ``seconds``."""
        import select

        ready, _, _ = select.select([self.pidfd], [], [], seconds)
        return bool(ready)

    def finish(self) -> int:
        """Reap the writer (it must be able to finish: nothing may be frozen)."""
        rc = self.proc.wait(timeout=30)
        os.close(self.pidfd)
        return rc


def external_freeze(f: LoopFs) -> None:
    """Freeze as another tool would (util-linux fsfreeze)."""
    subprocess.run(["fsfreeze", "-f", str(f.mount_point)], check=True)


def is_frozen(f: LoopFs) -> bool:
    """True if ``f`` was frozen; it is thawed as a side effect (cleanup use only)."""
    return thaw_quietly(str(f.mount_point))
