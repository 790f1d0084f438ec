"""Lock, ledger, process identity and report assembly (no root needed)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from quiesce.engine import ledger as ledger_mod
from quiesce.engine import lock as lock_mod
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.lock import FreezeLock, held_by, is_held
from quiesce.engine.mountinfo import parse_mountinfo
from quiesce.engine.native import FsRecord, GuardianRecord
from quiesce.engine.plan import Target
from quiesce.engine.proof import current_identity, is_alive, start_time
from quiesce.engine.report import build_report
from quiesce.engine.rundir import RunDir
from quiesce.errors import LedgerError, LockHeldError


def _ledger(**over):
    base = dict(
        run_id="r1",
        pid=os.getpid(),
        pid_start=start_time(os.getpid()),
        guardian_pid=os.getppid(),
        guardian_start=start_time(os.getppid()),
        created_unix=1000.0,
        timeout_s=60.0,
        filesystems=(ledger_mod.LedgerEntry("/data", "8:1", 42, "xfs"),),
        token="0123456789abcdef" * 2,
        proof_fd=7,
        boot_id=ledger_mod.current_boot_id(),
    )
    base.update(over)
    return ledger_mod.Ledger(**base)


def test_ledger_round_trip(root_run_dir):
    """A written ledger reads back equal, and removing it leaves nothing."""
    led = _ledger()
    path = ledger_mod.write(root_run_dir, led)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert ledger_mod.read(root_run_dir) == led
    ledger_mod.remove(root_run_dir)
    assert ledger_mod.read(root_run_dir) is None
    assert os.listdir(root_run_dir) == []


@pytest.mark.parametrize("release", [ledger_mod.RELEASE_SIGNAL, ledger_mod.RELEASE_THAW])
def test_ledger_keeps_how_its_holder_is_released(root_run_dir, release):
    """``release`` round-trips; a ledger written without it (a quiesce command's, before) reads as signal."""
    ledger_mod.write(root_run_dir, _ledger(release=release))
    led = ledger_mod.read(root_run_dir)
    assert led is not None and led.release == release
    older = _ledger().to_dict()
    del older["release"]
    with RunDir.open(root_run_dir) as d:
        d.write(ledger_mod.LEDGER_NAME, json.dumps(older).encode(), 0o600)
    led = ledger_mod.read(root_run_dir)
    assert led is not None and led.release == ledger_mod.RELEASE_SIGNAL


@pytest.mark.parametrize("release", ["", "SIGNAL", "kill", 1, None, True])
def test_ledger_with_an_unknown_release_is_refused(root_run_dir, release):
    """Anything but "signal" or "thaw" (null included) is a malformed ledger: nothing is signalled."""
    data = dict(_ledger().to_dict(), release=release)
    with RunDir.open(root_run_dir) as d:
        d.write(ledger_mod.LEDGER_NAME, json.dumps(data).encode(), 0o600)
    with pytest.raises(LedgerError, match="release"):
        ledger_mod.read(root_run_dir)


@pytest.mark.parametrize("content", ["not json", "{}", '{"run_id": 1}', "[]"])
def test_malformed_ledger_is_a_named_error(root_run_dir, content):
    """A damaged ledger raises LedgerError naming the problem, never a traceback."""
    path = os.path.join(root_run_dir, "ledger.json")
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, 0o600)
    with pytest.raises(LedgerError):
        ledger_mod.read(root_run_dir)


def test_a_ledger_left_behind_refuses_the_next_freeze_unless_it_is_of_an_earlier_boot(root_run_dir):
    """``refuse_if_left``: nothing there passes; a dead freeze's ledger, or one that cannot be read, refuses.

    A ledger written in an earlier boot names nothing frozen now: it is removed.
    """
    with RunDir.open(root_run_dir) as d:
        ledger_mod.refuse_if_left(d)
        ledger_mod.write(d, _ledger())
        with pytest.raises(LedgerError, match=r"r1 .*still lists /data.*quiesce thaw"):
            ledger_mod.refuse_if_left(d)
        assert ledger_mod.read(d) == _ledger()
        d.write(ledger_mod.LEDGER_NAME, b"{garbage", 0o600)
        with pytest.raises(LedgerError, match=r"cannot be used.*remove"):
            ledger_mod.refuse_if_left(d)
        ledger_mod.write(d, _ledger(boot_id="0" * 8 + "-0000-0000-0000-" + "0" * 12))
        ledger_mod.refuse_if_left(d)
        assert ledger_mod.read(d) is None


