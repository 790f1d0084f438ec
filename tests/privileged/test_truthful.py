"""The snapshot step runs whenever the result says it did: without a freeze, and after a failed one."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from quiesce.azure.verdict import APPLICATION, CRASH, FAILED
from quiesce.cli.exits import Exit
from quiesce.runner.run import run
from tests.privileged.conftest import external_freeze, is_frozen

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def _command(setup, body: str, **spec) -> dict:
    """A snapshot command that logs "SNAP <QUIESCE_FROZEN>" and then runs ``body``."""
    script = f'echo "SNAP $QUIESCE_FROZEN" >> {setup.log}; {body}'
    return {"mode": "command", "argv": ["/bin/sh", "-c", script], "timeoutSeconds": 10, **spec}


def test_freeze_disabled_runs_the_snapshot_command_without_a_freeze(setup, fs):
    """fsFreezeEnabled false, mode command: the command runs between pre and post, nothing frozen."""
    # Writing to a target proves it is not frozen (a frozen one would block the write).
    probe = fs["ext4"].mount_point / "unfrozen-probe"
    snap = _command(setup, f"echo x > {probe}; echo targets=$(echo $QUIESCE_TARGETS)")
    setup.config(fsFreezeEnabled=False, quiesce={"snapshot": snap})
    r = run(setup.options())
    assert setup.events() == ["pre.sh 1  ", "SNAP 0", "post.sh 1 ok ok"]
    assert r.consistency == APPLICATION and r.snapshot == "ok" and r.snapshot_mode == "command"
    assert r.freeze is None and not r.snapshot_frozen
    assert r.snapshot_command is not None and r.snapshot_command.outcome == "ok"
    assert sorted(r.snapshot_command.stdout.split("=", 1)[1].split()) == sorted(setup.targets)
    assert probe.read_text() == "x\n"
    assert [p.name for p in r.phases] == ["checks", "pre-script", "snapshot", "post-script"]


def test_freeze_disabled_failing_command_is_no_snapshot(setup):
    """fsFreezeEnabled false, the command fails: snapshot failed, backup failed, the post-script told."""
    setup.config(fsFreezeEnabled=False, quiesce={"snapshot": _command(setup, "exit 4")})
    r = run(setup.options())
    assert r.consistency == FAILED and r.snapshot == "failed" and r.error_name == "SnapshotFailed"
    assert setup.events()[-1] == "post.sh 1 failed ok"


def _hold(setup, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        setup.run_argv("--json", *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _release(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        proc.stdin.write("snapshot taken\n")
        proc.stdin.flush()
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_freeze_disabled_hold_announces_nothing_frozen_and_waits_for_the_release(setup):
    """fsFreezeEnabled false, mode hold: the snapshotter is told nothing is frozen, and released after."""
    setup.config(fsFreezeEnabled=False, quiesce={"snapshot": {"mode": "hold"}})
    proc = _hold(setup)
    try:
        event = json.loads(proc.stdout.readline())
        assert event["event"] == "frozen" and event["targets"] == [] and event["is_frozen"] is False
        assert set(event["not_frozen"]) == set(setup.targets)
        assert "fsFreezeEnabled" in event["reason"] and event["remaining_ns"] > 0
        time.sleep(0.3)
        assert proc.poll() is None, "did not wait for the release"
        assert setup.events() == ["pre.sh 1  "], "the post-script ran before the release"
    finally:
        out, err = _release(proc)
    assert proc.returncode == Exit.OK, err
    result = json.loads(out)
    assert result["consistency"] == APPLICATION and result["snapshot"] == "ok"
    assert result["freeze"] is None and result["snapshot_frozen"] is False
    assert result["released_by"] == "stdin"
    assert setup.events() == ["pre.sh 1  ", "post.sh 1 ok ok"]


def test_failed_freeze_runs_the_command_unfrozen_when_failures_continue(setup, fs):
    """EBUSY (someone else froze a target), continue: the command runs unfrozen; crash-consistent."""
    external_freeze(fs["xfs"])
    try:
        probe = fs["ext4"].mount_point / "crash-probe"
        setup.config(quiesce={"snapshot": _command(setup, f"echo y > {probe}")})
        r = run(setup.options())
        assert setup.events() == ["pre.sh 1  ", "SNAP 0", "post.sh 1 ok ok"]
        assert r.consistency == CRASH and r.snapshot == "ok" and not r.snapshot_frozen
        assert (r.error_name, r.error_code) == ("FsFreezeFailed", 121)
        assert r.snapshot_command.outcome == "ok" and probe.read_text() == "y\n"
        assert "snapshot-unfrozen" in [p.name for p in r.phases]
        assert setup.cli().returncode == Exit.DEGRADED
    finally:
        assert is_frozen(fs["xfs"]), "quiesce thawed a filesystem it did not freeze"


def test_failed_freeze_and_failing_command_is_never_ok(setup, fs):
    """EBUSY, continue, the unfrozen command fails: failed, and QUIESCE_SNAPSHOT says failed."""
    external_freeze(fs["xfs"])
    try:
        setup.config(quiesce={"snapshot": _command(setup, "exit 3")})
        r = run(setup.options())
        assert r.consistency == FAILED and r.snapshot == "failed"
        assert setup.events()[-1] == "post.sh 1 failed ok"
    finally:
        assert is_frozen(fs["xfs"])


def test_failed_freeze_without_continue_runs_no_command(setup, fs):
    """EBUSY, continueBackupOnFailure false: no snapshot step at all; failed; post-script told."""
    external_freeze(fs["xfs"])
    try:
        setup.config(quiesce={"snapshot": _command(setup, "exit 0")}, continueBackupOnFailure=False)
        r = run(setup.options())
        assert r.consistency == FAILED and r.snapshot == "failed" and r.snapshot_command is None
        assert setup.events() == ["pre.sh 1  ", "post.sh 1 failed ok"]
    finally:
        assert is_frozen(fs["xfs"])


def test_failed_freeze_hold_announces_what_is_not_frozen(setup, fs):
    """EBUSY, continue, mode hold: announced with nothing frozen and why; released; crash-consistent."""
    external_freeze(fs["xfs"])
    try:
        setup.config(quiesce={"snapshot": {"mode": "hold"}})
        proc = _hold(setup)
        try:
            event = json.loads(proc.stdout.readline())
            assert event["is_frozen"] is False and event["targets"] == []
            assert set(event["not_frozen"]) == set(setup.targets)
            assert "EBUSY" in event["reason"] or "busy" in event["reason"].lower()
        finally:
            out, err = _release(proc)
        assert proc.returncode == Exit.DEGRADED, err
        result = json.loads(out)
        assert result["consistency"] == CRASH and result["snapshot"] == "ok"
        assert result["error_name"] == "FsFreezeFailed"
        assert setup.events()[-1] == "post.sh 1 ok ok"
    finally:
        assert is_frozen(fs["xfs"])


def test_hold_released_by_the_deadline_is_not_a_snapshot(setup):
    """A hold nobody releases: the guardian thaws at the deadline; snapshot failed, backup failed."""
    setup.config(quiesce={"snapshot": {"mode": "hold"}, "freezeTimeoutSeconds": 1})
    done = subprocess.run(
        setup.run_argv("--json", "--no-stdin"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == Exit.BACKUP_FAILED, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["released_by"] == "deadline" and result["snapshot"] == "failed"
    assert result["error_name"] == "FsFreezeTimeout"
    assert setup.events()[-1] == "post.sh 1 failed ok"


def test_freeze_disabled_hold_in_text_mode_says_nothing_is_frozen(setup):
    """Text mode: the hold's line says nothing is frozen, why, and which filesystems are not."""
    setup.config(fsFreezeEnabled=False, quiesce={"snapshot": {"mode": "hold"}})
    proc = subprocess.Popen(
        setup.run_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("frozen: nothing (fsFreezeEnabled is false); not frozen: ")
        assert all(t in line for t in setup.targets) and "take the snapshot now" in line
    finally:
        out, err = _release(proc)
    assert proc.returncode == Exit.OK, err
    assert "result: application-consistent" in out
