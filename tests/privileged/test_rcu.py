"""Expedited RCU for the window: set just before the freeze, always put back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.rcu import RCU_EXPEDITED
from tests.privileged.conftest import targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def _value() -> str:
    with open(RCU_EXPEDITED) as f:
        return f.read().strip()


@pytest.fixture
def rcu_knob():
    """rcu_expedited exists; whatever a test does, the original value is put back."""
    if not os.path.exists(RCU_EXPEDITED):
        pytest.skip("this kernel has no /sys/kernel/rcu_expedited")
    original = _value()
    yield original
    with open(RCU_EXPEDITED, "w") as f:
        f.write(original)


def test_expedited_during_the_window_and_restored_after(fs, run_dir, rcu_knob):
    """With expedite_rcu the knob reads 1 inside the window and its old value after."""
    opts = FreezeOptions(timeout_s=20, run_dir=run_dir, expedite_rcu=True)
    with frozen(targets(fs["ext4"], fs["xfs"]), opts) as f:
        inside = _value()
    assert inside == "1"
    assert _value() == rcu_knob
    assert f.report.ok and f.report.rcu_expedited


def test_not_touched_unless_asked(fs, run_dir, rcu_knob):
    """Without the option the knob is never written."""
    with frozen(targets(fs["ext4"]), FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
        assert _value() == rcu_knob
    assert not f.report.rcu_expedited


HOLDER = """
import sys, time
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.targets import plan_targets
plan = plan_targets(sys.argv[2:])
opts = FreezeOptions(timeout_s=30, run_dir=sys.argv[1], expedite_rcu=True)
with frozen(plan.targets, opts):
    print("frozen", flush=True)
    time.sleep(60)
"""


def test_guardian_restores_it_when_quiesce_is_killed(fs, run_dir, rcu_knob):
    """SIGKILL while frozen and expedited: the guardian thaws and puts the knob back."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir, str(fs["ext4"].mount_point)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "frozen"
        assert _value() == "1"
        guardian = ledger_mod.read(run_dir).guardian_pid
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{guardian}") and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert _value() == rcu_knob


def test_thaw_recovery_restores_it_from_the_ledger(fs, run_dir, rcu_knob):
    """Holder and guardian both killed: `quiesce thaw` thaws and restores the knob the ledger names."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    held = subprocess.run(
        [
            sys.executable,
            "-m",
            "quiesce",
            "freeze",
            "--hold",
            "--expedite-rcu",
            "--timeout",
            "30",
            str(fs["xfs"].mount_point),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert held.returncode == 0, held.stderr
    led = ledger_mod.read(run_dir)
    assert led.rcu_expedited_restore == rcu_knob
    os.kill(led.guardian_pid, signal.SIGKILL)
    time.sleep(0.1)
    os.kill(led.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert _value() == "1"
    out = subprocess.run(
        [sys.executable, "-m", "quiesce", "thaw", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert '"rcu_expedited_restored": true' in out.stdout
    assert _value() == rcu_knob
