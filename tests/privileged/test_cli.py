"""The ``quiesce`` command on real loop filesystems: freeze, hold, thaw, status, recovery."""

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
from quiesce.engine.proof import is_alive
from tests.privileged.conftest import Writer, external_freeze, is_frozen

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def quiesce(run_dir, *args, stdin=subprocess.DEVNULL, timeout=30):
    """Run ``python -m quiesce`` with a private run directory."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    return subprocess.run(
        [sys.executable, "-m", "quiesce", *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_hold_returns_frozen_and_thaw_releases_it(fs, run_dir):
    """``freeze --hold`` returns once frozen; ``status`` shows it; ``thaw`` releases with a report."""
    a, b = str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "20", a, b)
    assert held.returncode == Exit.OK, held.stderr
    event = json.loads(held.stdout)
    assert event["event"] == "frozen" and set(event["targets"]) == {a, b}
    writer = Writer(fs["ext4"])
    assert not writer.finished_within(0.3), "ext4 is not frozen after --hold returned"

    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["holder_alive"] and status["guardian_alive"] and status["lock_held"]
    assert {e["mount_point"] for e in status["ledger"]["filesystems"]} == {a, b}
    assert status["ledger"]["release"] == "signal"
    assert "`quiesce thaw` releases it" in quiesce(run_dir, "status").stdout

    thawed = quiesce(run_dir, "thaw", "--json")
    assert thawed.returncode == Exit.OK, thawed.stderr
    out = json.loads(thawed.stdout)
    assert out["released"] == event["pid"]
    assert out["report"]["ok"] and out["report"]["released_by"] == "signal SIGUSR1"
    assert {t["state"] for t in out["report"]["targets"]} == {"thawed"}
    assert writer.finished_within(5)
    writer.finish()
    assert ledger_mod.read(run_dir) is None
    assert json.loads(quiesce(run_dir, "status", "--json").stdout)["lock_held"] is False


def test_foreground_freeze_released_by_stdin_eof(fs, run_dir):
    """With stdin at EOF the freeze is released at once; JSON shows the frozen and thawed events."""
    done = quiesce(run_dir, "freeze", "--json", str(fs["btrfs"].mount_point))
    assert done.returncode == Exit.OK, done.stderr
    frozen_ev, thawed_ev = (json.loads(line) for line in done.stdout.splitlines())
    assert frozen_ev["event"] == "frozen"
    assert thawed_ev["event"] == "thawed" and thawed_ev["released_by"] == "stdin"
    assert thawed_ev["ok"] and thawed_ev["window_ns"] > 0


def test_foreground_freeze_released_by_sigterm(fs, run_dir):
    """SIGTERM releases a foreground freeze: thawed, reported, exit 0."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quiesce",
            "freeze",
            "--json",
            "--no-stdin",
            str(fs["xfs"].mount_point),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert json.loads(proc.stdout.readline())["event"] == "frozen"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == Exit.OK, err
    final = json.loads(out)
    assert final["released_by"] == "signal SIGTERM" and final["ok"]


