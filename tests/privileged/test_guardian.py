"""The guardian: it thaws at the deadline, when the orchestrator dies, and survives signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from quiesce.engine import ledger as ledger_mod
from quiesce.engine.fdwait import wait_readable
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.proof import is_alive
from quiesce.errors import FrozenByOtherError
from tests.privileged.conftest import Writer, targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

HOLDER = """
import sys, time
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.targets import plan_targets
plan = plan_targets(sys.argv[2:])
with frozen(plan.targets, FreezeOptions(timeout_s=30, run_dir=sys.argv[1])):
    print("frozen", flush=True)
    time.sleep(60)
"""


def _guardian_log(run_dir: str) -> list[dict[str, str]]:
    with open(os.path.join(run_dir, "guardian.log")) as f:
        return [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in f]


def _wait_pid_exit(pid: int, seconds: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return wait_readable(fd, seconds)
    finally:
        os.close(fd)


def test_orchestrator_sigkilled_while_frozen_everything_thawed_within_100ms(fs, run_dir):
    """SIGKILL of the freezing process: the guardian thaws all within 100 ms and drops the ledger."""
    mounts = [str(fs[n].mount_point) for n in ("ext4", "xfs", "btrfs")]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir, *mounts], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "frozen"
        led = ledger_mod.read(run_dir)
        assert led is not None and led.guardian_pid
        writers = [Writer(fs[n]) for n in ("ext4", "xfs", "btrfs")]
        assert not any(w.finished_within(0.2) for w in writers)
        killed_at = time.monotonic_ns()
        proc.kill()
        proc.wait(timeout=10)
        assert _wait_pid_exit(led.guardian_pid, 5), "the guardian did not finish"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    events = _guardian_log(run_dir)
    assert events[0]["event"] == "fired" and events[0]["reason"] == "orphaned"
    thaws = [e for e in events if e["event"] == "thaw"]
    assert sorted(int(e["index"]) for e in thaws) == [0, 1, 2]
    assert all(e["errno"] == "0" for e in thaws)
    latest = max(int(e["end_ns"]) for e in thaws)
    assert latest - killed_at < 100_000_000, f"thawed {(latest - killed_at) / 1e6:.1f} ms after kill"
    for w in writers:
        assert w.finished_within(5)
        assert w.finish() == 0
    assert ledger_mod.read(run_dir) is None, "the guardian left the ledger behind"


@pytest.mark.parametrize("timeout_s", [0.3, 0.6])
def test_deadline_thaws_within_10ms(fs, run_dir, timeout_s):
    """Past the deadline the guardian thaws every filesystem within 10 ms of it."""
    opts = FreezeOptions(timeout_s=timeout_s, run_dir=run_dir)
    with frozen(targets(fs["ext4"], fs["xfs"], fs["btrfs"]), opts, allow_expired=True) as f:
        time.sleep(timeout_s + 0.3)
        assert f.guardian_fired
    r = f.report
    assert r.guardian_reason == "deadline"
    assert [t.state for t in r.targets] == ["thawed-by-guardian"] * 3
    deadline = r.guardian_deadline_at_ns
    assert deadline is not None and abs(deadline - timeout_s * 1e9) < 1_000_000
    assert 0 <= r.guardian_fired_at_ns - deadline < 10_000_000
    for t in r.targets:
        assert t.thaw_errno == 0
        lag = t.thaw_at_ns + t.thaw_ns - deadline
        assert 0 <= lag < 10_000_000, f"{t.mount_point} thawed {lag / 1e6:.2f} ms after the deadline"


def test_guardian_survives_the_orchestrators_signals(fs, run_dir):
    """The guardian has its own session and ignores SIGTERM, SIGINT, SIGHUP and SIGQUIT."""
    with frozen(targets(fs["ext4"]), FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
        pid = f.report.guardian_pid or ledger_mod.read(run_dir).guardian_pid
        assert pid and os.getsid(pid) == pid != os.getsid(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
            os.kill(pid, sig)
        time.sleep(0.1)
        assert is_alive(pid, None), "the guardian died of a signal"
    assert f.report.ok
    assert f.report.guardian_reason is None


def test_guardian_holds_no_stray_fds(fs, run_dir):
    """The guardian keeps only its socket, the targets, the log, the lock, the run dir, its proof
    and (expedited by default) the rcu_expedited knob it restores."""
    r, w = os.pipe()
    try:
        with frozen(targets(fs["ext4"], fs["xfs"]), FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
            led = ledger_mod.read(run_dir)
            pid = led.guardian_pid
            links = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    finally:
        os.close(r)
        os.close(w)
    assert [links[n] for n in (0, 1, 2)] == ["/dev/null"] * 3
    rest = sorted(v for k, v in links.items() if k > 2)
    expected = sorted(
        [
            str(fs["ext4"].mount_point),
            str(fs["xfs"].mount_point),
            os.path.join(run_dir, "guardian.log"),
            os.path.join(run_dir, "lock"),
            run_dir,  # the ledger is removed by name in it, never by path
            f"/memfd:quiesce-freeze-{led.token} (deleted)",  # what proves it is this ledger's
        ]
        + (["/sys/kernel/rcu_expedited"] if f.report.rcu_expedited else [])
    )
    assert links[led.proof_fd] == f"/memfd:quiesce-freeze-{led.token} (deleted)"
    kinds = [v for v in rest if v.startswith(("socket:", "anon_inode:"))]
    assert sorted(v for v in rest if v not in kinds) == expected
    # Its end of the socketpair to the orchestrator, and its deadline timer.
    assert sorted(k.split(":")[0] for k in kinds) == ["anon_inode", "socket"]
    assert "anon_inode:[timerfd]" in kinds


@pytest.mark.timeout(60)
def test_long_deadline_is_met_to_the_millisecond(fs, run_dir):
    """A 12 s deadline is met within 10 ms: the guardian waits on an absolute timerfd.

    poll()'s own timeout may expire 0.1% late (12 ms here), which this test
    would catch.
    """
    with frozen(targets(fs["ext4"]), FreezeOptions(timeout_s=12, run_dir=run_dir), allow_expired=True) as f:
        time.sleep(12.3)
    r = f.report
    assert r.guardian_reason == "deadline"
    assert 0 <= r.guardian_fired_at_ns - r.guardian_deadline_at_ns < 10_000_000


def _sched_state(pid: int) -> str:
    """The process's scheduler state letter (R running, S sleeping...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("how", ["thawed", "freeze-failed"])
