"""The pre-flush policy on real filesystems: dirty data is written before the window; clean, it is skipped."""

from __future__ import annotations

import ctypes
import os

import pytest

from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.preflush import CLEAN, DIRTY, DISABLED, PreflushPolicy, read_dirty
from tests.privileged.conftest import targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

_LIBC = ctypes.CDLL(None, use_errno=True)
MIB = 1 << 20
#: Written without fsync: twelve times the default threshold.
DIRTY_MIB = 48


def sectors_written(device: str) -> int:
    """512-byte sectors written to a block device so far (/sys/block/NAME/stat, field 7)."""
    with open(f"/sys/block/{os.path.basename(device)}/stat") as f:
        return int(f.read().split()[6])


def write_dirty(where, mib: int) -> None:
    """``mib`` MiB into a new file on ``where``, no fsync: dirty page cache."""
    block = os.urandom(MIB)
    fd = os.open(where.mount_point / "dirty", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for _ in range(mib):
            os.write(fd, block)
    finally:
        os.close(fd)


def settle(where) -> None:
    """syncfs() the filesystem (only it: the machine is shared): nothing of it left dirty."""
    fd = os.open(where.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        assert _LIBC.syncfs(fd) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)


def freeze_once(where, options: FreezeOptions) -> tuple[Freeze, int]:
    """Prepare (with its pre-flush, or not), freeze, thaw; returns it and the sectors prepare() wrote."""
    f = Freeze(targets(where), options)
    with f:
        before = sectors_written(where.device)
        f.prepare()
        during_prepare = sectors_written(where.device) - before
        f.freeze()
        f.thaw()
    return f, during_prepare


def test_dirty_filesystem_is_preflushed_before_the_window(fs, run_dir):
    """48 MiB dirty: the default policy pre-flushes, and the data reaches the device before FIFREEZE."""
    xfs = fs["xfs"]
    try:
        write_dirty(xfs, DIRTY_MIB)
        f, written = freeze_once(xfs, FreezeOptions(timeout_s=20, run_dir=run_dir))
    finally:
        (xfs.mount_point / "dirty").unlink(missing_ok=True)
    d = f.report.preflush
    assert f.report.ok, f.report
    assert d is not None and d.flush and d.reason == DIRTY
    assert d.dirty_bytes is not None and d.dirty_bytes >= DIRTY_MIB * MIB
    assert f.report.preflush_ns is not None and f.report.preflush_ns > 0
    [t] = f.report.targets
    assert t.preflush_ns is not None and t.preflush_errno == 0
    # The pre-flush, not the FIFREEZE, wrote the data: it reached the loop device during prepare().
    assert written * 512 >= DIRTY_MIB * MIB, f"only {written * 512 / MIB:.1f} MiB written before the freeze"


def test_clean_filesystem_skips_the_preflush(fs, run_dir):
    """Below the threshold: no syncfs at all, the report says clean and the figure it saw."""
    ext4 = fs["ext4"]
    settle(ext4)
    now = read_dirty()
    assert now is not None
    # Whatever the rest of the machine has dirty right now, this threshold is above it.
    policy = PreflushPolicy(skip_below_bytes=now + 1024 * MIB)
    f, _ = freeze_once(ext4, FreezeOptions(timeout_s=20, run_dir=run_dir, preflush_policy=policy))
    d = f.report.preflush
    assert f.report.ok, f.report
    assert d is not None and not d.flush and d.reason == CLEAN
    assert d.dirty_bytes is not None and d.dirty_bytes < policy.skip_below_bytes
    assert f.report.preflush_ns is None
    assert [t.preflush_ns for t in f.report.targets] == [None]


def test_default_policy_skips_on_a_quiet_machine(fs, run_dir):
    """With the default threshold: skipped when the machine has under 4 MiB dirty, flushed otherwise."""
    ext4 = fs["ext4"]
    settle(ext4)
    f, _ = freeze_once(ext4, FreezeOptions(timeout_s=20, run_dir=run_dir))
    d = f.report.preflush
    assert d is not None and d.dirty_bytes is not None
    assert d.flush == (d.dirty_bytes >= PreflushPolicy().skip_below_bytes)
    assert (f.report.preflush_ns is not None) == d.flush
    if d.flush:
        pytest.skip(f"the machine had {d.dirty_bytes / MIB:.0f} MiB dirty (others are writing): not quiet")
    assert d.reason == CLEAN


def test_no_preflush_never_flushes_even_when_dirty(fs, run_dir):
    """``preflush=False`` (``--no-preflush``): no syncfs whatever is dirty, and the report says off."""
    xfs = fs["xfs"]
    try:
        write_dirty(xfs, DIRTY_MIB)
        f, _ = freeze_once(xfs, FreezeOptions(timeout_s=20, run_dir=run_dir, preflush=False))
    finally:
        (xfs.mount_point / "dirty").unlink(missing_ok=True)
    d = f.report.preflush
    assert f.report.ok, f.report
    assert d is not None and not d.flush and d.reason == DISABLED and d.dirty_bytes is None
    assert f.report.preflush_ns is None
