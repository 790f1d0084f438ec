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
