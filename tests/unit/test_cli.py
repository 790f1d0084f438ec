"""The command line without freezing: help, status, thaw with nothing to do, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from quiesce import cli
from quiesce.errors import FrozenByOtherError, LockHeldError, NotFrozenError, TargetError


def run(*args, run_dir=None):
    """Run ``python -m quiesce``."""
    argv = [sys.executable, "-m", "quiesce", *args]
    if run_dir is not None:
        argv[3:3] = []
        argv += ["--run-dir", str(run_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_help_lists_commands_and_exit_codes():
    """``--help`` names every command and documents the exit codes."""
    r = run("--help")
    assert r.returncode == 0
    for word in ("mounts", "freeze", "thaw", "status", "exit status", "guardian"):
        assert word in r.stdout


@pytest.mark.parametrize("command", ["mounts", "freeze", "thaw", "status"])
def test_each_command_has_help(command):
    """Each subcommand's help explains it and offers --json."""
    r = run(command, "--help")
    assert r.returncode == 0 and "--json" in r.stdout


def test_freeze_help_explains_release_and_timeout():
    """``freeze --help`` says how a freeze ends."""
    text = run("freeze", "--help").stdout
    for word in ("--hold", "--timeout", "quiesce thaw", "SIGTERM", "stdin"):
        assert word in text


#: A run directory that does not exist, on a path only root can change (/, /run).
MISSING_RUN_DIR = f"/run/quiesce-unit-test-missing-{uuid.uuid4().hex}"


def test_status_with_nothing_in_progress():
    """``status --json`` without a run dir: no ledger, lock free, no holder named."""
    r = run("status", "--json", run_dir=MISSING_RUN_DIR)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ledger"] is None and data["lock_held"] is False and data["lock_holder"] is None
    assert not os.path.exists(MISSING_RUN_DIR)


def test_thaw_with_nothing_to_thaw():
    """``thaw`` without a ledger says so and succeeds (and makes no run directory)."""
    r = run("thaw", run_dir=MISSING_RUN_DIR)
    assert r.returncode == 0 and "nothing to thaw" in r.stdout
    assert not os.path.exists(MISSING_RUN_DIR)


@pytest.mark.parametrize("command", ["status", "thaw", "recover"])
def test_a_run_dir_others_can_write_is_refused(tmp_path, command):
    """A run directory below /tmp (anyone can write there) is named and refused: exit 1, JSON says why."""
    r = run(command, "--json", run_dir=tmp_path)
    assert r.returncode == cli.Exit.ERROR, r.stdout
    err = json.loads(r.stdout)
    assert err["error_type"] == "UnsafeRunDirError"
    assert str(tmp_path) in err["error"] and "/tmp" in err["error"] and "writable by" in err["error"]


def test_mounts_json_is_a_plan():
    """``mounts --json`` prints targets, skipped (each with a reason) and unmatched."""
    r = run("mounts", "--json", "--no-vmbackup-conf")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert set(plan) == {"targets", "skipped", "unmatched"}
    assert all(s["reason"] for s in plan["skipped"])
    assert any(s["mount_point"] == "/proc" and s["reason"] == "pseudo" for s in plan["skipped"])


def test_freeze_of_a_missing_path_is_a_target_error(tmp_path):
    """Naming something that is not a mount point exits 7 before anything is frozen."""
    r = run("freeze", str(tmp_path / "nope"), run_dir=tmp_path)
    assert r.returncode == cli.Exit.BAD_TARGET
    assert "not a mount point" in r.stderr


def test_usage_error_exit_code():
    """An unknown option is a usage error (2)."""
    assert run("freeze", "--bogus", "/x").returncode == 2


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (LockHeldError("held"), cli.Exit.LOCKED),
        (TargetError("bad"), cli.Exit.BAD_TARGET),
        (FrozenByOtherError(16, "FIFREEZE", "/x"), cli.Exit.FREEZE_FAILED),
        (NotFrozenError(22, "FITHAW", "/x"), cli.Exit.THAW_FAILED),
        (RuntimeError("?"), cli.Exit.ERROR),
    ],
)
def test_exit_code_for(err, code):
    """Each error class maps to its documented exit status."""
    assert cli.exit_code_for(err) == code


@pytest.mark.parametrize(
    ("ns", "text"),
    [(None, "-"), (812_000, "812 us"), (3_400_000, "3.40 ms"), (1_250_000_000, "1.25 s")],
)
def test_human_durations(ns, text):
    """Durations on a terminal read in the right unit."""
    assert cli.human_ns(ns) == text
