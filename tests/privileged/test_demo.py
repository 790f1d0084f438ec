"""``quiesce demo`` end to end: an application-consistent snapshot of two disks, restored clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(180)]


def test_demo_snapshots_end_at_the_same_checkpoint(private_namespace):
    """The demo's run is application-consistent; both restored snapshots end at one checkpoint."""
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
    run = result["run"]
    assert run["consistency"] == "application-consistent"
    assert run["snapshot_mode"] == "command" and run["snapshot_command"]["exit_code"] == 0
    assert [t["state"] for t in run["freeze"]["targets"]] == ["thawed", "thawed"]
    assert run["pre"]["attempts"][0]["stdout"] == "application paused at a checkpoint\n"
    assert run["post"]["attempts"][0]["stdout"] == "application resumed (snapshot: ok)\n"
    snaps = result["snapshots"]
    assert {s["fstype"] for s in snaps} == {"ext4", "xfs"}
    assert all(s["fsck_ok"] for s in snaps)
    assert snaps[0]["last_line"] == snaps[1]["last_line"]
    assert snaps[0]["last_line"].startswith("checkpoint ")
    assert result["records_after"] > result["records_before"], "the application did not resume"
    assert not [d for d in os.listdir("/run") if d.startswith("quiesce-demo-")]


def test_demo_finds_its_tools_on_a_fixed_path(private_namespace, tmp_path):
    """A PATH naming a directory others can write (or the current one) does not choose the demo's tools."""
    marker = tmp_path / "planted-ran"
    for tool in ("cp", "mount", "umount", "mkfs.xfs", "mkfs.ext4", "losetup", "e2fsck", "xfs_repair"):
        fake = tmp_path / tool
        fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        fake.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env=dict(os.environ, PATH=f"{tmp_path}::{os.environ['PATH']}"),
    )
    assert not marker.exists(), "a tool was taken from the caller's PATH"
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["consistent"] is True
