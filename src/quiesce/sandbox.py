"""Loop-mounted filesystems in a private mount namespace.

The test suite, the benchmarks and the demo freeze only filesystems built
here: sparse image files, attached to loop devices, formatted and mounted in a
mount namespace private to this process, so nothing is visible to (or can
freeze) the machine's own filesystems. :class:`Sandbox` always thaws,
unmounts, detaches and deletes what it made, in an order that cannot
deadlock: backing filesystems are thawed before the filesystems stacked on
them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from quiesce.closeable import Closeable

# Defined with the other errors so the command line catches it without importing this module.
from quiesce.errors import SandboxError as SandboxError

# From <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int). The
# sandbox thaws without the native module, so teardown works even when the
# engine under test is broken.
_FITHAW = 0xC0045878
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18

MKFS: dict[str, list[str]] = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}

#: Smallest image each type accepts (xfsprogs refuses under 300 MiB).
MIN_SIZE_MB: dict[str, int] = {"ext4": 16, "ext2": 16, "xfs": 300, "btrfs": 120}


def enter_private_mount_namespace() -> None:
    """Move this process into a new mount namespace with private propagation.

    Mounts made afterwards by this process and its children stay invisible to
    the rest of the machine, and vanish when the last process in the namespace
    exits.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"mount --make-rprivate /: {os.strerror(err)}")


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise SandboxError(f"{argv[0]} is not installed") from err
    if done.returncode != 0:
        raise SandboxError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def thaw_quietly(path: str) -> bool:
    """FITHAW ``path`` if it is frozen; True when it was. Never raises for EINVAL."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, _FITHAW, 0)
        return True
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        return False
    finally:
        os.close(fd)


@dataclass
class LoopFs:
    """One loop-mounted filesystem of a sandbox."""

    fstype: str
    image: Path
    device: str
    mount_point: Path
    dev: str
    parent: LoopFs | None = None
    mounted: bool = field(default=True, repr=False)

    def __str__(self) -> str:
        return str(self.mount_point)


class Sandbox(Closeable):
    """A set of loop filesystems under a private temporary directory.

    Use as a context manager; :meth:`close` tears everything down even after
    a failure, and thaws first.
    """

    def __init__(self, base: str | os.PathLike[str] | None = None) -> None:
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (loop devices, mount)")
        self.base = Path(tempfile.mkdtemp(prefix="quiesce-sandbox-", dir=base))
        self.filesystems: list[LoopFs] = []

    def add(
        self,
        fstype: str,
        size_mb: int | None = None,
        *,
        on: LoopFs | None = None,
        name: str | None = None,
    ) -> LoopFs:
        """Create, format and mount a filesystem; ``on`` stacks its image on another."""
        if fstype not in MKFS:
            raise SandboxError(f"no mkfs recipe for {fstype!r}")
        size = max(size_mb or 0, MIN_SIZE_MB[fstype])
        label = name or f"{fstype}{len(self.filesystems)}"
        where = on.mount_point if on is not None else self.base
        image = where / f"{label}.img"
        with open(image, "wb") as f:
            f.truncate(size * 1024 * 1024)
        device = _run(["losetup", "--find", "--show", str(image)])
        fs = LoopFs(fstype, image, device, self.base / label, "", parent=on, mounted=False)
        self.filesystems.append(fs)
        _run([*MKFS[fstype], device])
        fs.mount_point.mkdir()
        _run(["mount", "-t", fstype, device, str(fs.mount_point)])
        fs.mounted = True
        st = os.stat(device)
        fs.dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        return fs

    def thaw_all(self) -> list[LoopFs]:
        """Thaw every sandbox filesystem that is frozen; returns those that were.

        Backing filesystems come first: an upper filesystem's thaw may need
        to write through its loop device to the one below.
        """
        thawed = []
        for fs in self.filesystems:
            if fs.mounted and thaw_quietly(str(fs.mount_point)):
                thawed.append(fs)
        return thawed

    def close(self) -> None:
        """Thaw, unmount, detach and delete everything, uppers before their backing."""
        self.thaw_all()
        errors = []
        for fs in reversed(self.filesystems):
            for argv in (
                ["umount", str(fs.mount_point)] if fs.mounted else None,
                ["losetup", "-d", fs.device],
            ):
                if argv is None:
                    continue
                try:
                    _run(argv)
                except SandboxError as err:
                    errors.append(str(err))
            fs.mounted = False
        self.filesystems.clear()
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise SandboxError("; ".join(errors))
