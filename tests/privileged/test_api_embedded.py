"""quiesce used as an embedding tool would: plain paths, a callable snapshot, JSON results."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import quiesce
from tests.privileged.conftest import Writer

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def test_frozen_takes_mount_paths_and_a_timeout(fs, run_dir):
    """``quiesce.frozen([paths], timeout=...)`` plans, freezes and thaws; the report is JSON-ready."""
    paths = [str(fs["ext4"].mount_point), str(fs["btrfs"].mount_point)]
    with quiesce.frozen(paths, quiesce.FreezeOptions(run_dir=run_dir), timeout=5) as window:
        w = Writer(fs["ext4"])
        assert not w.finished_within(0.2)
    assert w.finished_within(5)
    w.finish()
    data = json.loads(json.dumps(window.report.to_dict()))
    assert data["ok"] and {t["mount_point"] for t in data["targets"]} == set(paths)


def test_frozen_refuses_a_path_that_is_not_a_mount(fs, run_dir):
    """A path that is not a mount point raises TargetError before anything is frozen."""
    with pytest.raises(quiesce.TargetError):
        with quiesce.frozen([str(fs["ext4"].mount_point / "nope")], quiesce.FreezeOptions(run_dir=run_dir)):
            pytest.fail("ran")


def test_run_with_a_config_path_and_a_snapshot_callable(setup):
    """``quiesce.run(path, snapshot=fn)``: fn runs inside the window; the result serialises."""
    setup.config()
    calls = []
    result = quiesce.run(setup.config_path, snapshot=lambda: calls.append("snap"), options=setup.options())
    assert calls == ["snap"]
    assert result.consistency == quiesce.APPLICATION
    data = json.loads(json.dumps(result.to_dict()))
    assert data["snapshot_mode"] == "callable" and data["ok"] is True


def test_run_with_an_invalid_config_object_raises_before_anything(setup):
    """A config that fails validation raises IncorrectJSONConfigFile; nothing runs."""
    setup.config()
    with pytest.raises(quiesce.IncorrectJSONConfigFile):
        quiesce.parse_config('{"preScriptLocation": "relative.sh", "postScriptLocation": "/x"}')
    assert setup.events() == []


def test_frozen_raises_when_the_guardian_thawed_before_the_block_ended(fs, run_dir):
    """``frozen(paths, timeout=1)`` around a 2 s body: WindowExpiredError with the report, on leaving."""
    paths = [str(fs["ext4"].mount_point)]
    with pytest.raises(quiesce.WindowExpiredError) as info:
        with quiesce.frozen(paths, quiesce.FreezeOptions(run_dir=run_dir), timeout=1):
            time.sleep(2)
    report = info.value.report
    assert isinstance(info.value, quiesce.QuiesceError)
    assert report.guardian_reason == "deadline" and not report.ok
    assert "guardian" in str(info.value)
    w = Writer(fs["ext4"])
    assert w.finished_within(5)
    w.finish()


def test_frozen_raises_when_someone_else_thawed_a_target(fs, run_dir):
    """A target thawed by another tool inside the block: WindowExpiredError naming it."""
    path = str(fs["xfs"].mount_point)
    with pytest.raises(quiesce.WindowExpiredError) as info:
        with quiesce.frozen([path], quiesce.FreezeOptions(run_dir=run_dir), timeout=10):
            subprocess.run(["fsfreeze", "-u", path], check=True)
    assert path in str(info.value)
    assert [t.state for t in info.value.report.targets] == ["thawed-externally"]


def test_frozen_allow_expired_leaves_the_check_to_the_caller(fs, run_dir):
    """``allow_expired=True``: no exception; the report says the guardian thawed."""
    paths = [str(fs["btrfs"].mount_point)]
    with quiesce.frozen(paths, quiesce.FreezeOptions(run_dir=run_dir), timeout=0.5, allow_expired=True) as w:
        time.sleep(1)
    assert w.report.guardian_reason == "deadline" and not w.report.ok


def test_frozen_never_replaces_the_bodys_own_exception(fs, run_dir):
    """The body raises after the window expired: its exception comes out, with a note about the window."""
    paths = [str(fs["ext4"].mount_point)]
    with pytest.raises(RuntimeError) as info:
        with quiesce.frozen(paths, quiesce.FreezeOptions(run_dir=run_dir), timeout=0.5):
            time.sleep(1)
            raise RuntimeError("snapshot API failed")
    assert any("expired" in note for note in info.value.__notes__)


def test_frozen_in_time_raises_nothing(fs, run_dir):
    """A block that ends before the deadline leaves normally."""
    with quiesce.frozen(
        [str(fs["ext4"].mount_point)], quiesce.FreezeOptions(run_dir=run_dir), timeout=5
    ) as w:
        pass
    assert w.report.ok and w.report.guardian_reason is None


def test_the_report_says_what_the_kernel_did(fs, run_dir):
    """Window and states as the kernel saw them: a guardian's thaw ends the window, a writer waits for it.

    Two targets, the block outliving a 0.5 s deadline: both read
    thawed-by-guardian; the window ends at the guardian's last FITHAW, after
    its firing; a write that sleeps on a frozen target finishes only then.
    """
    ext4, xfs = fs["ext4"], fs["xfs"]
    done: list[int] = []
    with quiesce.frozen(
        [str(ext4.mount_point), str(xfs.mount_point)],
        quiesce.FreezeOptions(run_dir=run_dir),
        timeout=0.5,
        allow_expired=True,
    ) as window:
        w = Writer(xfs)
        assert w.finished_within(10)
        done.append(time.monotonic_ns())
        w.finish()
    report = window.report
    assert [t.state for t in report.targets] == ["thawed-by-guardian"] * 2
    assert report.guardian_reason == "deadline" and not report.ok
    assert report.window_start_ns is not None and report.window_ns is not None
    assert report.guardian_fired_at_ns is not None and report.guardian_fired_at_ns <= report.window_ns
    ends = [
        t.thaw_at_ns + t.thaw_ns for t in report.targets if t.thaw_at_ns is not None and t.thaw_ns is not None
    ]
    assert max(ends) == report.window_ns
    xfs_thaw = next(t for t in report.targets if t.mount_point == str(xfs.mount_point))
    assert xfs_thaw.thaw_at_ns is not None
    assert report.window_start_ns + xfs_thaw.thaw_at_ns <= done[0]


def test_a_target_thawed_by_someone_else_never_counts_in_the_window(fs, run_dir):
    """One of two targets thawed by another tool: thawed-externally; the window ends at quiesce's own thaw."""
    ext4, xfs = str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)
    with pytest.raises(quiesce.WindowExpiredError) as info:
        with quiesce.frozen([ext4, xfs], quiesce.FreezeOptions(run_dir=run_dir), timeout=10):
            subprocess.run(["fsfreeze", "-u", xfs], check=True)
    report = info.value.report
    states = {t.mount_point: t for t in report.targets}
    assert states[xfs].state == "thawed-externally" and states[xfs].thaw_errno == 22
    assert states[ext4].state == "thawed" and states[ext4].thaw_errno == 0
    assert report.window_ns == states[ext4].thaw_at_ns + states[ext4].thaw_ns
    assert not report.ok
