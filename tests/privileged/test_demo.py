"""``quiesce demo`` end to end: the snapshots it takes while frozen restore clean and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(180)]


def test_demo_snapshots_are_clean_and_consistent(private_namespace):
    """The demo freezes two guests, reflinks both disks in the window, and both restore fsck-clean."""
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["consistent"] is True
    report = result["report"]
    assert report["ok"] and report["guardian_reason"] is None
    assert [t["state"] for t in report["targets"]] == ["thawed", "thawed"]
    assert {s["fstype"] for s in result["snapshots"]} == {"ext4", "xfs"}
    assert all(s["fsck_ok"] for s in result["snapshots"])
    db, log = (s["last_record"] for s in result["snapshots"])
    assert db > 0 and db - log in (0, 1)
    assert result["records_after"] > result["records_before"], "the application did not resume"
    # The snapshot copies ran inside the window.
    assert 0 < result["snapshot_ns"] < report["window_ns"]
