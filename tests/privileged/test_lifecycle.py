"""A freeze's life across crashes and a faulty run directory: nothing frozen is lost, nothing untrue said."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from quiesce.cli.exits import Exit
from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.errors import LedgerError
from tests.privileged.conftest import Writer, targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def quiesce(run_dir, *args, timeout=30):
    """Run ``python -m quiesce ARGS --run-dir RUN_DIR`` to the end (stdin /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "quiesce", *args, "--run-dir", run_dir],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _kill_guardian_then_holder(run_dir) -> ledger_mod.Ledger:
    """SIGKILL a hold's guardian, then its holder: nothing thaws, the ledger stays (the OOM killer's way)."""
    led = ledger_mod.read(run_dir)
    assert led is not None
    os.kill(led.guardian_pid, signal.SIGKILL)
    time.sleep(0.1)
    os.kill(led.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{led.pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    return led


def test_a_dead_freezes_ledger_is_never_overwritten_by_the_next_freeze(fs, run_dir):
    """A ledger left by a freeze killed with its guardian: every new freeze is refused until it is recovered.

    Before, the next freeze wrote its own ledger over it and dropped it at
    its end (or at once, on the EBUSY of the filesystem still frozen):
    ``status`` then showed nothing frozen and ``thaw`` thawed nothing, with
    the dead freeze's filesystem still frozen.
    """
    a, b = str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "30", a)
    assert held.returncode == Exit.OK, held.stderr
    dead = _kill_guardian_then_holder(run_dir)
    writer = Writer(fs["ext4"])
    assert not writer.finished_within(0.2), "the dead freeze's filesystem should still be frozen"

    other = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "30", b)
    same = quiesce(run_dir, "freeze", "--json", "--no-stdin", "--timeout", "30", a)
    with pytest.raises(LedgerError, match="quiesce thaw"):
        with Freeze(targets(fs["btrfs"]), FreezeOptions(run_dir=run_dir)) as f:
            f.prepare()
    for refused in (other, same):
        assert refused.returncode == Exit.ERROR, refused.stdout + refused.stderr
        out = json.loads(refused.stdout.splitlines()[-1])
        assert dead.run_id in out["error"] and a in out["error"] and "nothing was frozen" in out["error"]
    unfrozen = Writer(fs["xfs"])
    assert unfrozen.finished_within(5), "a refused freeze froze something"
    unfrozen.finish()
    assert ledger_mod.read(run_dir) == dead, "the dead freeze's ledger was replaced"
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["ledger"]["run_id"] == dead.run_id and not status["holder_alive"]

    thawed = quiesce(run_dir, "thaw", "--json")
    assert thawed.returncode == Exit.OK, thawed.stdout + thawed.stderr
    assert [r["outcome"] for r in json.loads(thawed.stdout)["recovered"]] == ["thawed"]
    assert writer.finished_within(5)
    writer.finish()
    again = quiesce(run_dir, "freeze", "--hold", "--timeout", "30", b)
    assert again.returncode == Exit.OK, again.stderr
    assert quiesce(run_dir, "thaw").returncode == Exit.OK


def test_a_ledger_of_an_earlier_boot_does_not_stop_a_freeze(fs, run_dir):
    """A ledger written in another boot names nothing frozen now: the next freeze removes it and freezes."""
    held = quiesce(run_dir, "freeze", "--hold", "--timeout", "30", str(fs["btrfs"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    dead = _kill_guardian_then_holder(run_dir)
    assert quiesce(run_dir, "thaw").returncode == Exit.OK  # recovered: nothing of it is frozen now
    ledger_mod.write(run_dir, dead._replace(boot_id="0" * 8 + "-0000-0000-0000-" + "0" * 12))
    with Freeze(targets(fs["btrfs"]), FreezeOptions(run_dir=run_dir)) as f:
        f.prepare()
        f.freeze()
        assert ledger_mod.read(run_dir).run_id == f.run_id
    assert f.report.ok and ledger_mod.read(run_dir) is None
