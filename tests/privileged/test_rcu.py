"""Expedited RCU for the window: set just before the freeze, always put back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.rcu import RCU_EXPEDITED
from tests.privileged.conftest import targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def _value() -> str:
    with open(RCU_EXPEDITED) as f:
        return f.read().strip()


@pytest.fixture
def real_knob():
    """The kernel's rcu_expedited, reading 0 for the test; the machine's own value is put back after."""
    if not os.path.exists(RCU_EXPEDITED):
        pytest.skip("this kernel has no /sys/kernel/rcu_expedited")
    original = _value()
    with open(RCU_EXPEDITED, "w") as f:
        f.write("0")
    yield "0"
    with open(RCU_EXPEDITED, "w") as f:
        f.write(original)


@pytest.fixture
def rcu_knob(tmp_path):
    """The knob as quiesce (and its children) see it: a private file reading 0, bound over it.

    The machine is shared: another freeze anywhere on it may set the real knob
    at any moment, which would make "put back to the value found" untestable.
    In this test's private mount namespace the path is this file, so every
    write quiesce, its guardian or `quiesce thaw`/`recover` make is its own.
    """
    if not os.path.exists(RCU_EXPEDITED):
        pytest.skip("this kernel has no /sys/kernel/rcu_expedited")
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    subprocess.run(["mount", "--bind", str(knob), RCU_EXPEDITED], check=True)
    try:
        yield "0"
    finally:
        subprocess.run(["umount", RCU_EXPEDITED], check=True)


def test_expedited_during_the_window_and_restored_after(fs, run_dir, real_knob):
    """With expedite_rcu the knob reads 1 inside the window and its old value after."""
    opts = FreezeOptions(timeout_s=20, run_dir=run_dir, expedite_rcu=True)
    with frozen(targets(fs["ext4"], fs["xfs"]), opts) as f:
        inside = _value()
    assert inside == "1"
    assert _value() == real_knob
    assert f.report.ok and f.report.rcu_expedited


def test_restored_at_the_thaw_not_at_the_close(fs, run_dir, rcu_knob):
    """thaw() puts the knob back then, while the Freeze stays open; the report still says it was expedited."""
    f = Freeze(targets(fs["ext4"]), FreezeOptions(timeout_s=20, run_dir=run_dir))
    with f:
        f.prepare()
        f.freeze()
        inside = _value()
        f.thaw()
        after_thaw = _value()
    assert (inside, after_thaw) == ("1", rcu_knob)
    assert f.report.ok and f.report.rcu_expedited


def test_default_path_expedites_and_restores(fs, run_dir, rcu_knob):
    """With no option at all the knob reads 1 inside the window and its old value after."""
    with frozen(targets(fs["ext4"], fs["xfs"]), FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
        inside = _value()
    assert inside == "1"
    assert _value() == rcu_knob
    assert f.report.ok and f.report.rcu_expedited and f.report.warnings == []


def test_not_touched_when_opted_out(fs, run_dir, rcu_knob):
    """With expedite_rcu=False the knob is never written."""
    opts = FreezeOptions(timeout_s=20, run_dir=run_dir, expedite_rcu=False)
    with frozen(targets(fs["ext4"]), opts) as f:
        assert _value() == rcu_knob
    assert not f.report.rcu_expedited


def test_guardian_deadline_restores_it_while_quiesce_still_lives(fs, run_dir, rcu_knob):
    """Default path, the window overruns: the guardian thaws and puts the knob back at once."""
    opts = FreezeOptions(timeout_s=0.3, run_dir=run_dir)
    f = Freeze(targets(fs["ext4"], fs["xfs"]), opts)
    with f:
        f.prepare()
        f.freeze()
        assert _value() == "1"
        deadline = time.monotonic() + 10
        while not f.guardian_fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert f.guardian_fired
        # Before this process restores anything: the guardian did.
        assert _value() == rcu_knob
    assert f.report.guardian_reason == "deadline"
    assert _value() == rcu_knob


def test_guardian_fired_is_seen_only_once_it_has_thawed_and_restored(fs, run_dir, rcu_knob):
    """Polled without pause: the first True of guardian_fired already finds everything done."""
    for _ in range(5):
        f = Freeze(targets(fs["ext4"], fs["xfs"]), FreezeOptions(timeout_s=0.2, run_dir=run_dir))
        with f:
            f.prepare()
            f.freeze()
            session = f._session
            assert session is not None
            deadline = time.monotonic() + 10
            while not f.guardian_fired and time.monotonic() < deadline:
                pass
            knob = _value()
            states = [r.state for r in session.records()]
            assert f.guardian_fired
            assert knob == rcu_knob
            assert states == ["thawed-by-guardian"] * 2
        assert f.report.guardian_reason == "deadline"


HOLDER = """
import sys, time
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.targets import plan_targets
plan = plan_targets(sys.argv[3:])
extra = {"expedite_rcu": True} if sys.argv[2] == "explicit" else {}
opts = FreezeOptions(timeout_s=30, run_dir=sys.argv[1], **extra)
with frozen(plan.targets, opts):
    print("frozen", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["default", "explicit"])
def test_guardian_restores_it_when_quiesce_is_killed(fs, run_dir, rcu_knob, how):
    """SIGKILL while frozen and expedited (by default or asked): the guardian thaws and puts the knob back."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir, how, str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)],
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


@pytest.mark.parametrize(
    ("command", "flags"),
    [("thaw", []), ("thaw", ["--expedite-rcu"]), ("recover", [])],
)
def test_thaw_recovery_restores_it_from_the_ledger(fs, run_dir, rcu_knob, command, flags):
    """Holder and guardian killed: `quiesce thaw`/`recover` thaw and restore the knob the ledger names."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    held = subprocess.run(
        [
            sys.executable,
            "-m",
            "quiesce",
            "freeze",
            "--hold",
            *flags,
            "--timeout",
            "30",
            str(fs["xfs"].mount_point),
            str(fs["ext4"].mount_point),
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
        [sys.executable, "-m", "quiesce", command, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert '"rcu_expedited_restored": true' in out.stdout
    assert _value() == rcu_knob


def test_a_second_freeze_at_once_leaves_the_knob_to_the_first(fs, run_dir, rcu_knob):
    """Two freezes at once (other run directories): only the first changes the knob, which ends as found.

    Without that, the second would read the first's 1 as the machine's value,
    and, ending last, put 1 back for good.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir, "default", str(fs["ext4"].mount_point)],
        stdout=subprocess.PIPE,
        text=True,
    )
    other_dir = tempfile.mkdtemp(prefix="quiesce-test-run-", dir="/run")
    try:
        assert proc.stdout.readline().strip() == "frozen"
        assert _value() == "1"
        guardian = ledger_mod.read(run_dir).guardian_pid
        f = Freeze(targets(fs["xfs"]), FreezeOptions(timeout_s=20, run_dir=other_dir))
        with f:
            f.prepare()
            f.freeze()
            # The first freeze ends (its guardian restores 0) while the second is still frozen.
            proc.kill()
            proc.wait(timeout=10)
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{guardian}") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _value() == rcu_knob
        assert f.report.ok and not f.report.rcu_expedited
        assert any("held by another freeze" in w for w in f.report.warnings), f.report.warnings
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        shutil.rmtree(other_dir, ignore_errors=True)
    assert _value() == rcu_knob
