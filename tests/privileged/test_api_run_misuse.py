"""``quiesce.run()`` and ``quiesce.frozen()`` embedded in a long-running process, with odd snapshot steps.

The result never claims more than happened, nothing stays frozen, and the
embedding process's own state (fds, signal handlers, wake-up fd, umask,
working directory, environment, threads, stdout) is as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import quiesce
from tests.privileged.conftest import Writer, is_frozen

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def process_state() -> dict[str, Any]:
    """What an embedded call must leave as it found it."""
    umask = os.umask(0o022)
    os.umask(umask)
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    return {
        "fds": sorted(os.listdir("/proc/self/fd")),
        "handlers": {
            s: signal.getsignal(s) for s in signal.valid_signals() if signal.getsignal(s) is not None
        },
        "wakeup": wakeup,
        "umask": umask,
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "threads": sorted(t.ident or 0 for t in threading.enumerate()),
        # Native threads too (the parallel freeze's pool), which threading does not list.
        "tasks": sorted(os.listdir("/proc/self/task")),
        "stdout": (sys.stdout, sys.stderr, sys.stdin),
    }


def tasks_back_to(expected: list[str], wait_s: float = 2.0) -> list[str]:
    """This process's tasks, once none but ``expected`` are left or ``wait_s`` passed.

    A joined thread can stay listed for a moment while the kernel finishes it.
    """
    end = time.monotonic() + wait_s
    while not set(tasks := sorted(os.listdir("/proc/self/task"))) <= set(expected) and time.monotonic() < end:
        time.sleep(0.01)
    return tasks


def assert_left_as_found(before: dict[str, Any], after: dict[str, Any]) -> None:
    """``after`` is ``before``, except that threads an earlier test left may have ended meanwhile.

    Only a thread or task that was not there before is one this call left behind.
    """
    after = dict(after, tasks=tasks_back_to(before["tasks"]))
    for key in ("threads", "tasks"):
        assert set(after.pop(key)) <= set(before[key]), key
    assert after == {k: v for k, v in before.items() if k not in ("threads", "tasks")}


def run(setup, snapshot=None, **options):
    """``quiesce.run`` on the setup's config, with ``options`` replaced."""
    return quiesce.run(
        setup.config_path, snapshot=snapshot, options=dataclasses.replace(setup.options(), **options)
    )


def test_an_embedded_run_and_frozen_leave_the_process_as_they_found_it(setup, fs, capfd):
    """run(), a failing run(), frozen(): no fd, handler, umask, cwd, environment or thread changed.

    Nothing is written to the process's stdout or stderr either (the scripts' output is in the result).
    """
    setup.config(pre="echo pre-out; echo pre-err >&2\n", post="echo post-out\n")
    capfd.readouterr()
    before = process_state()
    assert run(setup, lambda: None).consistency == quiesce.APPLICATION
    assert run(setup, lambda: 1 / 0).consistency == quiesce.FAILED
    with quiesce.frozen(setup.targets, quiesce.FreezeOptions(run_dir=setup.run_dir), timeout=5) as w:
        pass
    assert w.report.ok
    assert_left_as_found(before, process_state())
    assert capfd.readouterr() == ("", "")


def test_a_hold_from_the_main_thread_puts_every_handler_back(setup, fs):
    """The hold step's handlers and wake-up fd last only while it waits; a deadline is no snapshot."""
    setup.config(quiesce={"snapshot": {"mode": "hold"}, "freezeTimeoutSeconds": 1})
    before = process_state()
    result = run(setup, None, hold_stdin=False)
    assert result.consistency == quiesce.FAILED and result.released_by == "deadline"
    assert [t.state for t in result.freeze.targets] == ["thawed-by-guardian"] * 2
    assert_left_as_found(before, process_state())


def test_a_snapshot_step_that_raises_fails_the_run_and_thaws(setup, fs):
    """The step's exception is the run's error (SnapshotFailed); the post-script runs; nothing frozen."""
    setup.config()

    def snapshot() -> None:
        raise OSError(5, "snapshot API down")

    result = run(setup, snapshot)
    assert result.consistency == quiesce.FAILED and result.snapshot == "failed"
    assert result.error_name == "SnapshotFailed" and "snapshot API down" in (result.message or "")
    assert [t.state for t in result.freeze.targets] == ["thawed", "thawed"]
    assert [e.split()[0] for e in setup.events()] == ["pre.sh", "post.sh"]


def test_a_keyboard_interrupt_in_the_snapshot_step_comes_out_after_the_post_steps(setup, fs):
    """KeyboardInterrupt from the step: thawed, the post-script ran, then it propagates unchanged."""
    setup.config()

    def snapshot() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(setup, snapshot)
    assert [e.split()[0] for e in setup.events()] == ["pre.sh", "post.sh"]
    assert not is_frozen(fs["ext4"]) and not is_frozen(fs["xfs"])


def test_a_snapshot_step_past_the_deadline_is_never_a_held_window(setup, fs):
    """A step outliving the guardian's 1 s: the guardian thawed, the window is cut short, not consistent."""
    setup.config(quiesce={"freezeTimeoutSeconds": 1})
    result = run(setup, lambda: time.sleep(1.5))
    assert result.consistency == quiesce.CRASH and not result.snapshot_frozen
    assert result.error_name == "FsFreezeTimeout"
    assert result.freeze.guardian_reason == "deadline"
    assert [t.state for t in result.freeze.targets] == ["thawed-by-guardian"] * 2
    assert [p.status for p in result.phases if p.name == "freeze-window"] == ["cut-short"]


