"""SIGTERM, SIGINT and SIGHUP during a run: thaw at once, post steps run, result reported, non-zero exit."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from quiesce import ledger as ledger_mod
from tests.privileged.conftest import Writer

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
def test_signal_during_the_pre_script(setup, sig):
    """A signal while the pre-script runs: it is killed, nothing is frozen, the post-script runs."""
    setup.config(pre=f"echo started >> {setup.log}\nsleep 30\n")
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
    assert subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True).returncode == 1


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
    assert ev[-2:] == ["10-a post", "post.sh 1 skipped ok"]
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
    assert setup.events()[-1].startswith("post.sh 1")
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
