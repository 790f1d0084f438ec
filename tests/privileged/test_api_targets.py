"""Naming what to freeze through the API: paths of every kind, iterators, a filesystem named twice."""

from __future__ import annotations

import os
import pathlib

import pytest

import quiesce
from tests.privileged.conftest import targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def options(run_dir: str, timeout_s: float = 5) -> quiesce.FreezeOptions:
    """A short guardian deadline in the test's own run directory."""
    return quiesce.FreezeOptions(timeout_s=timeout_s, run_dir=run_dir)


def test_the_same_filesystem_named_twice(fs, run_dir):
    """Two Targets of one filesystem: TargetError before anything is frozen; two paths: planned once."""
    [t] = targets(fs["ext4"])
    with pytest.raises(quiesce.TargetError, match="twice"):
        quiesce.Freeze([t, t], options(run_dir))
    path = str(fs["ext4"].mount_point)
    with quiesce.frozen([path, path + "/", path], options(run_dir)) as w:
        pass
    assert [r.mount_point for r in w.report.targets] == [path]


def test_targets_from_a_generator_are_all_frozen(fs, run_dir):
    """An iterator of paths is read once, whole: every target in it is frozen."""
    paths = [str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)]
    with quiesce.frozen((p for p in paths), options(run_dir)) as w:
        pass
    assert sorted(r.mount_point for r in w.report.targets) == sorted(paths)
    assert w.report.ok
    with quiesce.frozen(iter(targets(fs["ext4"], fs["xfs"])), options(run_dir)) as w:
        pass
    assert sorted(r.mount_point for r in w.report.targets) == sorted(paths)


def test_path_objects_and_bytes_name_targets_too(fs, run_dir):
    """A pathlib.Path and a bytes path are mount points like a str."""
    ext4, xfs = fs["ext4"].mount_point, fs["xfs"].mount_point
    with quiesce.frozen([pathlib.Path(ext4), os.fsencode(xfs)], options(run_dir)) as w:
        pass
    assert sorted(r.mount_point for r in w.report.targets) == sorted([str(ext4), str(xfs)])
    assert w.report.ok


def test_a_relative_path_is_resolved_from_the_working_directory(fs, run_dir, monkeypatch):
    """A relative mount point is taken from the current directory, which is left as it was."""
    mount = fs["btrfs"].mount_point
    monkeypatch.chdir(mount.parent)
    with quiesce.frozen([mount.name], options(run_dir)) as w:
        pass
    assert [r.mount_point for r in w.report.targets] == [str(mount)]
    assert os.getcwd() == str(mount.parent)
