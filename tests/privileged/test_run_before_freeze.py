"""``RunOptions.before_freeze``: the last word before the first FIFREEZE (a fleet agent's barrier)."""

from __future__ import annotations

import os

import pytest

from quiesce.azure.verdict import APPLICATION, FAILED
from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import Freeze
from quiesce.runner.run import run
from quiesce.runner.types import RunOptions
from tests.privileged.conftest import Writer

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def _with_hook(setup, hook) -> RunOptions:
    opts = setup.options()
    return RunOptions(**{**opts.__dict__, "before_freeze": hook})


def test_called_after_pre_steps_and_arming_before_any_freeze(setup, fs):
    """The hook sees the pre-script done, the guardian armed (ledger written) and nothing frozen yet."""
    setup.config(pre=f"echo pre-done >> {setup.log}\n")
    seen: dict[str, object] = {}

    def hook(freeze: Freeze) -> None:
        led = ledger_mod.read(setup.run_dir)
        seen["events"] = list(setup.events())
        seen["guardian_alive"] = led is not None and led.guardian_pid is not None and _alive(led.guardian_pid)
        seen["targets"] = [t.mount.mount_point for t in freeze.targets]
        seen["deadline_running"] = freeze.remaining_ns()
        w = Writer(fs["ext4"], "before-freeze")
        seen["writer_done"] = w.finished_within(5.0)
        w.finish()

    r = run(_with_hook(setup, hook))
    assert r.consistency == APPLICATION and r.ok
    assert seen["events"] == ["pre.sh 1  ", "pre-done"]
    assert seen["guardian_alive"] is True
    assert seen["targets"] and set(seen["targets"]) == set(setup.targets)
    assert seen["deadline_running"] is None  # the deadline starts with the first FIFREEZE
    assert seen["writer_done"] is True  # not frozen yet: a write completes at once
    assert r.freeze is not None and r.freeze.ok


def test_raising_aborts_nothing_frozen_post_steps_run(setup, fs):
    """An exception from the hook: no FIFREEZE, no snapshot, post-script still runs, result failed."""
    setup.config()
    called = []

    def hook(freeze: Freeze) -> None:
        raise RuntimeError("the fleet aborted")

    def snapshot() -> None:
        called.append("snapshot")

    r = run(_with_hook(setup, hook), snapshot=snapshot)
    assert r.consistency == FAILED and not r.ok
    assert r.error_name == "FreezeAborted" and "the fleet aborted" in (r.message or "")
    assert called == []
    assert r.freeze is not None and r.freeze.window_ns is None
    assert {t.state for t in r.freeze.targets} == {"not-attempted"}
    assert setup.events()[-1] == "post.sh 1 failed ok"
    window = next(p for p in r.phases if p.name == "freeze-window")
    assert window.status == "aborted"
    assert ledger_mod.read(setup.run_dir) is None
    w = Writer(fs["xfs"], "after-abort")
    assert w.finished_within(5.0)
    assert w.finish() == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