def test_the_guardian_sleeps_past_a_deadline_with_nothing_frozen(fs, run_dir, how):
    """Thawed early (or a failed freeze) and kept open past the deadline: the guardian waits, never spins.

    It has nothing to thaw, so it neither fires nor wakes until the close
    disarms it (it used to wake again at once, forever, burning a CPU).
    """
    if how == "freeze-failed":
        subprocess.run(["fsfreeze", "-f", str(fs["xfs"].mount_point)], check=True)
    try:
        f = Freeze(
            targets(fs["ext4"], fs["xfs"]), FreezeOptions(timeout_s=0.2, run_dir=run_dir, parallel=False)
        )
        with f:
            f.prepare()
            if how == "thawed":
                f.freeze()
                f.thaw()
            else:
                with pytest.raises(FrozenByOtherError):
                    f.freeze()
            led = ledger_mod.read(run_dir)
            assert led is not None
            time.sleep(0.4)  # past the deadline
            states = []
            for _ in range(20):
                states.append(_sched_state(led.guardian_pid))
                time.sleep(0.01)
        assert set(states) == {"S"}, states
        assert f.report.guardian_reason is None
    finally:
        subprocess.run(["fsfreeze", "-u", str(fs["xfs"].mount_point)], check=False, capture_output=True)