def test_lock_refuses_a_second_holder(root_run_dir):
    """A second lock on the same run dir fails at once naming the holder's pid."""
    with FreezeLock(root_run_dir):
        assert is_held(root_run_dir)
        with RunDir.open(root_run_dir) as d:
            assert held_by(d) == (True, os.getpid())
        with pytest.raises(LockHeldError) as info:
            FreezeLock(root_run_dir)
        assert info.value.holder_pid == os.getpid()
        assert f"pid {os.getpid()}" in str(info.value)
    assert not is_held(root_run_dir)
    with RunDir.open(root_run_dir) as d:
        assert held_by(d) == (False, None)  # the last holder's pid names no one now
    FreezeLock(root_run_dir).release()


def test_looking_at_a_lock_takes_no_lock(root_run_dir, monkeypatch):
    """``held_by`` (``quiesce status``, ``recover``) never takes the lock it looks at, even for an instant.

    Before, it tried a shared flock: a freeze or run starting in that
    instant was refused (exit 3) as if another one were in progress.
    """
    FreezeLock(root_run_dir).release()  # the lock file exists, nobody holds it
    taken: list[int] = []
    real_flock = fcntl.flock
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (taken.append(op), real_flock(fd, op))[1])
    with RunDir.open(root_run_dir) as d:
        assert held_by(d) == (False, None)
        code = "import sys; from quiesce.engine.lock import FreezeLock; FreezeLock(sys.argv[1]); input()"
        holder = subprocess.Popen([sys.executable, "-c", code, root_run_dir], stdin=subprocess.PIPE)
        try:
            while held_by(d) != (True, holder.pid):  # held, then its pid written
                assert holder.poll() is None
        finally:
            holder.communicate(b"\n")
    assert taken == []


def test_looking_at_a_lock_without_the_kernels_lock_table(root_run_dir, monkeypatch):
    """No /proc/locks to read: ``held_by`` still says whether the lock is held, by trying it."""
    monkeypatch.setattr(lock_mod, "PROC_LOCKS", "/nonexistent/locks")
    FreezeLock(root_run_dir).release()
    with RunDir.open(root_run_dir) as d:
        assert held_by(d) == (False, None)
        with FreezeLock(root_run_dir):
            assert held_by(d) == (True, os.getpid())


def test_lock_is_released_when_the_holder_dies(root_run_dir):
    """flock dies with its holder: a crashed freeze does not block the next one."""
    code = "import sys; from quiesce.engine.lock import FreezeLock; FreezeLock(sys.argv[1]); print('ok')"
    out = subprocess.run([sys.executable, "-c", code, root_run_dir], capture_output=True, text=True)
    assert out.stdout.strip() == "ok"
    with FreezeLock(root_run_dir):
        pass


def test_process_identity():
    """is_alive tells a live process from a dead one and from a reused pid."""
    pid, started = current_identity()
    assert is_alive(pid, started)
    assert not is_alive(pid, (started or 0) + 1)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not is_alive(child.pid, None)
    assert not is_alive(0, None)


def test_freeze_options_validation_and_step_default():
    """Timeouts must be positive; the per-FIFREEZE limit defaults to 10 s and never exceeds the window."""
    with pytest.raises(ValueError):
        FreezeOptions(timeout_s=0)
    with pytest.raises(ValueError):
        FreezeOptions(step_timeout_s=-1)
    assert FreezeOptions(timeout_s=60).step_timeout_ns == 10_000_000_000
    assert FreezeOptions(timeout_s=2).step_timeout_ns == 2_000_000_000
    assert FreezeOptions(timeout_s=5, step_timeout_s=30).step_timeout_ns == 5_000_000_000


MOUNTINFO = """\
30 1 8:1 / /data rw - xfs /dev/sda1 rw
31 1 8:2 / /logs rw - ext4 /dev/sda2 rw
"""