def test_second_freeze_is_refused_while_one_holds(fs, run_dir):
    """A second ``freeze`` exits 3 at once and names the holder; the first is unaffected."""
    held = quiesce(run_dir, "freeze", "--hold", "--timeout", "20", str(fs["ext4"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    try:
        started = time.monotonic()
        second = quiesce(run_dir, "freeze", str(fs["xfs"].mount_point))
        assert second.returncode == Exit.LOCKED
        assert "in progress" in second.stderr and "quiesce status" in second.stderr
        assert time.monotonic() - started < 10
        assert json.loads(quiesce(run_dir, "status", "--json").stdout)["holder_alive"]
    finally:
        assert quiesce(run_dir, "thaw").returncode == Exit.OK


def test_hold_deadline_thaws_without_any_release(fs, run_dir):
    """With nobody releasing it, a held freeze is thawed at its --timeout and cleans up."""
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "0.5", str(fs["ext4"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    pid = json.loads(held.stdout)["pid"]
    writer = Writer(fs["ext4"])
    assert writer.finished_within(3), "not thawed after the deadline"
    writer.finish()
    deadline = time.monotonic() + 5
    while is_alive(pid, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not is_alive(pid, None)
    assert ledger_mod.read(run_dir) is None
    with open(os.path.join(run_dir, "last-report.json")) as f:
        report = json.load(f)
    assert report["guardian_reason"] == "deadline" and report["released_by"] == "deadline"


def _wait_gone(pid: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while is_alive(pid, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not is_alive(pid, None)


def _thawed_once_gone(pid: int, fs, why: str = "left frozen") -> None:
    """Once ``pid`` (a holder, a guardian) is gone, a write to ``fs``'s ext4 goes through."""
    _wait_gone(pid)
    writer = Writer(fs["ext4"])
    assert writer.finished_within(5), why
    writer.finish()


def test_thaw_after_the_guardian_ended_a_hold_exits_5_once(fs, run_dir):
    """``freeze --hold`` past its deadline: the next ``thaw`` says the guardian thawed first and exits 5.

    The snapshot script's ``quiesce thaw`` is how it learns its snapshot was
    taken after the thaw. ``status`` shows the hold's outcome; a second
    ``thaw`` has nothing more to say.
    """
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "0.5", str(fs["ext4"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    _wait_gone(json.loads(held.stdout)["pid"])
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["lock_held"] is False and status["lock_holder"] is None
    last = status["last_hold"]
    assert last["run_id"] == json.loads(held.stdout)["run_id"]
    # The guardian thaws at the deadline; a holder that wakes at the same moment may thaw first.
    assert last["released_by"] == "deadline" and not last["acknowledged"]
    assert "deadline" in quiesce(run_dir, "status").stdout

    thawed = quiesce(run_dir, "thaw", "--json")
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
    out = json.loads(thawed.stdout)
    assert "already ended before this release" in out["message"]
    assert out["report"]["released_by"] == "deadline"

    again = quiesce(run_dir, "thaw")
    assert again.returncode == Exit.OK and "nothing to thaw" in again.stdout
    assert json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]["acknowledged"]


def test_thaw_after_the_holder_was_killed_exits_5_once(fs, run_dir):
    """A ``freeze --hold`` whose holder is SIGKILLed: the guardian thaws; the next ``thaw`` says so (5)."""
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "20", str(fs["ext4"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    led = ledger_mod.read(run_dir)
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["last_hold"]["outcome"] == "holding"
    os.kill(led.pid, signal.SIGKILL)
    _wait_gone(led.guardian_pid)
    assert ledger_mod.read(run_dir) is None, "the guardian removes the ledger once it thawed"
    thawed = quiesce(run_dir, "thaw")
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
    assert "its holder was killed" in thawed.stdout
    assert quiesce(run_dir, "thaw").returncode == Exit.OK


def test_thaw_after_a_released_or_foreground_freeze_has_nothing_to_say(fs, run_dir):
    """A hold released by ``thaw``, or a foreground freeze (its caller saw it end): later thaws exit 0."""
    a = str(fs["xfs"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--timeout", "20", a)
    assert held.returncode == Exit.OK, held.stderr
    assert quiesce(run_dir, "thaw").returncode == Exit.OK
    assert quiesce(run_dir, "thaw").returncode == Exit.OK
    last = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]
    assert last["ok"] and last["released_by"] == "signal SIGUSR1"
    # A foreground freeze ended by its deadline told its own caller (exit 5).
    fg = quiesce(run_dir, "freeze", "--no-stdin", "--timeout", "0.3", a)
    assert fg.returncode == Exit.GUARDIAN_THAWED, fg.stdout + fg.stderr
    assert quiesce(run_dir, "thaw").returncode == Exit.OK


def test_status_names_the_lock_holder_only_while_it_holds(fs, run_dir):
    """``status --json``: ``lock_holder`` is the holder's pid while ``lock_held``, null after."""
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "20", str(fs["btrfs"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    try:
        status = json.loads(quiesce(run_dir, "status", "--json").stdout)
        assert status["lock_held"] and status["lock_holder"] == json.loads(held.stdout)["pid"]
    finally:
        assert quiesce(run_dir, "thaw").returncode == Exit.OK
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["lock_held"] is False and status["lock_holder"] is None


def test_thaw_recovers_from_a_ledger_when_holder_and_guardian_are_dead(fs, run_dir):
    """Both processes killed: ``thaw`` thaws exactly what the ledger lists and removes it."""
    a = str(fs["btrfs"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "30", a)
    assert held.returncode == Exit.OK, held.stderr
    led = ledger_mod.read(run_dir)
    os.kill(led.guardian_pid, signal.SIGKILL)
    time.sleep(0.1)
    os.kill(led.pid, signal.SIGKILL)
    time.sleep(0.2)
    writer = Writer(fs["btrfs"])
    assert not writer.finished_within(0.3), "something thawed although both processes were killed"
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    out = quiesce(run_dir, "thaw", "--json")
    assert not status["holder_alive"] and not status["guardian_alive"]
    assert status["last_hold"]["outcome"].startswith("its holder died while it held: still frozen")
    assert out.returncode == Exit.OK, out.stderr
    assert json.loads(out.stdout)["recovered"] == [
        {"mount_point": a, "dev": led.filesystems[0].dev, "outcome": "thawed"}
    ]
    assert writer.finished_within(5)
    writer.finish()
    assert ledger_mod.read(run_dir) is None
    # That recovery was the thaw: a later one does not claim the guardian thawed it.
    again = quiesce(run_dir, "thaw")
    assert again.returncode == Exit.OK and "nothing to thaw" in again.stdout


def test_thaw_force_thaws_a_named_mount(fs, run_dir):
    """``thaw --force MOUNT`` thaws a filesystem frozen by another tool; a second time it says so."""
    external_freeze(fs["xfs"])
    first = quiesce(run_dir, "thaw", "--json", "--force", str(fs["xfs"].mount_point))
    assert first.returncode == Exit.OK, first.stderr
    assert json.loads(first.stdout)["forced"][0]["outcome"] == "thawed"
    assert not is_frozen(fs["xfs"])
    again = json.loads(quiesce(run_dir, "thaw", "--json", "--force", str(fs["xfs"].mount_point)).stdout)
    assert again["forced"][0]["outcome"] == "not-frozen"


def test_thaw_force_through_a_link_another_user_planted_thaws_nothing(fs, run_dir):
    """``thaw --force`` through a link in a user's directory: refused; the other tool's freeze stands."""
    external_freeze(fs["xfs"])
    user = os.path.join(run_dir, "home")
    os.mkdir(user, 0o755)
    os.chown(user, 65534, 65534)
    link = os.path.join(user, "db")
    os.symlink(str(fs["xfs"].mount_point), link)  # as the user could point it at any mount
    try:
        r = quiesce(run_dir, "thaw", "--json", "--force", link)
        assert r.returncode == Exit.ERROR, r.stderr
        outcome = json.loads(r.stdout)["forced"][0]["outcome"]
        assert outcome.startswith("error: ") and "owned by uid 65534" in outcome
        assert is_frozen(fs["xfs"])
    finally:
        quiesce(run_dir, "thaw", "--force", str(fs["xfs"].mount_point))
    assert not is_frozen(fs["xfs"])


def test_targets_that_cannot_be_frozen_are_named(fs, run_dir, tmp_path):
    """A directory that is not a mount point, or a pseudo filesystem, is refused with exit 7."""
    not_mount = fs["ext4"].mount_point / "subdir"
    not_mount.mkdir(exist_ok=True)
    r = quiesce(run_dir, "freeze", str(not_mount))
    assert r.returncode == Exit.BAD_TARGET and "not a mount point" in r.stderr
    r = quiesce(run_dir, "freeze", "/dev/shm")
    assert r.returncode == Exit.BAD_TARGET and "pseudo" in r.stderr
    assert ledger_mod.read(run_dir) is None


def test_ebusy_exit_code_and_message(fs, run_dir):
    """A target frozen by someone else: exit 4, the message names it and says EBUSY."""
    external_freeze(fs["ext4"])
    try:
        r = quiesce(run_dir, "freeze", str(fs["ext4"].mount_point))
        assert r.returncode == Exit.FREEZE_FAILED
        assert "EBUSY" in r.stdout + r.stderr and str(fs["ext4"].mount_point) in r.stdout + r.stderr
    finally:
        assert is_frozen(fs["ext4"])


def test_mounts_lists_targets_in_stack_order(fs, run_dir):
    """``mounts --json`` puts the loop-stacked filesystem before the one holding its image."""
    outer, inner = str(fs["outer"].mount_point), str(fs["inner"].mount_point)
    r = quiesce(run_dir, "mounts", "--json", outer, inner)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert [t["mount_point"] for t in plan["targets"]] == [inner, outer]
    assert any(s["reason"] == "not-included" for s in plan["skipped"])


def test_hold_that_cannot_freeze_reports_the_error(fs, run_dir):
    """``freeze --hold`` on a filesystem another tool froze exits 4 with the EBUSY message."""
    external_freeze(fs["xfs"])
    try:
        r = quiesce(run_dir, "freeze", "--hold", str(fs["xfs"].mount_point))
        assert r.returncode == Exit.FREEZE_FAILED
        assert "EBUSY" in r.stderr and str(fs["xfs"].mount_point) in r.stderr
        assert ledger_mod.read(run_dir) is None
    finally:
        assert is_frozen(fs["xfs"])


def test_recover_removes_notify_dirs_of_dead_runs_only(run_dir):
    """``recover`` removes the notify directories a killed run left, never while a run holds run.lock."""
    from quiesce.engine.lock import FreezeLock

    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"notify-20250101T000000Z-{dead.pid}"
    stale = os.path.join(run_dir, name)
    os.mkdir(stale, 0o700)
    open(os.path.join(stale, "0"), "w").close()
    with FreezeLock(run_dir, name="run.lock", what="run"):
        kept = json.loads(quiesce(run_dir, "recover", "--json").stdout)
        assert kept["notify_dirs_removed"] == [] and os.path.isdir(stale)
    out = json.loads(quiesce(run_dir, "recover", "--json").stdout)
    assert out["notify_dirs_removed"] == [name]
    assert not os.path.exists(stale)


def test_recover_keeps_the_notify_dir_of_a_run_that_started_after_it_looked_at_the_lock(run_dir):
    """A notify directory whose run's process lives is never removed, run.lock held or not.

    A run that starts between ``recover``'s look at run.lock and its removal
    makes its directory meanwhile: before, recover removed it, and the run's
    session hooks could not say READY.
    """
    live = os.path.join(run_dir, f"notify-20250101T000000Z-{os.getpid()}.2")
    os.mkdir(live, 0o700)
    out = json.loads(quiesce(run_dir, "recover", "--json").stdout)
    assert out["notify_dirs_removed"] == [] and os.path.isdir(live)


def test_thaw_after_the_holder_was_stopped_by_a_signal_exits_5_once(fs, run_dir):
    """A ``freeze --hold`` whose holder got SIGTERM thawed before any ``quiesce thaw``: that thaw exits 5.

    The snapshot script's ``quiesce thaw`` is its only word on whether the
    window held until the release; a holder stopped by someone else's
    signal thawed first, so its snapshot is not trusted.
    """
    a = str(fs["ext4"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "20", a)
    assert held.returncode == Exit.OK, held.stderr
    pid = json.loads(held.stdout)["pid"]
    os.kill(pid, signal.SIGTERM)
    _thawed_once_gone(pid, fs, "the stopped holder left its target frozen")
    last = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]
    assert last["released_by"] == "signal SIGTERM" and not last["acknowledged"]
    thawed = quiesce(run_dir, "thaw", "--json")
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
    out = json.loads(thawed.stdout)
    assert "signal SIGTERM" in out["message"] and "not trusted" in out["message"]
    again = quiesce(run_dir, "thaw")
    assert again.returncode == Exit.OK and "nothing to thaw" in again.stdout


def test_thaw_of_a_hold_someone_else_thawed_exits_5(fs, run_dir):
    """``fsfreeze -u`` of a held target: the window ended early; the releasing ``thaw`` says so, exit 5."""
    a, b = str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "20", a, b)
    assert held.returncode == Exit.OK, held.stderr
    try:
        subprocess.run(["fsfreeze", "-u", b], check=True, timeout=10)
        thawed = quiesce(run_dir, "thaw", "--json")
    finally:
        if ledger_mod.read(run_dir) is not None:
            quiesce(run_dir, "thaw")
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
    out = json.loads(thawed.stdout)
    assert out["released"] == json.loads(held.stdout)["pid"]
    assert "thawed by someone else" in out["message"] and b in out["message"]
    states = {t["mount_point"]: t["state"] for t in out["report"]["targets"]}
    assert states == {a: "thawed", b: "thawed-externally"}
    last = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]
    assert last["outcome"].startswith("ended before its release") and last["acknowledged"]
    assert quiesce(run_dir, "thaw").returncode == Exit.OK


def test_status_after_a_run_shows_the_runs_freeze_not_an_earlier_one(setup, fs):
    """``status`` after ``quiesce run``: the last freeze is the run's (its window), not an earlier hold's."""
    run_dir = setup.run_dir
    held = quiesce(run_dir, "freeze", "--hold", "--timeout", "20", str(fs["btrfs"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    assert quiesce(run_dir, "thaw").returncode == Exit.OK
    setup.config()
    done = setup.cli("--json")
    assert done.returncode == Exit.OK, done.stderr
    result = json.loads(done.stdout)
    last = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]
    # One ID for the run and its freeze: what the run printed is what `status` names.
    assert last["run_id"] == result["freeze"]["run_id"] == result["run_id"] and last["mode"] == "run"
    assert last["ok"] and last["window_ns"] == result["freeze"]["window_ns"]
    assert last["outcome"] == "thawed by quiesce after the snapshot step"
    # The run's own result told its caller: a later `thaw` has nothing to add.
    again = quiesce(run_dir, "thaw")
    assert again.returncode == Exit.OK and "nothing to thaw" in again.stdout


def test_status_after_a_run_killed_while_frozen_says_so(setup, fs):
    """SIGKILL of ``quiesce run`` in its window: the guardian thaws; ``status`` says the run was killed."""
    setup.config(quiesce={"snapshot": {"mode": "hold"}})
    proc = setup.start_json_run()
    try:
        assert json.loads(proc.stdout.readline())["event"] == "frozen"
        led = ledger_mod.read(setup.run_dir)
        assert led is not None
        during = json.loads(quiesce(setup.run_dir, "status", "--json").stdout)["last_hold"]
        assert during["run_id"] == led.run_id and during["outcome"] == "holding"
        proc.kill()
    finally:
        proc.communicate(timeout=30)
    _thawed_once_gone(led.guardian_pid, fs)
    assert ledger_mod.read(setup.run_dir) is None
    last = json.loads(quiesce(setup.run_dir, "status", "--json").stdout)["last_hold"]
    assert last["run_id"] == led.run_id and not last["ok"]
    assert last["outcome"] == "ended without its holder's report (killed?)"
    # The hold's snapshotter asks `quiesce thaw`: never an all-clear, once.
    thawed = quiesce(setup.run_dir, "thaw")
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
    assert "killed" in thawed.stdout
    assert quiesce(setup.run_dir, "thaw").returncode == Exit.OK


def test_thaw_after_a_runs_hold_ran_out_exits_5_once(setup, fs):
    """A ``quiesce run`` hold past its deadline: the run fails (9), and the snapshotter's ``thaw`` exits 5."""
    setup.config(quiesce={"snapshot": {"mode": "hold"}, "freezeTimeoutSeconds": 0.5})
    proc = setup.start_json_run()
    try:
        assert json.loads(proc.stdout.readline())["event"] == "frozen"
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == Exit.BACKUP_FAILED, err
    result = json.loads(out)
    assert result["snapshot"] == "failed" and result["released_by"] == "deadline"
    assert result["error_name"] in ("FsFreezeTimeout", "SnapshotFailed")
    thawed = quiesce(setup.run_dir, "thaw", "--json")
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
    assert "not trusted" in json.loads(thawed.stdout)["message"]
    assert quiesce(setup.run_dir, "thaw").returncode == Exit.OK


HOLDER_WITHOUT_REPORT = """
import signal, sys, time
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.frozen import frozen

released = []
signal.signal(signal.SIGUSR1, lambda *_: released.append(1))
options = FreezeOptions(timeout_s=20, run_dir=sys.argv[2], release_on_sigusr1=True)
with frozen([sys.argv[1]], options, allow_expired=True):
    print("frozen", flush=True)
    while not released:
        time.sleep(0.01)
"""


def test_thaw_of_a_holder_that_left_no_report_is_no_all_clear(fs, run_dir):
    """A holder released by SIGUSR1 that saved no outcome (a full run directory): ``thaw`` exits 1.

    Nothing says its window held until the release, so ``thaw`` never says 0.
    """
    target = str(fs["xfs"].mount_point)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_WITHOUT_REPORT, target, run_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "frozen"
        thawed = quiesce(run_dir, "thaw", "--json")
    finally:
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never released: leave no holder behind
            raise
    assert thawed.returncode == Exit.ERROR, thawed.stdout + thawed.stderr
    out = json.loads(thawed.stdout)
    assert out["released"] == proc.pid and "unknown" in out["message"]
    assert proc.returncode == 0


def test_status_after_a_foreground_freeze_was_killed_says_so(fs, run_dir):
    """SIGKILL of a foreground ``quiesce freeze``: thawed by the guardian; ``status`` names it as killed."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "freeze", "--json", "--no-stdin", str(fs["ext4"].mount_point)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        event = json.loads(proc.stdout.readline())
        assert event["event"] == "frozen"
        led = ledger_mod.read(run_dir)
        assert led is not None and led.run_id == event["run_id"]
        proc.kill()
    finally:
        proc.communicate(timeout=30)
    _thawed_once_gone(led.guardian_pid, fs)
    last = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]
    assert last["run_id"] == event["run_id"] and not last["ok"]
    assert last["outcome"] == "ended without its holder's report (killed?)"
    # Its caller saw it die: a later `thaw` has nothing to add.
    assert quiesce(run_dir, "thaw").returncode == Exit.OK


def test_thaw_of_a_runs_hold_returns_once_thawed_not_after_the_post_steps(setup, fs):
    """``quiesce thaw`` releasing a run's hold returns (0) once thawed, while a slow post-script runs."""
    setup.config(post="sleep 6\n", quiesce={"snapshot": {"mode": "hold"}})
    proc = setup.start_json_run()
    try:
        assert json.loads(proc.stdout.readline())["event"] == "frozen"
        started = time.monotonic()
        thawed = quiesce(setup.run_dir, "thaw", "--json", "--wait", "3")
        took = time.monotonic() - started
        assert proc.poll() is None, "the run ended before its post-script did"
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert thawed.returncode == Exit.OK, thawed.stdout + thawed.stderr
    assert took < 3, f"thaw waited for the post steps ({took:.1f} s)"
    assert json.loads(thawed.stdout)["report"]["released_by"] == "signal SIGUSR1"
    assert proc.returncode == Exit.OK, err
    assert json.loads(out)["released_by"] == "signal SIGUSR1"


# `quiesce freeze` with a signal arriving while it prepares (as during a long pre-flush):
# the signal is sent by the prepare step itself, so it lands there every time.
STOPPED_WHILE_PREPARING = """
import os, signal, sys
from quiesce.cli import main
from quiesce.engine.freeze import Freeze

prepare = Freeze.prepare
signum = getattr(signal, sys.argv[1])

def prepare_then_signalled(self):
    prepare(self)
    os.kill(os.getpid(), signum)

Freeze.prepare = prepare_then_signalled
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
@pytest.mark.parametrize("hold", [False, True])
def test_freeze_stopped_while_preparing_freezes_nothing(fs, run_dir, sig, hold):
    """A stop or release during the pre-flush: no FIFREEZE at all, exit 1, and it says why."""
    target = str(fs["ext4"].mount_point)
    args = ["freeze", "--json", "--no-stdin", "--timeout", "20", "--run-dir", run_dir, target]
    if hold:
        args.insert(1, "--hold")
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_PREPARING, sig, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == Exit.ERROR, done.stdout + done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert not any(e.get("event") == "frozen" for e in events), done.stdout
    if hold:
        assert "nothing was frozen" in done.stdout + done.stderr
    else:
        (report,) = events
        assert report["released_by"] == f"signal {sig} before the freeze"
        assert "nothing was frozen" in report["error"]
        assert all(t["freeze_at_ns"] is None for t in report["targets"]), report["targets"]
    last = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]
    assert not last["ok"] and last["window_ns"] is None
    assert ledger_mod.read(run_dir) is None
