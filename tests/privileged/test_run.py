"""``quiesce run`` end to end: Azure's config, real scripts, real freezes of loop filesystems."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quiesce.azure.verdict import APPLICATION, CRASH, FAILED, FILESYSTEM
from quiesce.cli.exits import Exit
from quiesce.engine import ledger as ledger_mod
from quiesce.errors import IncorrectJSONConfigFile, LockHeldError
from quiesce.runner.run import run
from tests.fallbacks import FALLBACKS, IDS
from tests.privileged.conftest import Writer, external_freeze, is_frozen

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def test_published_sample_with_real_scripts_is_application_consistent(setup):
    """The sample config, scripts filled in: pre, freeze, thaw, post, in that order."""
    setup.config(pre=f"echo frozen-check >> {setup.log}\n")
    r = run(setup.options())
    assert r.consistency == APPLICATION and r.ok and r.error_name is None
    assert [p.name for p in r.phases] == ["checks", "pre-script", "freeze-window", "post-script"]
    assert r.freeze is not None and r.freeze.ok and len(r.freeze.targets) == 2
    assert setup.events() == ["pre.sh 1  ", "frozen-check", "post.sh 1 ok ok"]
    assert ledger_mod.read(setup.run_dir) is None
    # Absolute times line the run up with the caller's own events.
    assert r.started_ns <= r.phases[0].start_ns and r.started_unix > 0
    window = next(p for p in r.phases if p.name == "freeze-window")
    assert window.start_ns <= r.freeze.window_start_ns <= window.start_ns + window.duration_ns
    starts = [p.start_ns for p in r.phases]
    assert starts == sorted(starts)


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_cli_json_and_exit_zero(fallback, setup):
    """``quiesce run --json`` prints the full result and exits 0 on application-consistent."""
    setup.config()
    done = setup.cli("--json")
    assert done.returncode == Exit.OK, done.stderr
    data = json.loads(done.stdout)
    assert data["consistency"] == APPLICATION and data["ok"] is True
    assert data["pre"]["attempts"][0]["exit_code"] == 0
    assert data["freeze"]["window_ns"] > 0


def test_pre_failure_continues_file_system_consistent(setup):
    """Pre-script fails, continueBackupOnFailure true: frozen snapshot, warning, post told."""
    setup.config(pre="exit 5\n")
    r = run(setup.options())
    assert r.consistency == FILESYSTEM
    assert (r.error_name, r.error_code) == ("Pre-ScriptExecutionFailed", 300)
    assert any("Pre-ScriptExecutionFailed" in w for w in r.warnings)
    assert r.freeze is not None and r.freeze.ok
    assert setup.events()[-1] == "post.sh 1 ok failed"
    assert setup.cli().returncode == Exit.DEGRADED


def test_pre_failure_without_continue_takes_no_snapshot_but_runs_post(setup):
    """continueBackupOnFailure false: no freeze, failed, and the post-script still runs."""
    setup.config(pre="exit 1\n", continueBackupOnFailure=False)
    r = run(setup.options())
    assert r.consistency == FAILED and r.snapshot == "skipped"
    assert r.freeze is None
    assert setup.events() == ["pre.sh 1  ", "post.sh 1 skipped failed"]
    assert setup.cli().returncode == Exit.BACKUP_FAILED


def test_pre_timeout_is_killed_and_named(setup):
    """A pre-script past timeoutInSeconds is killed; Pre-ScriptTimeout (308)."""
    setup.config(pre="sleep 60\n", timeoutInSeconds=1, continueBackupOnFailure=False)
    r = run(setup.options())
    assert (r.error_name, r.error_code) == ("Pre-ScriptTimeout", 308)
    assert r.pre is not None and r.pre.attempts[0].timed_out
    assert r.pre.attempts[0].duration_ns < 3e9


def test_retries_rerun_the_pre_script(setup):
    """preScriptNoOfRetries re-runs the script until it succeeds."""
    counter = os.path.join(setup.base, "n")
    setup.config(
        pre=f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 2 ]\n",
        preScriptNoOfRetries=3,
    )
    r = run(setup.options())
    assert r.consistency == APPLICATION
    assert [a.outcome for a in r.pre.attempts] == ["failed", "failed", "ok"]
    assert [e.split()[1] for e in setup.events() if e.startswith("pre.sh")] == ["1", "2", "3"]


def test_post_failure_fails_the_backup_only_without_continue(setup):
    """A failing post-script fails the backup without continue; with it, file-system-consistent (exit 8)."""
    setup.config(post="exit 2\n", continueBackupOnFailure=False)
    r = run(setup.options())
    assert r.consistency == FAILED and r.error_name == "Post-ScriptExecutionFailed"
    setup.config(post="exit 2\n", continueBackupOnFailure=True)
    r = run(setup.options())
    assert r.consistency == FILESYSTEM and r.snapshot == "ok" and r.freeze.ok
    assert (r.error_name, r.error_code) == ("Post-ScriptExecutionFailed", 301)
    assert any("Post-ScriptExecutionFailed" in w for w in r.warnings)
    assert setup.cli().returncode == Exit.DEGRADED


def test_post_timeout_with_continue_is_file_system_consistent(setup):
    """A post-script past its timeout, failures may continue, good freeze: file-system-consistent, 309."""
    setup.config(post="sleep 30\n", timeoutInSeconds=1, quiesce={"graceSeconds": 0.2})
    r = run(setup.options())
    assert r.consistency == FILESYSTEM and not r.ok
    assert (r.error_name, r.error_code) == ("Post-ScriptTimeout", 309)
    assert r.post.attempts[0].timed_out


def test_freeze_disabled_runs_scripts_without_freezing(setup):
    """fsFreezeEnabled false: no freeze; a script failure falls back to crash-consistent (the document)."""
    setup.config(fsFreezeEnabled=False)
    r = run(setup.options())
    assert r.consistency == APPLICATION and r.freeze is None and r.snapshot == "ok"
    assert not r.snapshot_frozen
    setup.config(pre="exit 1\n", fsFreezeEnabled=False)
    r = run(setup.options())
    assert r.consistency == CRASH and r.error_name == "Pre-ScriptExecutionFailed"
    assert setup.cli().returncode == Exit.DEGRADED
    setup.config(post="exit 1\n", fsFreezeEnabled=False)
    assert run(setup.options()).consistency == CRASH
    setup.config(pre="exit 1\n", fsFreezeEnabled=False, continueBackupOnFailure=False)
    r = run(setup.options())
    assert r.consistency == FAILED and r.snapshot == "skipped"
    assert setup.cli().returncode == Exit.BACKUP_FAILED


def test_freeze_failure_is_crash_consistent_or_failed(setup, fs):
    """A target frozen by someone else: crash-consistent if failures continue, else failed."""
    external_freeze(fs["xfs"])
    try:
        setup.config()
        r = run(setup.options())
        assert r.consistency == CRASH and r.error_name == "FsFreezeFailed"
        assert r.freeze is not None
        states = {t.mount_point: t.state for t in r.freeze.targets}
        assert states[str(fs["xfs"].mount_point)] == "freeze-failed"
        assert states[str(fs["ext4"].mount_point)] in ("thawed", "not-attempted")
        setup.config(continueBackupOnFailure=False)
        r = run(setup.options())
        assert r.consistency == FAILED and r.error_code == 121
        assert setup.events()[-1].startswith("post.sh 1 failed ok")
    finally:
        assert is_frozen(fs["xfs"]), "quiesce thawed a filesystem it did not freeze"


def test_bad_config_runs_nothing_and_freezes_nothing(setup):
    """The string "false" for a boolean: IncorrectJSONConfigFile, exit 10, no script, no freeze."""
    setup.config(continueBackupOnFailure="false")
    with pytest.raises(IncorrectJSONConfigFile) as info:
        run(setup.options())
    assert "continueBackupOnFailure" in str(info.value)
    done = setup.cli("--json")
    assert done.returncode == Exit.CONFIG
    assert json.loads(done.stdout)["error_name"] == "IncorrectJSONConfigFile"
    assert setup.events() == [] and ledger_mod.read(setup.run_dir) is None


def test_unsafe_config_mode_is_refused(setup):
    """A config readable by others is refused before anything runs."""
    setup.config()
    os.chmod(setup.config_path, 0o644)
    done = setup.cli()
    assert done.returncode == Exit.CONFIG and "chmod" in done.stderr
    assert setup.events() == []


@pytest.mark.parametrize(
    ("key", "error", "statuses"),
    [
        ("preScriptLocation", ("Pre-ScriptNotFound", 302), ("not-found", "skipped")),
        ("postScriptLocation", ("Post-ScriptNotFound", 303), ("skipped", "not-found")),
    ],
)
def test_a_script_that_fails_its_check_runs_neither_script(setup, key, error, statuses):
    """No file at one script's location: its NotFound; neither script runs; the snapshot still goes
    (continueBackupOnFailure), file-system-consistent, as Azure does on a failed check."""
    setup.config()
    with open(setup.config_path) as f:
        cfg = json.load(f)
    cfg[key] = os.path.join(setup.base, "missing.sh")
    with open(setup.config_path, "w") as f:
        json.dump(cfg, f)
    r = run(setup.options())
    assert (r.error_name, r.error_code) == error
    assert (r.pre.status, r.post.status) == statuses
    assert r.snapshot == "ok" and r.snapshot_frozen and r.consistency == FILESYSTEM
    assert setup.events() == []  # neither the pre-script nor the post-script ran


def test_snapshot_step_runs_while_frozen(setup, fs):
    """An embedding tool's snapshot callable runs inside the window: writes block during it."""
    setup.config()
    seen = {}

    def snapshot():
        w = Writer(fs["ext4"])
        seen["blocked"] = not w.finished_within(0.3)
        seen["writer"] = w

    r = run(setup.options(), snapshot=snapshot)
    assert r.consistency == APPLICATION and seen["blocked"]
    assert seen["writer"].finished_within(5)
    seen["writer"].finish()


