"""Real FIFREEZE/FITHAW on loop-mounted ext4, xfs and btrfs."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.proof import holds_proof, start_time
from quiesce.errors import FreezeTimeoutError, FrozenByOtherError, LockHeldError
from tests.privileged.conftest import Writer, external_freeze, is_frozen, targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


@pytest.mark.parametrize("name", ["ext4", "xfs", "btrfs"])
def test_writer_blocks_while_frozen_and_completes_after_thaw(fs, run_dir, name):
    """A write from another process sleeps while frozen and completes right after the thaw."""
    opts = FreezeOptions(timeout_s=20, run_dir=run_dir)
    with frozen(targets(fs[name]), opts) as f:
        writer = Writer(fs[name])
        assert not writer.finished_within(0.5), "a write went through a frozen filesystem"
    assert writer.finished_within(5), "the writer did not resume after the thaw"
    assert writer.finish() == 0
    assert writer.path.read_text() == "x" * 4096
    report = f.report
    assert report.ok, report
    [t] = report.targets
    assert t.state == "thawed" and t.fstype == name
    assert t.freeze_errno == 0 and t.thaw_errno == 0
    assert report.window_ns is not None and report.window_ns >= 500_000_000
    assert report.guardian_reason is None


def test_three_types_frozen_together_in_given_order(fs, run_dir):
    """Sequential: ext4, xfs and btrfs freeze in the planned order and thaw in reverse."""
    order = targets(fs["ext4"], fs["xfs"], fs["btrfs"])
    with frozen(order, FreezeOptions(timeout_s=20, run_dir=run_dir, parallel=False)) as f:
        pass
    ts = f.report.targets
    assert [t.state for t in ts] == ["thawed"] * 3
    assert [t.mount_point for t in ts] == [t.mount.mount_point for t in order]
    assert ts[0].freeze_at_ns == 0
    assert ts[0].freeze_at_ns < ts[1].freeze_at_ns < ts[2].freeze_at_ns
    assert ts[2].thaw_at_ns < ts[1].thaw_at_ns < ts[0].thaw_at_ns
    # Pre-flushed or not as the policy decided (it depends on the whole machine's dirty data).
    assert f.report.preflush is not None
    assert (f.report.preflush_ns is not None) == f.report.preflush.flush


def test_rollback_thaws_those_frozen_before_the_failure(fs, run_dir):
    """Sequential: when the second FIFREEZE fails, the first is thawed and the third never frozen."""
    external_freeze(fs["xfs"])
    try:
        opts = FreezeOptions(run_dir=run_dir, parallel=False)
        f = Freeze(targets(fs["ext4"], fs["xfs"], fs["btrfs"]), opts)
        with pytest.raises(FrozenByOtherError) as info, f:
            f.prepare()
            f.freeze()
        writer = Writer(fs["ext4"])
        ext4_writable = writer.finished_within(5)
        if ext4_writable:
            writer.finish()
    finally:
        # The xfs freeze belongs to "someone else": quiesce must have left it frozen.
        # Read (and thaw) here, asserted after: an assert in `finally` would hide the first failure.
        xfs_left_frozen = is_frozen(fs["xfs"])
    assert info.value.errno == errno.EBUSY
    assert info.value.filename == str(fs["xfs"].mount_point)
    states = [t.state for t in f.report.targets]
    assert states == ["thawed", "freeze-failed", "not-attempted"]
    assert f.report.targets[1].freeze_errno == errno.EBUSY
    assert ext4_writable, "ext4 was left frozen after the rollback"
    assert xfs_left_frozen, "quiesce thawed a filesystem it did not freeze"


def test_ebusy_target_is_reported_and_left_frozen(fs, run_dir):
    """A filesystem frozen by another tool is reported (EBUSY) and stays frozen."""
    external_freeze(fs["btrfs"])
    try:
        with pytest.raises(FrozenByOtherError) as info:
            with frozen(targets(fs["btrfs"]), FreezeOptions(run_dir=run_dir)):
                pytest.fail("the body ran although the freeze failed")
        ledger_after = ledger_mod.read(run_dir)
    finally:
        btrfs_left_frozen = is_frozen(fs["btrfs"])  # asserted below, never in `finally`
    assert info.value.errno == errno.EBUSY
    assert ledger_after is None
    assert btrfs_left_frozen, "quiesce thawed a filesystem another tool froze"


def test_ledger_lists_the_targets_while_frozen_and_is_removed_after(fs, run_dir):
    """The ledger names each frozen filesystem (mount ID, maj:min) and disappears after the thaw."""
    order = targets(fs["ext4"], fs["btrfs"])
    with frozen(order, FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
        led = ledger_mod.read(run_dir)
        assert led is not None
        assert led.pid == os.getpid()
        # The guardian the ledger names is alive (its start time matches) and holds this freeze's proof.
        assert led.guardian_pid != os.getpid()
        assert led.guardian_start == start_time(led.guardian_pid)
        assert holds_proof(led.guardian_pid, led.proof_fd, led.token)
        assert [(e.mount_point, e.dev, e.mount_id) for e in led.filesystems] == [
            (t.mount.mount_point, t.mount.dev, t.mount.mount_id) for t in order
        ]
    assert led.guardian_pid == f.report.guardian_pid
    assert ledger_mod.read(run_dir) is None
    assert not os.path.exists(os.path.join(run_dir, "ledger.json"))


def test_second_concurrent_freeze_is_refused(fs, run_dir):
    """While one freeze holds the lock, another is refused at once with a clear message."""
    with frozen(targets(fs["ext4"]), FreezeOptions(timeout_s=20, run_dir=run_dir)):
        with pytest.raises(LockHeldError) as info:
            with frozen(targets(fs["xfs"]), FreezeOptions(run_dir=run_dir)):
                pytest.fail("second freeze ran")
        assert str(os.getpid()) in str(info.value)
        assert "quiesce status" in str(info.value)
    with frozen(targets(fs["xfs"]), FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
        pass
    assert f.report.ok


def test_nested_loop_stack_is_planned_upper_first(fs, run_dir):
    """The plan freezes the filesystem on the loop device before the one holding its image."""
    from quiesce.azure.planning import make_plan

    plan = make_plan([str(fs["outer"].mount_point), str(fs["inner"].mount_point)], vmbackup_conf=None)
    assert [t.mount.mount_point for t in plan.targets] == [
        str(fs["inner"].mount_point),
        str(fs["outer"].mount_point),
    ]
    assert plan.targets[0].backing_target == str(fs["outer"].mount_point)
    (fs["inner"].mount_point / "dirty").write_bytes(os.urandom(1 << 20))
    opts = FreezeOptions(timeout_s=10, step_timeout_s=2, preflush=False, run_dir=run_dir)
    with frozen(plan.targets, opts) as f:
        pass
    assert f.report.ok
    assert f.report.guardian_reason is None


def test_wrong_stack_order_blocks_and_the_guardian_releases_it(fs, run_dir):
    """Backing first makes the upper FIFREEZE block; the guardian thaws by the step deadline.

    This is what the planned order prevents: with the backing xfs frozen, the
    inner ext4 cannot write its freeze through the loop device.
    """
    (fs["inner"].mount_point / "dirty").write_bytes(os.urandom(1 << 20))
    wrong = targets(fs["outer"], fs["inner"])
    step_s = 0.5
    # Sequential: a parallel freeze regroups the targets into the safe order.
    opts = FreezeOptions(timeout_s=10, step_timeout_s=step_s, preflush=False, run_dir=run_dir, parallel=False)
    f = Freeze(wrong, opts)
    with pytest.raises(FreezeTimeoutError), f:
        f.prepare()
        f.freeze()
    report = f.report
    assert report.guardian_reason == "blocked-freeze"
    outer, inner = report.targets
    assert outer.state == "thawed-by-guardian"
    # The inner FIFREEZE blocked until the guardian thawed the outer one...
    assert inner.freeze_ns is not None and inner.freeze_ns >= step_s * 1e9 * 0.95
    # ...which it did within 10 ms of the inner call's own deadline.
    deadline_at = inner.freeze_at_ns + int(step_s * 1e9)
    assert outer.thaw_at_ns + outer.thaw_ns - deadline_at < 10_000_000
    # The inner freeze then completed and was rolled back by quiesce itself.
    assert inner.state == "thawed"
    for name in ("inner", "outer"):
        w = Writer(fs[name])
        assert w.finished_within(5), f"{name} left frozen"
        w.finish()


def test_guardian_log_is_written_after_it_thaws(fs, run_dir):
    """The guardian's log names each thaw it did, with its errno."""
    opts = FreezeOptions(timeout_s=0.2, run_dir=run_dir)
    with frozen(targets(fs["ext4"], fs["xfs"]), opts, allow_expired=True) as f:
        time.sleep(0.5)
    with open(os.path.join(run_dir, "guardian.log")) as log:
        lines = log.read().splitlines()
    assert all(line.startswith("quiesce-guardian pid=") for line in lines), lines
    events = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines]
    assert [e["event"] for e in events] == ["fired", "thaw", "thaw"]
    assert events[0]["reason"] == "deadline"
    thaws = events[1:]
    # Last frozen, first thawed; each with its times, the thaw after the firing.
    assert [e["index"] for e in thaws] == ["1", "0"]
    assert all(e["errno"] == "0" for e in thaws)
    fired = int(events[0]["t_ns"])
    for e in thaws:
        assert fired <= int(e["start_ns"]) <= int(e["end_ns"])
    assert {pid for pid in (line.split()[1] for line in lines)} == {f"pid={f.report.guardian_pid}"}