def test_a_snapshot_step_blocked_on_a_frozen_target_is_released_by_the_guardian(setup, fs):
    """The step writes to a target it froze: it sleeps until the guardian thaws; the run ends cut short."""
    setup.config(quiesce={"freezeTimeoutSeconds": 1}, continueBackupOnFailure=False)
    path = fs["ext4"].mount_point / "written-inside"

    def snapshot() -> None:
        with open(path, "w") as f:
            f.write("x")
            os.fsync(f.fileno())

    result = run(setup, snapshot)
    assert path.read_text() == "x"
    assert result.consistency == quiesce.FAILED and result.freeze.guardian_reason == "deadline"


def test_a_snapshot_step_that_thaws_itself_ends_the_window_there(setup, fs):
    """Freeze.thaw() from inside the step (as the guest agent's release does): the window ends at it."""
    setup.config()
    box: list[quiesce.Freeze] = []
    thawed_at: list[int] = []

    def snapshot() -> None:
        box[0].thaw()
        thawed_at.append(time.monotonic_ns())
        time.sleep(0.3)

    result = run(setup, snapshot, on_frozen=box.append)
    report = result.freeze
    assert result.consistency == quiesce.APPLICATION
    assert [t.state for t in report.targets] == ["thawed", "thawed"]
    assert report.window_start_ns is not None and report.window_ns is not None
    assert report.window_start_ns + report.window_ns <= thawed_at[0]


def test_a_snapshot_step_that_freezes_again_fails_and_leaves_nothing_frozen(setup, fs):
    """Freeze.freeze() again from inside the step: refused (RuntimeError), the step failed, all thawed."""
    setup.config()
    box: list[quiesce.Freeze] = []

    def snapshot() -> None:
        box[0].freeze()

    result = run(setup, snapshot, on_frozen=box.append)
    assert result.consistency == quiesce.FAILED and result.error_name == "SnapshotFailed"
    assert "once" in (result.message or "")
    assert [t.state for t in result.freeze.targets] == ["thawed", "thawed"]
    assert not is_frozen(fs["ext4"]) and not is_frozen(fs["xfs"])


def test_a_run_with_a_callable_from_another_thread(setup, fs):
    """A callable snapshot needs no main thread: the run is application-consistent."""
    setup.config()
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(run(setup, lambda: None).consistency))
    t.start()
    t.join(50)
    assert out == [quiesce.APPLICATION]


@pytest.mark.parametrize("how", ["hold", "handle_signals"])
def test_what_needs_the_main_thread_is_refused_elsewhere_before_anything_runs(setup, fs, how):
    """A hold step or handle_signals from another thread: RuntimeError before any script; no fd leaked."""
    if how == "hold":
        setup.config(quiesce={"snapshot": {"mode": "hold"}, "freezeTimeoutSeconds": 1})
        opts: dict[str, Any] = {"hold_stdin": False}
    else:
        setup.config()
        opts = {"handle_signals": True}
    before = process_state()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            run(setup, None if how == "hold" else (lambda: None), **opts)
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=body)
    t.start()
    t.join(50)
    [err] = errors
    assert isinstance(err, RuntimeError) and "main thread" in str(err)
    assert setup.events() == []
    assert_left_as_found(before, process_state())  # the test's own thread, joined


def test_two_embedded_runs_at_once_in_one_process(setup, fs):
    """A run whose step starts another run in the same run directory: that one is refused, the first holds."""
    setup.config()
    inner: list[BaseException] = []
    writers: list[tuple[Writer, bool]] = []

    def snapshot() -> None:
        try:
            run(setup, lambda: None)
        except quiesce.LockHeldError as err:
            inner.append(err)
        w = Writer(fs["ext4"])
        writers.append((w, w.finished_within(0.2)))

    result = run(setup, snapshot)
    [err] = inner
    assert "this process" in str(err)
    [(w, finished_while_frozen)] = writers
    assert not finished_while_frozen
    assert w.finish() == 0
    assert result.consistency == quiesce.APPLICATION


def test_a_snapshot_step_that_closes_the_freeze_still_leaves_its_outcome(setup, fs):
    """Freeze.close() from inside the step ends the window there; `quiesce status` still reads how it ended.

    The run's outcome was saved only by the run's own close, which then
    found the freeze closed: status read "ended without its holder's
    report (killed?)" for a run that was alive and fine.
    """
    setup.config()
    box: list[quiesce.Freeze] = []
    result = run(setup, lambda: box[0].close(), on_frozen=box.append)
    assert result.consistency == quiesce.APPLICATION
    assert [t.state for t in result.freeze.targets] == ["thawed", "thawed"]
    status = subprocess.run(
        [sys.executable, "-m", "quiesce", "status", "--json", "--run-dir", setup.run_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    last = json.loads(status.stdout)["last_hold"]
    assert last["run_id"] == result.freeze.run_id
    assert last["ok"] is True and "killed" not in str(last.get("outcome"))
