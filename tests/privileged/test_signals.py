"""SIGTERM, SIGINT and SIGHUP during a run: thaw at once, post steps run, result reported, non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from quiesce.engine import ledger as ledger_mod
from tests.privileged.conftest import Writer
from tests.processes import alive_with, unique_sleep

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def _start(setup):
    return subprocess.Popen(
        setup.run_argv("--json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_event(setup, event: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while event not in setup.events():
        assert time.monotonic() < deadline, f"{event!r} never logged: {setup.events()}"
        time.sleep(0.01)


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize(
    "fallback", ["", "no-pidfd,no-cgroup"], ids=["normal", "no-pidfd+no-cgroup"], indirect=True
)
def test_signal_during_the_pre_script(fallback, setup, sig):
    """A signal while the pre-script runs: it is killed, nothing is frozen, the post-script runs."""
    marker = unique_sleep(30)
    setup.config(pre=f"echo started >> {setup.log}\nsleep {marker}\n")
    proc = _start(setup)
    _wait_for_event(setup, "started")
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = _finish(proc)
    assert proc.returncode == 128 + sig, err
    assert time.monotonic() - started < 10
    result = json.loads(out)
    assert result["interrupted_by"] == sig.name and result["error_name"] == "RunInterrupted"
    assert result["consistency"] == "failed" and result["freeze"] is None
    assert setup.events()[-1] == "post.sh 1 skipped interrupted"
    assert alive_with(marker) == [], "the pre-script outlived the run"


def test_signal_during_a_pre_hook(setup):
    """SIGINT while a pre hook runs: earlier hooks get their post, the post-script runs."""
    setup.hook("10-a", "exit 0\n")
    setup.hook("20-b", f'[ "$1" = pre ] && {{ echo b-started >> {setup.log}; sleep 30; }}\nexit 0\n')
    setup.config()
    proc = _start(setup)
    _wait_for_event(setup, "b-started")
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130, err
    ev = setup.events()
    # The pre steps were interrupted: the post-script is told so, not "ok".
    assert ev[-2:] == ["10-a post", "post.sh 1 skipped interrupted"]
    assert json.loads(out)["interrupted_by"] == "SIGINT"


def test_signal_while_frozen_thaws_at_once(setup, fs):
    """SIGTERM inside the window (a callable-like slow snapshot via hold is a release, so use a
    command step): the window ends, everything is thawed, the post-script runs, exit 143."""
    cmd = {
        "mode": "command",
        "argv": ["/bin/sh", "-c", f"echo snap >> {setup.log}; sleep 1"],
        "timeoutSeconds": 10,
    }
    setup.config(quiesce={"snapshot": cmd})
    proc = _start(setup)
    _wait_for_event(setup, "snap")
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert proc.returncode == 143, err
    result = json.loads(out)
    assert result["interrupted_by"] == "SIGTERM"
    # The window completes before the signal takes effect: the command's snapshot was taken.
    assert result["snapshot"] == "ok" and result["snapshot_command"]["outcome"] == "ok"
    assert result["consistency"] == "application-consistent"
    assert setup.events()[-1] == "post.sh 1 ok ok"
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()
    assert ledger_mod.read(setup.run_dir) is None


def test_signal_during_the_post_script_lets_it_finish(setup):
    """A signal during the post-script is recorded; the post-script completes and the result stands."""
    setup.config(post=f"echo post-started >> {setup.log}\nsleep 1\necho post-done >> {setup.log}\n")
    proc = _start(setup)
    _wait_for_event(setup, "post-started")
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert "post-done" in setup.events()
    assert proc.returncode == 0, err
    assert json.loads(out)["consistency"] == "application-consistent"


def _cgroup_pids(run_id_prefix: str) -> list[str]:
    """Processes left in any cgroup of this test's runs (named after the run ID)."""
    from quiesce.supervise.cgroups import PARENT, cgroup2_root

    root = cgroup2_root()
    if root is None:
        return []
    left = []
    for dirpath, _, files in os.walk(os.path.join(root, PARENT)):
        if run_id_prefix in dirpath and "cgroup.procs" in files:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                left += f.read().split()
    return left