def test_parallel_freeze_of_three_types(fs, run_dir):
    """Parallel: all three freeze, block writers, and thaw; the speed-up is measured in bench/."""
    # Not expedited: each FIFREEZE then lasts long enough for the overlap to be seen.
    opts = FreezeOptions(timeout_s=20, run_dir=run_dir, parallel=True, expedite_rcu=False)
    with frozen(targets(fs["ext4"], fs["xfs"], fs["btrfs"]), opts) as f:
        writer = Writer(fs["btrfs"])
        assert not writer.finished_within(0.3)
    assert writer.finished_within(5)
    writer.finish()
    ts = f.report.targets
    assert [t.state for t in ts] == ["thawed"] * 3
    # Concurrent calls: every FIFREEZE started before the slowest one ended.
    latest_start = max(t.freeze_at_ns for t in ts)
    assert (
        all(latest_start < t.freeze_at_ns + t.freeze_ns for t in ts) or min(t.freeze_ns for t in ts) < 100_000
    )


def test_parallel_rollback_keeps_the_foreign_freeze(fs, run_dir):
    """Parallel with one target frozen by another tool: EBUSY, the others thawed, that one left frozen."""
    external_freeze(fs["ext4"])
    try:
        f = Freeze(targets(fs["ext4"], fs["xfs"], fs["btrfs"]), FreezeOptions(run_dir=run_dir, parallel=True))
        with pytest.raises(FrozenByOtherError), f:
            f.prepare()
            f.freeze()
    finally:
        ext4_left_frozen = is_frozen(fs["ext4"])  # asserted below, never in `finally`
    states = {t.mount_point: t.state for t in f.report.targets}
    assert states[str(fs["ext4"].mount_point)] == "freeze-failed"
    assert states[str(fs["xfs"].mount_point)] == "thawed"
    assert states[str(fs["btrfs"].mount_point)] == "thawed"
    assert ext4_left_frozen, "quiesce thawed a filesystem it did not freeze"


