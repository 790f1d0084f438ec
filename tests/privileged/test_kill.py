"""SIGKILL of ``quiesce run`` at random instants: nothing stays frozen, nothing keeps running.

QUIESCE_KILL_TRIALS sets the number of trials (default 30; the soak is 200:
``QUIESCE_KILL_TRIALS=200 python -m pytest tests/privileged/test_kill.py``).
A failing trial's assertion message carries its outcome; the summary is
printed (``-rP`` shows it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from quiesce.azure.verdict import APPLICATION
from quiesce.engine import ledger as ledger_mod
from quiesce.runner.run import run
from tests.privileged.conftest import Writer
from tests.processes import alive_with, unique_sleep

pytestmark = [pytest.mark.privileged]

TRIALS = int(os.environ.get("QUIESCE_KILL_TRIALS", "30"))
#: Every script's sleep carries it (followed by one digit per script): only this test's leftovers match.
MARK = unique_sleep()


def _alive() -> list[int]:
    return alive_with(f"{MARK}")


def _config(setup):
    snooze = f"sleep {MARK}1 & p=$!; sleep 0.15; kill $p\n"  # a child that outlives nothing
    setup.hook("10-a", f'[ "$1" = pre ] && {{ {snooze} }}\nexit 0\n')
    # `read` fails at EOF: the hook says its clean release with exit 0 itself.
    session = f'if [ "$1" = session ]; then\n  sleep {MARK}2 &\n  systemd-notify --ready\n'
    session += "  read line\n  exit 0\nfi\n"
    setup.hook("20-db.session", session)
    cmd = {
        "mode": "command",
        "argv": ["/bin/sh", "-c", f"sleep 0.2; sleep {MARK}3 & exit 0"],
        "timeoutSeconds": 1,
    }
    setup.config(
        pre=f"sleep {MARK}4 & sleep 0.15\n",
        post=f"sleep {MARK}5 & sleep 0.1\n",
        quiesce={"snapshot": cmd, "freezeTimeoutSeconds": 2, "graceSeconds": 0.2},
    )


@pytest.mark.timeout(60 + 6 * TRIALS)
def test_sigkill_at_random_instants(setup, fs):
    """After each SIGKILL: thawed by the guardian, no script left, ledger recovered, next run fine."""
    _config(setup)
    rng = random.Random(int(os.environ.get("QUIESCE_KILL_SEED", "1")))
    outcomes = []
    env = dict(os.environ)
    argv = setup.run_argv("--json")
    for trial in range(TRIALS):
        delay = rng.uniform(0.0, 1.2)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        time.sleep(delay)
        killed_at = time.monotonic()
        proc.kill()
        proc.wait()
        last_event = (setup.events() or ["(none)"])[-1]
        # Every target writable again: the guardian thawed on the orchestrator's death.
        writers = [Writer(fs[n], f"k{trial}") for n in ("ext4", "xfs")]
        thawed = all(w.finished_within(2 + 0.1 + 1) for w in writers)
        for w in writers:
            w.finish()
        # The watchdog killed the run's cgroup: give the kernel a moment to reap.
        deadline = time.monotonic() + 3
        while _alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        leftovers = _alive()
        recover = subprocess.run(
            [sys.executable, "-m", "quiesce", "recover", "--json", "--run-dir", setup.run_dir],
            capture_output=True,
            text=True,
            timeout=30,
        )
        outcomes.append(
            {
                "trial": trial,
                "kill_after_s": round(delay, 3),
                "last_event": last_event,
                "thawed": thawed,
                "thawed_after_s": round(time.monotonic() - killed_at, 3),
                "leftovers": len(leftovers),
                "recover_exit": recover.returncode,
                "ledger_left": ledger_mod.read(setup.run_dir) is not None,
            }
        )
        assert thawed, f"trial {trial}: a target stayed frozen: {outcomes[-1]}"
        assert not leftovers, f"trial {trial}: script processes survived: {outcomes[-1]}"
        assert recover.returncode == 0, recover.stdout + recover.stderr
        assert ledger_mod.read(setup.run_dir) is None
    after = run(setup.options())
    assert after.consistency == APPLICATION, after.message
    phases = sorted({o["last_event"] for o in outcomes})
    print(
        json.dumps(
            {"trials": TRIALS, "killed_after_events": phases, "all_thawed": True, "leftovers": 0}, indent=1
        )
    )
    assert len(phases) >= 3 or TRIALS < 10, f"kills did not spread across phases: {phases}"


def test_recover_leaves_a_live_freeze_alone(setup, fs):
    """`quiesce recover` with a freeze in progress touches nothing."""
    env = dict(os.environ, QUIESCE_RUN_DIR=setup.run_dir)
    held = subprocess.run(
        [sys.executable, "-m", "quiesce", "freeze", "--hold", "--timeout", "20", str(fs["ext4"].mount_point)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert held.returncode == 0, held.stderr
    try:
        out = subprocess.run(
            [sys.executable, "-m", "quiesce", "recover"], capture_output=True, text=True, env=env, timeout=30
        )
        assert out.returncode == 0 and "in progress" in out.stdout
        w = Writer(fs["ext4"])
        assert not w.finished_within(0.3), "recover thawed a live freeze"
    finally:
        subprocess.run([sys.executable, "-m", "quiesce", "thaw"], env=env, timeout=30, check=True)
    assert w.finished_within(5)
    w.finish()


def test_watchdog_kills_the_scripts_of_a_killed_run(setup):
    """SIGKILL during a long pre-script: its whole tree is killed at once by the run's watchdog."""
    setup.config(pre=f"echo started >> {setup.log}\nsetsid sleep {MARK}9 &\nsleep {MARK}8\n")
    proc = subprocess.Popen(
        setup.run_argv(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while "started" not in setup.events():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(_alive()) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 2
    while _alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _alive() == [], "a script outlived the run that started it"
