"""PostgreSQL 15: quiesce snapshots with the shipped scripts restore with every acknowledged commit.

A real server (initdb, pg_ctl) runs on an ext4 guest filesystem while the load commits
numbered transactions. Each cycle runs ``quiesce run`` with scripts from
examples/postgresql, restores the snapshot on a second server and checks it
(harness.restore_and_check). QUIESCE_DB_CYCLES sets the number of cycles.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from .checks import judged
from .conftest import make_world
from .cycles import (
    CYCLES,
    NEGATIVE,
    SHORT_CYCLES,
    HeldHook,
    Variant,
    azure_agent_hold,
    configure,
    quiesce_cycle,
    quiesce_run,
    unquiesced_cycle,
    wait_until,
)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(180 + 20 * CYCLES)]

SESSION = Variant(
    "session hook (pg_backup_start)", hooks=["postgresql/postgresql-backup.session"], label=True
)
CHECKPOINT = Variant(
    "CHECKPOINT pre/post scripts",
    pre=("postgresql/postgresql-checkpoint", ["pre"]),
    post=("postgresql/postgresql-checkpoint", ["post"]),
)
AZURE_HOLD = Variant("pre-hold/post-hold pair (Azure's agent)", label=True)


@pytest.fixture(scope="module")
def world(db_namespace):
    """PostgreSQL on its guest filesystem for this module."""
    yield from make_world("postgresql")


def assert_whole(cycles, record_property):
    """Every cycle restored, started, complete and checked; the figures go to the report."""
    record_property("cycles", json.dumps([c.to_dict() for c in cycles]))
    bad = [f"cycle {c.cycle}: {c.result}" for c in cycles if not c.ok]
    assert not bad, "\n".join(bad)
    assert all(c.required > 0 and c.window_ms is not None for c in cycles)


def test_session_hook_snapshots_restore_with_every_acknowledged_commit(world, load, record_property):
    """pg_backup_start held across the window; the restore (label + WAL installed) holds every commit."""
    cycles = [quiesce_cycle(world, load, SESSION, i) for i in range(1, CYCLES + 1)]
    assert_whole(cycles, record_property)


def test_checkpoint_scripts_snapshots_recover_by_crash_recovery(world, load, record_property):
    """CHECKPOINT as the Azure-style pre-script: the snapshot recovers from its own WAL, complete."""
    cycles = [quiesce_cycle(world, load, CHECKPOINT, i) for i in range(1, SHORT_CYCLES + 1)]
    assert_whole(cycles, record_property)


def test_hold_pair_holds_the_backup_for_another_runner(world, load, record_property):
    """pre-hold.sh/post-hold.sh run as Azure's agent would, around the window; the label restores."""
    cycles = [
        quiesce_cycle(world, load, AZURE_HOLD, i, around=lambda w: azure_agent_hold(w, SESSION.hooks[0]))
        for i in range(1, SHORT_CYCLES + 1)
    ]
    assert_whole(cycles, record_property)


def test_hold_pair_refuses_to_run_under_quiesce(world, tmp_path):
    """Under quiesce pre-hold.sh fails at once, naming the hook directory: no silent unheld snapshot."""
    pair = Variant(
        "hold pair under quiesce", pre=("azure-pair/pre-hold.sh", [str(world.work / "held.session")])
    )
    (world.work / "held.session").write_text("#!/bin/sh\nexit 0\n")
    (world.work / "held.session").chmod(0o700)
    config = configure(world, pair, world.host.mount_point / "unused.img", world.work / "stamp")
    code, result, _ = quiesce_run(config, world.work / "run")
    assert code == 9 and result["consistency"] == "failed"
    assert result["pre"]["status"] == "failed" and "hook directory" in result["pre"]["attempts"][0]["stderr"]
    assert result["freeze"] is None


def _sessions(world):
    """(backup sessions of the hook, quiesce slots) on the server now."""
    out = world.server.sql(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'quiesce postgresql-backup')"
        " || ' ' || (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'quiesce%')"
    )
    return tuple(int(x) for x in out.split())


def test_backup_never_outlives_the_hold_deadline_nor_the_hook(world, load):
    """Unreleased, the hook aborts the backup at HOLD_SECONDS; a killed hook ends its session at once."""
    backups = world.tmp / "backups"
    shutil.rmtree(backups, ignore_errors=True)
    hook = HeldHook(world, "postgresql/postgresql-backup.session", hold_s=2)
    try:
        assert _sessions(world) == (1, 1)
        out, err = hook.finish(timeout=20)
        assert hook.proc.returncode == 1, (out, err)
        assert "not released within HOLD_SECONDS=2: backup aborted" in err
        assert (time.time_ns() - hook.ready_ns) / 1e9 < 6
        wait_until(lambda: _sessions(world) == (0, 0), 5)
        assert not list(backups.glob("*/backup_label")), "an aborted backup leaves no label"
    finally:
        hook.close()
    hook = HeldHook(world, "postgresql/postgresql-backup.session", hold_s=60)
    try:
        hook.kill_shell()
        assert wait_until(lambda: _sessions(world) == (0, 0), 5) < 2
    finally:
        hook.close()


@pytest.mark.parametrize("how", NEGATIVE)
def test_negative_control_copies_without_quiesce_are_reported(world, load, how, record_property):
    """Copies of the live image, no scripts and no freeze, get the same checks; results are reported.

    Not asserted to fail (a copy may survive by luck, and an atomic one is crash-consistent):
    each verdict lands in bench/db-consistency.md beside the quiesce cycles.
    """
    cycles = [unquiesced_cycle(world, load, how, i) for i in range(1, SHORT_CYCLES + 1)]
    record_property("cycles", json.dumps([c.to_dict() for c in cycles]))
    assert [c.result for c in cycles if not judged(c)] == [], "every copy was restored and judged"