def test_parallel_respects_the_loop_stack(fs, run_dir):
    """Parallel with a nested stack: the upper freezes in an earlier group; no deadlock."""
    (fs["inner"].mount_point / "dirty").write_bytes(os.urandom(1 << 20))
    order = targets(fs["outer"], fs["inner"], fs["ext4"])
    opts = FreezeOptions(timeout_s=10, step_timeout_s=2, preflush=False, run_dir=run_dir, parallel=True)
    with frozen(order, opts) as f:
        pass
    r = f.report
    assert r.ok and r.guardian_reason is None
    mps = [t.mount_point for t in r.targets]
    assert mps.index(str(fs["inner"].mount_point)) < mps.index(str(fs["outer"].mount_point))


def test_thaw_by_another_tool_mid_window_is_reported(fs, run_dir):
    """Another tool thaws our filesystem mid-window: reported per filesystem, not a thaw failure."""
    opts = FreezeOptions(timeout_s=20, run_dir=run_dir)
    with frozen(targets(fs["ext4"], fs["xfs"]), opts, allow_expired=True) as f:
        subprocess.run(["fsfreeze", "-u", str(fs["xfs"].mount_point)], check=True)
    states = {t.mount_point: t.state for t in f.report.targets}
    assert states == {str(fs["ext4"].mount_point): "thawed", str(fs["xfs"].mount_point): "thawed-externally"}
    assert not f.report.ok and f.report.error is None
    assert any("thawed by someone else" in w for w in f.report.warnings)
