"""quiesce used as an embedding tool would: plain paths, a callable snapshot, JSON results."""

from __future__ import annotations

import json

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