def test_signal_while_waiting_for_a_session_hooks_ready(setup):
    """SIGTERM before a session hook said READY=1: it is killed; the post-script hears "interrupted"."""
    body = f'if [ "$1" = session ]; then echo $$ > {setup.base}/session.pid; sleep 30; fi\n'
    setup.hook("10-db.session", body)
    setup.config()
    proc = _start(setup)
    _wait_for_event(setup, "10-db.session session")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert proc.returncode == 143, err
    result = json.loads(out)
    assert result["interrupted_by"] == "SIGTERM" and result["snapshot"] == "skipped"
    assert result["freeze"] is None
    assert setup.events()[-1] == "post.sh 1 skipped interrupted"
    with open(f"{setup.base}/session.pid") as f:
        pid = int(f.read())
    assert not os.path.exists(f"/proc/{pid}"), "the session hook outlived the run"
    assert _cgroup_pids(result["run_id"]) == []


def test_quiesce_thaw_ends_a_command_window_early(setup, fs):
    """`quiesce thaw` during a command window: thawed at once, the command killed, not trusted, post run."""
    cmd = {
        "mode": "command",
        "argv": ["/bin/sh", "-c", f"echo snap >> {setup.log}; sleep 8"],
        "timeoutSeconds": 10,
    }
    setup.config(quiesce={"snapshot": cmd})
    proc = _start(setup)
    _wait_for_event(setup, "snap")
    started = time.monotonic()
    thaw = subprocess.run(
        [sys.executable, "-m", "quiesce", "thaw", "--json", "--run-dir", setup.run_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out, err = _finish(proc)
    assert time.monotonic() - started < 5, "the window was not ended early"
    assert proc.returncode == 9, (err, thaw.stderr)
    result = json.loads(out)
    assert result["snapshot"] == "failed" and result["consistency"] == "failed"
    assert result["snapshot_command"]["outcome"] == "released"
    assert result["released_by"] == "signal SIGUSR1" and "not trusted" in result["message"]
    assert result["freeze"]["ok"] and result["freeze"]["window_ns"] < 5e9
    assert setup.events()[-1] == "post.sh 1 failed ok"
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()
    assert ledger_mod.read(setup.run_dir) is None


def test_sigusr1_outside_a_window_does_not_kill_the_run(setup):
    """SIGUSR1 (a stray `quiesce thaw`) while the pre-script runs: ignored, nothing to release; exit 0."""
    setup.config(pre=f"echo started >> {setup.log}\nsleep 1\n")
    proc = _start(setup)
    _wait_for_event(setup, "started")
    proc.send_signal(signal.SIGUSR1)
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["consistency"] == "application-consistent" and result["snapshot"] == "ok"
    assert setup.events()[-1] == "post.sh 1 ok ok"


def test_signal_between_retries_stops_at_once(setup):
    """SIGTERM during the pause between attempts: no further attempt, post-script runs, exit 143."""
    setup.config(
        pre=f"echo attempt >> {setup.log}\nexit 1\n",
        preScriptNoOfRetries=3,
        quiesce={"retryBackoffSeconds": 20},
    )
    proc = _start(setup)
    _wait_for_event(setup, "attempt")
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = _finish(proc)
    assert proc.returncode == 143, err
    assert time.monotonic() - started < 5
    assert setup.events().count("attempt") == 1
    assert setup.events()[-1] == "post.sh 1 skipped interrupted"


def test_signal_during_an_unfrozen_snapshot_command_lets_it_finish(setup):
    """fsFreezeEnabled false: a signal during the snapshot command takes effect after it; snapshot ok."""
    cmd = {
        "mode": "command",
        "argv": ["/bin/sh", "-c", f"echo snap >> {setup.log}; sleep 1"],
        "timeoutSeconds": 5,
    }
    setup.config(fsFreezeEnabled=False, quiesce={"snapshot": cmd})
    proc = _start(setup)
    _wait_for_event(setup, "snap")
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["snapshot"] == "ok" and result["snapshot_command"]["outcome"] == "ok"
    assert setup.events()[-1] == "post.sh 1 ok ok"


def test_signal_during_the_post_hooks_is_recorded_and_they_finish(setup):
    """SIGTERM during a post hook: every post step finishes; the signal is a warning; the result stands."""
    setup.hook("10-a", f'[ "$1" = post ] && {{ echo a-post >> {setup.log}; sleep 1; }}\nexit 0\n')
    setup.config()
    proc = _start(setup)
    _wait_for_event(setup, "a-post")
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["consistency"] == "application-consistent"
    assert any("SIGTERM" in w and "post steps" in w for w in result["warnings"])
    assert setup.events()[-1] == "post.sh 1 ok ok"