def test_report_times_are_relative_to_the_first_freeze():
    """The window spans first FIFREEZE start to last FITHAW end; per-fs times are offsets."""
    mounts = parse_mountinfo(MOUNTINFO)
    targets = [Target(m, None, None) for m in mounts]

    def rec(i, fs, fe, ts, te, state="thawed"):
        return FsRecord(i, state, 0, 50, 90, 0, fs, fe, 0, ts, te)

    records = [rec(0, 100, 110, 300, 320), rec(1, 110, 150, 200, 210)]
    report = build_report("r", targets, records, GuardianRecord(None, 0, 1100, 0), 77)
    assert report.window_ns == 220
    assert report.preflush_ns == 40
    assert report.guardian_deadline_at_ns == 1000
    a, b = report.targets
    assert (a.freeze_at_ns, a.freeze_ns, a.thaw_at_ns, a.thaw_ns) == (0, 10, 200, 20)
    assert (b.freeze_at_ns, b.freeze_ns, b.thaw_at_ns, b.thaw_ns) == (10, 40, 100, 10)
    assert report.ok and report.guardian_pid == 77
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["targets"][0]["mount_point"] == "/data"


def test_report_is_not_ok_when_the_guardian_thawed():
    """A filesystem thawed by the guardian makes the report not ok."""
    mounts = parse_mountinfo(MOUNTINFO)
    records = [FsRecord(0, "thawed-by-guardian", 0, 0, 0, 0, 1, 2, 0, 5, 6)]
    report = build_report(
        "r", [Target(mounts[0], None, None)], records, GuardianRecord("deadline", 4, 3, 256), None
    )
    assert not report.ok
    assert report.guardian_reason == "deadline" and report.guardian_fired_at_ns == 3


def test_a_fithaw_that_did_not_thaw_never_ends_the_window():
    """EINVAL (someone else thawed first) or EIO: that FITHAW's time is no end of the window.

    With one target thawed by quiesce, the window ends at its FITHAW; with
    every target thawed by someone else, when the window ended is unknown.
    """
    import errno

    mounts = parse_mountinfo(MOUNTINFO)
    targets = [Target(m, None, None) for m in mounts]
    ours = FsRecord(0, "thawed", 0, 0, 0, 0, 100, 110, 0, 300, 320)
    theirs = FsRecord(1, "thawed", 0, 0, 0, 0, 110, 150, errno.EINVAL, 400, 420)
    guardian = GuardianRecord(None, 0, 1100, 0)
    mixed = build_report("r", targets, [ours, theirs], guardian, 77)
    assert mixed.window_ns == 220 and not mixed.ok
    assert [t.state for t in mixed.targets] == ["thawed", "thawed-externally"]
    failed = FsRecord(0, "thawed", 0, 0, 0, 0, 100, 110, errno.EIO, 500, 520)
    assert build_report("r", targets[:1], [failed], guardian, 77).window_ns is None
    alone = FsRecord(0, "thawed", 0, 0, 0, 0, 110, 150, errno.EINVAL, 400, 420)
    report = build_report("r", targets[:1], [alone], guardian, 77)
    assert report.window_ns is None and report.window_start_ns == 110
    assert report.targets[0].state == "thawed-externally" and not report.ok


@pytest.mark.parametrize("run_id", ["", "a b", "x" * 129, "run/1", "é", 5, b"r1"])
def test_a_freeze_run_id_a_ledger_could_not_hold_is_refused(run_id):
    """FreezeOptions(run_id=...) takes only what a ledger reads back (else its ledger is unreadable)."""
    with pytest.raises(ValueError, match="run_id"):
        FreezeOptions(run_id=run_id)


def test_a_freeze_carries_the_run_id_it_is_given(root_run_dir):
    """The ID given is the freeze's, its report's and its ledger's (a run gives its own)."""
    from quiesce.engine.freeze import Freeze
    from tests.unit.test_api_arguments import target

    given = FreezeOptions(run_id="20261202T000000Z-1", run_dir=root_run_dir)
    with Freeze([target("/data", "8:1")], given) as f:
        assert f.run_id == f.report.run_id == "20261202T000000Z-1"
    with Freeze([target("/data", "8:1")], FreezeOptions(run_dir=root_run_dir)) as other:
        assert other.run_id != f.run_id


def test_run_ids_made_within_one_second_by_one_process_differ():
    """Two runs started by one long-lived process in the same second get different IDs, each a valid one."""
    ids = [ledger_mod.new_run_id() for _ in range(50)]
    assert len(set(ids)) == len(ids)
    assert all(ledger_mod.RUN_ID.fullmatch(i) for i in ids)
