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
from quiesce.engine.fdwait import wait_readable
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


@pytest.fixture
def small_run_dir(private_namespace, base):
    """A run directory on its own 64 KiB tmpfs (mode 700), and a function that fills it to one free page."""
    mount = base / "tmpfs"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs", str(mount)], check=True)

    def fill_but_one_page() -> None:
        fd = os.open(mount / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            pass  # full
        finally:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - 4096))
            os.close(fd)

    try:
        yield str(mount / "run"), fill_but_one_page
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_hold_whose_run_dir_has_no_room_to_record_it_freezes_nothing(fs, small_run_dir):
    """Room for the ledger but not for the "holding" mark: ``freeze --hold`` freezes nothing, exit 1.

    Before, the hold went on with the earlier hold's report as the last one:
    with its holder killed, ``status`` showed that earlier hold, released
    and thawed, and ``quiesce thaw`` exited 0 with nothing to say, where a
    killed holder is exit 5.
    """
    run_dir, fill_but_one_page = small_run_dir
    a = str(fs["ext4"].mount_point)
    assert quiesce(run_dir, "freeze", "--hold", "--timeout", "30", a).returncode == Exit.OK
    assert quiesce(run_dir, "thaw").returncode == Exit.OK
    earlier = json.loads(quiesce(run_dir, "status", "--json").stdout)["last_hold"]["run_id"]
    fill_but_one_page()

    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "30", a)
    led = ledger_mod.read(run_dir)
    if held.returncode == Exit.OK and led is not None:
        os.kill(led.pid, signal.SIGKILL)  # the old code's hold: its holder killed, as the OOM killer would
        deadline = time.monotonic() + 5
        while ledger_mod.read(run_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert held.returncode == Exit.ERROR, held.stdout + held.stderr
    failed = json.loads(held.stdout)
    assert failed["event"] == "failed" and "No space left" in failed["error"]
    assert "nothing was frozen" in failed["error"]
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "frozen although the hold could not be recorded"
    w.finish()
    assert led is None
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["last_hold"] is None or status["last_hold"]["run_id"] != earlier
    assert quiesce(run_dir, "thaw").returncode == Exit.OK

    # A foreground freeze's caller sees its end itself: it goes on, and no earlier freeze is shown as its.
    fill_but_one_page()
    fg = quiesce(run_dir, "freeze", "--json", "--timeout", "30", a)
    assert fg.returncode == Exit.OK, fg.stdout + fg.stderr
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    shown = None if status["last_hold"] is None else status["last_hold"]["run_id"]
    assert shown in (None, json.loads(fg.stdout.splitlines()[-1])["run_id"])


def test_a_runs_hold_with_no_room_to_record_it_freezes_nothing(setup, fs, private_namespace):
    """``quiesce run``'s hold step with no room for the "holding" mark: announced as not frozen, never held.

    Its snapshotter may ask ``quiesce thaw`` how the hold ended, and that
    thaw would find nothing; before, the run froze anyway.
    """
    os.makedirs(setup.run_dir, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs", setup.run_dir], check=True)
    try:
        setup.config()
        first = setup.cli("--json")  # makes the run directory's files (lock, last report) as a run does
        assert first.returncode == Exit.OK, first.stdout + first.stderr
        setup.config(quiesce={"snapshot": {"mode": "hold"}, "freezeTimeoutSeconds": 0.5})
        fd = os.open(os.path.join(setup.run_dir, "ballast"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            os.ftruncate(fd, os.fstat(fd).st_size - 4096)  # one page: the ledger's, not the mark's
        finally:
            os.close(fd)
        done = subprocess.run(
            setup.run_argv("--json", "--no-stdin"),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        event, result = (json.loads(line) for line in done.stdout.splitlines())
        assert event["event"] == "frozen" and event["is_frozen"] is False, event
        assert (
            "cannot record the freeze" in event["reason"]
            and "No space left" in event["reason"]
            and set(event["not_frozen"]) == set(setup.targets)
        )
        assert done.returncode == Exit.BACKUP_FAILED and result["snapshot"] == "failed", done.stderr
        assert ledger_mod.read(setup.run_dir) is None
    finally:
        subprocess.run(["umount", setup.run_dir], check=True)


@pytest.mark.parametrize("content", [b"", b"{garbage", b"{" * ((1 << 20) + 1)])
def test_thaw_force_with_a_ledger_it_cannot_use_still_says_what_it_thawed(fs, run_dir, content):
    """``thaw --force MOUNT`` thaws MOUNT; a damaged ledger after it is an error, never the only answer.

    Before, the ledger's error replaced the whole answer: one JSON error
    object (exit 1) and not a word of the mount the command had thawed.
    """
    with open(os.path.join(run_dir, ledger_mod.LEDGER_NAME), "wb") as f:
        f.write(content)
    os.chmod(os.path.join(run_dir, ledger_mod.LEDGER_NAME), 0o600)
    b = str(fs["btrfs"].mount_point)
    for extra in (("--json",), ()):
        subprocess.run(["fsfreeze", "-f", b], check=True)
        done = quiesce(run_dir, "thaw", "--force", b, *extra)
        assert done.returncode == Exit.ERROR, done.stdout + done.stderr
        if extra:
            out = json.loads(done.stdout)
            assert out["forced"] == [{"mount_point": b, "outcome": "thawed"}]
            assert out["error_type"] == "LedgerError" and out["exit"] == Exit.ERROR
            assert out["error_name"] is None and out["error_code"] is None
        else:
            assert f"{b}: thawed" in done.stdout and "ledger" in done.stderr
        w = Writer(fs["btrfs"])
        assert w.finished_within(5)
        w.finish()


def _signal_until_it_ends(proc: subprocess.Popen[str], signum: int) -> None:
    """Send ``signum`` to ``proc`` every half millisecond until it exits (it is not reaped here)."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        while not wait_readable(pidfd, 0.0005):
            signal.pidfd_send_signal(pidfd, signum)
    finally:
        os.close(pidfd)


def test_a_late_thaw_signal_never_kills_a_freeze_that_ended_its_hold(fs, run_dir):
    """SIGUSR1 after a foreground freeze's release (a slow ``quiesce thaw``'s): it still reports, exit 0.

    ``quiesce thaw`` proves the holder, then signals it; slowed between the
    two, its SIGUSR1 can land once the hold is over. Before, it killed the
    command (exit -10), often before its report was written.
    """
    a = str(fs["xfs"].mount_point)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "freeze", "--json", "--timeout", "30", a, "--run-dir", run_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert json.loads(proc.stdout.readline())["event"] == "frozen"
    proc.stdin.close()  # the release: EOF
    proc.stdin = None
    _signal_until_it_ends(proc, signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == Exit.OK, err
    report = json.loads(out)
    assert (
        report["event"] == "thawed" and report["ok"] and report["released_by"] in ("stdin", "signal SIGUSR1")
    )


def test_a_late_thaw_signal_never_kills_a_run_after_its_window(setup, fs):
    """SIGUSR1 from the post-script on (a slow ``quiesce thaw``'s): the run ends with its result, exit 0."""
    setup.config()
    proc = setup.start_json_run()
    deadline = time.monotonic() + 30
    while not any(e.startswith("post.sh") for e in setup.events()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.001)
    _signal_until_it_ends(proc, signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == Exit.OK, err
    assert json.loads(out)["consistency"] == "application-consistent"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def test_hold_json_when_its_holder_is_killed_before_it_reports_is_one_error_object(fs, run_dir):
    """``freeze --hold --json`` whose holder is SIGKILLed before it reports: one JSON error object, exit 1.

    Before, stdout stayed empty (a line on stderr only), against "with
    ``--json`` every outcome prints one JSON object".
    """
    a = str(fs["ext4"].mount_point)
    argv = [
        sys.executable,
        "-m",
        "quiesce",
        "freeze",
        "--hold",
        "--json",
        "--timeout",
        "30",
        a,
        "--run-dir",
        run_dir,
    ]
    for _attempt in range(5):
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while not (kids := _children(proc.pid)) and proc.poll() is None:
            pass
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        if '"frozen"' not in out:
            break
        quiesce(run_dir, "thaw")  # the holder was quicker than the kill: try again
    assert proc.returncode == Exit.ERROR, out + err
    answer = json.loads(out)
    assert answer["error_type"] == "HolderDied" and answer["exit"] == Exit.ERROR
    assert "killed by SIGKILL" in answer["error"] and "nothing is held" in answer["error"]
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()


@pytest.mark.parametrize("hold", [True, False])
def test_freeze_json_failure_carries_every_error_field(fs, run_dir, hold):
    """``freeze --json`` (``--hold`` or not) that cannot freeze: every error field, and ``exit``."""
    b = str(fs["btrfs"].mount_point)
    subprocess.run(["fsfreeze", "-f", b], check=True)
    try:
        done = quiesce(run_dir, "freeze", *(["--hold"] if hold else []), "--json", "--timeout", "30", b)
    finally:
        subprocess.run(["fsfreeze", "-u", b], check=True)
    assert done.returncode == Exit.FREEZE_FAILED, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["event"] == ("failed" if hold else "thawed") and answer["exit"] == Exit.FREEZE_FAILED
    assert answer["error_type"] == "FrozenByOtherError" and answer["error_code"] == 121
    assert "EBUSY" in answer["error"] and "error_name" in answer


def test_a_dead_freezes_ledger_naming_a_mount_point_that_is_gone_is_recovered(fs, run_dir, base):
    """The dead freeze's mount point unmounted and removed since: ``thaw`` says mount-changed, and is done.

    Before, the missing path was a FITHAW error: exit 6 on every ``thaw``
    and ``recover``, and the ledger stayed for good, so every later freeze
    was refused.
    """
    home, moved = str(fs["xfs"].mount_point), base / "moved"
    moved.mkdir()
    subprocess.run(["mount", "--move", home, str(moved)], check=True)
    try:
        held = quiesce(run_dir, "freeze", "--hold", "--timeout", "30", str(moved))
        assert held.returncode == Exit.OK, held.stderr
        _kill_guardian_then_holder(run_dir)
        subprocess.run(["fsfreeze", "-u", str(moved)], check=True)
    finally:
        subprocess.run(["mount", "--move", str(moved), home], check=True)
    moved.rmdir()
    thawed = quiesce(run_dir, "thaw", "--json")
    assert thawed.returncode == Exit.OK, thawed.stdout + thawed.stderr
    assert [r["outcome"] for r in json.loads(thawed.stdout)["recovered"]] == ["mount-changed"]
    assert ledger_mod.read(run_dir) is None
    again = quiesce(run_dir, "freeze", "--hold", "--timeout", "30", home)
    assert again.returncode == Exit.OK, again.stderr
    assert quiesce(run_dir, "thaw").returncode == Exit.OK


def _holds_pidfd_of(pid: int, target: int) -> bool:
    """True when process ``pid`` has a pidfd of ``target`` open (``quiesce thaw`` waiting for it)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                if f"Pid:\t{target}\n" in f.read():
                    return True
        except OSError:
            continue
    return False


def test_thaw_waiting_for_a_killed_holders_guardian_says_the_hold_ended(fs, run_dir):
    """``thaw`` finds a killed holder's ledger, then its guardian thaws: exit 5, as once it is gone.

    Before, this thaw (the snapshot script's) said "the guardian of the dead
    freeze already thawed it", exit 0: only a second thaw said 5.
    """
    held = quiesce(run_dir, "freeze", "--hold", "--timeout", "30", str(fs["ext4"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    led = ledger_mod.read(run_dir)
    os.kill(led.guardian_pid, signal.SIGSTOP)  # it thaws once the thaw below waits for it
    try:
        os.kill(led.pid, signal.SIGKILL)
        thaw = subprocess.Popen(
            [sys.executable, "-m", "quiesce", "thaw", "--json", "--wait", "20", "--run-dir", run_dir],
            stdout=subprocess.PIPE,
            text=True,
        )
        while not _holds_pidfd_of(thaw.pid, led.guardian_pid):
            assert thaw.poll() is None, thaw.communicate()
    finally:
        os.kill(led.guardian_pid, signal.SIGCONT)
    out, _ = thaw.communicate(timeout=30)
    assert thaw.returncode == Exit.GUARDIAN_THAWED, out
    assert "its holder was killed" in json.loads(out)["message"]
    assert quiesce(run_dir, "thaw").returncode == Exit.OK  # said once


@pytest.mark.parametrize("content", [b"", b"{garbage", b"{" * ((1 << 20) + 1)])
def test_status_with_a_ledger_it_cannot_use_never_says_no_freeze_is_in_progress(run_dir, content):
    """An empty, garbage or too large ledger: ``status`` names the error, never "no freeze in progress"."""
    path = os.path.join(run_dir, ledger_mod.LEDGER_NAME)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, 0o600)
    text = quiesce(run_dir, "status")
    assert text.returncode == Exit.OK, text.stderr
    assert "no freeze in progress" not in text.stdout and "unknown" in text.stdout
    status = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert status["ledger"] is None and ledger_mod.LEDGER_NAME in status["ledger_error"]


def test_status_sees_a_lock_held_in_a_run_dir_on_a_btrfs_subvolume(fs, base):
    """A run directory on a btrfs subvolume (``st_dev`` not the superblock's): its lock is seen held."""
    sub = fs["btrfs"].mount_point / f"runsub-{os.getpid()}"
    subprocess.run(["btrfs", "subvolume", "create", str(sub)], check=True, capture_output=True)
    run_dir = base / "run"
    run_dir.mkdir(mode=0o700)
    subprocess.run(["mount", "--bind", str(sub), str(run_dir)], check=True)
    try:
        os.chmod(run_dir, 0o700)
        code = (
            "import sys; from quiesce.engine.lock import FreezeLock as L; L(sys.argv[1]); print(1); input()"
        )
        holder = subprocess.Popen(
            [sys.executable, "-u", "-c", code, str(run_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline() == "1\n"
            status = json.loads(quiesce(str(run_dir), "status", "--json").stdout)
            assert status["lock_held"] and status["lock_holder"] == holder.pid, status
        finally:
            holder.communicate("\n")
        assert json.loads(quiesce(str(run_dir), "status", "--json").stdout)["lock_held"] is False
    finally:
        subprocess.run(["umount", str(run_dir)], check=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(sub)], check=True, capture_output=True)


@pytest.mark.parametrize("content", [b"-5\n", b"99999999999\n", b"dead", b"", b"7" * 100000])
def test_a_lock_file_holding_garbage_names_no_holder(fs, run_dir, content):
    """A held lock whose file says garbage, a dead pid or nothing: ``status`` and the refusal name no pid."""
    if content == b"dead":
        gone = subprocess.Popen(["true"])
        gone.wait()
        content = f"{gone.pid}\n".encode()
    path = os.path.join(run_dir, "lock")
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, 0o600)
    code = "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), 2); print(1); input()"
    holder = subprocess.Popen(
        [sys.executable, "-u", "-c", code, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "1\n"
        status = json.loads(quiesce(run_dir, "status", "--json").stdout)
        assert status["lock_held"] is True and status["lock_holder"] is None, status
        refused = quiesce(run_dir, "freeze", "--json", "--timeout", "30", str(fs["ext4"].mount_point))
        assert refused.returncode == Exit.LOCKED, refused.stdout + refused.stderr
        assert "another process holds" in json.loads(refused.stdout)["error"]
    finally:
        holder.communicate("\n")


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a write to its write end blocks until someone reads."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for chunk in (b"x" * 4096, b"x"):
        try:
            while True:
                os.write(w, chunk)
        except BlockingIOError:
            pass
    os.set_blocking(w, True)
    return r, w


def test_a_hold_whose_command_dies_before_it_says_frozen_ends_at_once(fs, run_dir):
    """``freeze --hold`` killed while its "frozen" line is stuck on a full stdout: the hold ends now.

    Nobody heard "frozen", so nobody would release it. Before, the holder
    stayed frozen to the guardian's deadline (30 s here), stalling every
    writer; now it ends the hold when its command's pipe closes unheard, and
    the `quiesce thaw` that comes later says the window ended before it.
    """
    xfs = fs["xfs"]
    r, w = _full_pipe()
    argv = [sys.executable, "-m", "quiesce", "freeze", "--hold", "--timeout", "30", str(xfs.mount_point)]
    proc = subprocess.Popen([*argv, "--run-dir", run_dir], stdin=subprocess.DEVNULL, stdout=w)
    os.close(w)
    writer = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # frozen, and the command blocked writing "frozen"
            with open(f"/proc/{proc.pid}/wchan") as f:
                if f.read().endswith("pipe_write"):  # anon_pipe_write on newer kernels
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the command never blocked on its stdout")
        writer = Writer(xfs)
        assert not writer.finished_within(0.3), "not frozen"
        proc.kill()
        proc.wait()
        assert writer.finished_within(5), "still frozen after its command died unheard"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(r)
        thawed = quiesce(run_dir, "thaw")
        if writer is not None:
            writer.finish()
    assert thawed.returncode == Exit.GUARDIAN_THAWED, thawed.stdout + thawed.stderr