def test_failing_snapshot_step_fails_the_backup(setup):
    """A snapshot step that raises: no snapshot, failed, post-script told."""
    setup.config()

    def snapshot():
        raise RuntimeError("disk API said no")

    r = run(setup.options(), snapshot=snapshot)
    assert r.consistency == FAILED and "disk API said no" in r.message
    assert setup.events()[-1] == "post.sh 1 failed ok"


def test_second_run_is_refused_while_one_runs(setup):
    """Two runs at once: the second is refused at once with the holder named."""
    setup.config(pre="sleep 1\n")
    first = subprocess.Popen(
        setup.run_argv(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        deadline = time.monotonic() + 10
        while not setup.events() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LockHeldError) as info:
            run(setup.options())
        assert "another quiesce run" in str(info.value)
    finally:
        _, err = first.communicate(timeout=60)
    assert first.returncode == Exit.OK, err


PROBE = (
    "for t in $QUIESCE_TARGETS; do (echo x > $t/cmdprobe) & p=$!; sleep 0.3; "
    "echo \"$t $(cut -d' ' -f3 /proc/$p/stat)\"; done"
)


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_command_snapshot_runs_inside_the_window(fallback, setup, fs):
    """Mode "command": the command runs while frozen (its writers sleep in D state), then thaw."""
    setup.config(
        quiesce={"snapshot": {"mode": "command", "argv": ["/bin/sh", "-c", PROBE], "timeoutSeconds": 10}}
    )
    r = run(setup.options())
    assert r.consistency == APPLICATION, r.message
    assert r.snapshot_mode == "command"
    cmd = r.snapshot_command
    assert cmd is not None and cmd.outcome == "ok"
    states = dict(line.split() for line in cmd.stdout.splitlines())
    assert states == {t: "D" for t in setup.targets}
    assert r.freeze is not None and r.freeze.ok
    assert r.freeze.window_ns > 0.3e9 * len(setup.targets)


def test_failing_snapshot_command_fails_the_backup(setup):
    """A snapshot command exiting non-zero: no snapshot, failed, thawed, post-script told."""
    setup.config(
        quiesce={"snapshot": {"mode": "command", "argv": ["/bin/sh", "-c", "exit 3"], "timeoutSeconds": 5}}
    )
    r = run(setup.options())
    assert r.consistency == FAILED and r.error_name == "SnapshotFailed"
    assert r.snapshot_command.exit_code == 3
    assert r.freeze.ok, "the filesystems were not thawed by quiesce"
    assert setup.events()[-1] == "post.sh 1 failed ok"


def test_snapshot_command_past_its_timeout_is_killed_and_thawed(setup):
    """A hung snapshot command is killed at its timeout; the window closes right after."""
    cmd = {"mode": "command", "argv": ["/bin/sh", "-c", "trap '' TERM; sleep 60"], "timeoutSeconds": 0.5}
    setup.config(quiesce={"snapshot": cmd, "graceSeconds": 0.2, "freezeTimeoutSeconds": 10})
    r = run(setup.options())
    a = r.snapshot_command
    assert a.outcome == "timeout" and a.killed
    assert r.consistency == FAILED
    assert r.freeze.ok and r.freeze.guardian_reason is None
    assert r.freeze.window_ns < 0.7e9 + 0.5e9


def test_hold_snapshot_released_by_stdin(setup, fs):
    """Mode "hold": run announces frozen, an external snapshotter works, a line on stdin releases."""
    setup.config(quiesce={"snapshot": {"mode": "hold"}})
    proc = subprocess.Popen(
        setup.run_argv("--json"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        event = json.loads(proc.stdout.readline())
        assert event["event"] == "frozen" and set(event["targets"]) == set(setup.targets)
        w = Writer(fs["ext4"])
        assert not w.finished_within(0.3), "not frozen while held"
        proc.stdin.write("snapshot taken\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        assert w.finished_within(5)
        w.finish()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == Exit.OK, err
    result = json.loads(out)
    assert result["consistency"] == APPLICATION and result["released_by"] == "stdin"


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_hold_snapshot_released_by_quiesce_thaw(fallback, setup):
    """Mode "hold" in the background: `quiesce thaw` releases it."""
    setup.config(quiesce={"snapshot": {"mode": "hold"}})
    proc = setup.start_json_run()
    try:
        assert json.loads(proc.stdout.readline())["event"] == "frozen"
        thaw = subprocess.run(
            [sys.executable, "-m", "quiesce", "thaw", "--json", "--run-dir", setup.run_dir],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert thaw.returncode == 0, thaw.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == Exit.OK, err
    assert json.loads(out)["released_by"] == "signal SIGUSR1"


def test_thaw_by_another_tool_during_the_snapshot_downgrades_the_run(setup, fs):
    """Someone thaws a target while the snapshot step runs: crash-consistent, FsFreezeFailed, named."""
    setup.config()

    def snapshot():
        subprocess.run(["fsfreeze", "-u", str(fs["xfs"].mount_point)], check=True)

    r = run(setup.options(), snapshot=snapshot)
    assert r.consistency == CRASH
    assert r.error_name == "FsFreezeFailed" and str(fs["xfs"].mount_point) in r.message
