"""The API misused as an embedding tool might: steps out of order, reuse, two at once, left unclosed.

Every case ends with nothing frozen (the ``fs`` fixture fails a test that
leaves a filesystem frozen) and a clear exception, never a hang.
"""

from __future__ import annotations

import gc
import os
import threading
import warnings

import pytest

import quiesce
from tests.privileged.conftest import Writer, is_frozen, targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def options(run_dir: str, timeout_s: float = 5) -> quiesce.FreezeOptions:
    """A short guardian deadline in the test's own run directory."""
    return quiesce.FreezeOptions(timeout_s=timeout_s, run_dir=run_dir)


@pytest.mark.parametrize("second", ["freeze", "cycle"])
@pytest.mark.parametrize("first", ["freeze", "cycle"])
def test_a_freeze_freezes_once(fs, run_dir, first, second):
    """A second freeze() or cycle() on one Freeze is refused before any FIFREEZE; close thaws all."""
    f = quiesce.Freeze(targets(fs["ext4"], fs["xfs"]), options(run_dir))
    with f:
        f.prepare()
        getattr(f, first)()
        with pytest.raises(RuntimeError, match="once"):
            getattr(f, second)()
    assert [t.state for t in f.report.targets] == ["thawed", "thawed"]
    assert f.report.ok
    assert not is_frozen(fs["ext4"]) and not is_frozen(fs["xfs"])


def test_a_second_freeze_refused_leaves_the_first_window_held(fs, run_dir):
    """The refused freeze() changes nothing: the filesystem stays frozen by the first until the thaw."""
    f = quiesce.Freeze(targets(fs["ext4"]), options(run_dir))
    with f:
        f.prepare()
        f.freeze()
        with pytest.raises(RuntimeError):
            f.freeze()
        w = Writer(fs["ext4"])
        assert not w.finished_within(0.2)
        f.thaw()
        assert w.finished_within(5)
        w.finish()
    assert f.report.ok and f.report.guardian_reason is None


def test_freeze_after_thaw_is_refused(fs, run_dir):
    """A Freeze is one window: freeze() after its thaw is refused; its report is the first window's."""
    f = quiesce.Freeze(targets(fs["btrfs"]), options(run_dir))
    with f:
        f.prepare()
        f.freeze()
        f.thaw()
        with pytest.raises(RuntimeError, match="once"):
            f.freeze()
    assert f.report.ok


def test_freeze_without_prepare_is_refused(fs, run_dir):
    """freeze() before prepare(): RuntimeError naming prepare(); nothing frozen."""
    with quiesce.Freeze(targets(fs["ext4"]), options(run_dir)) as f:
        with pytest.raises(RuntimeError, match=r"prepare\(\)"):
            f.freeze()


def test_prepare_twice_is_refused_and_the_freeze_still_works(fs, run_dir):
    """A second prepare() is refused (not a lock held by itself); the first one's freeze goes on."""
    before = sorted(os.listdir("/proc/self/fd"))
    with quiesce.Freeze(targets(fs["ext4"]), options(run_dir)) as f:
        f.prepare()
        with pytest.raises(RuntimeError, match="once"):
            f.prepare()
        f.freeze()
    assert f.report.ok
    assert sorted(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("step", ["prepare", "freeze", "cycle"])
def test_steps_after_close_are_refused_and_hold_nothing(fs, run_dir, step):
    """After close(): prepare(), freeze() and cycle() raise, take no lock and open nothing."""
    before = sorted(os.listdir("/proc/self/fd"))
    f = quiesce.Freeze(targets(fs["ext4"]), options(run_dir))
    f.prepare()
    f.close()
    with pytest.raises(RuntimeError, match="closed"):
        getattr(f, step)()
    assert sorted(os.listdir("/proc/self/fd")) == before
    with quiesce.frozen(targets(fs["ext4"]), options(run_dir)) as again:  # the lock is free
        pass
    assert again.report.ok


def test_thaw_is_harmless_when_nothing_is_held(fs, run_dir):
    """thaw() before prepare(), before freeze(), twice, or after close() does nothing and raises nothing."""
    f = quiesce.Freeze(targets(fs["xfs"]), options(run_dir))
    f.thaw()
    with f:
        f.prepare()
        f.thaw()
        f.freeze()
        f.thaw()
        f.thaw()
    f.thaw()
    assert [t.state for t in f.report.targets] == ["thawed"]
    assert f.report.ok


def test_a_freeze_dropped_while_frozen_thaws_and_frees_its_lock(fs, run_dir):
    """A Freeze garbage-collected without close(): a ResourceWarning, then thawed, its lock and fds freed.

    Long before its guardian's 30 s deadline: the drop itself thawed.
    """
    before = sorted(os.listdir("/proc/self/fd"))
    f = quiesce.Freeze(targets(fs["ext4"]), options(run_dir, timeout_s=30))
    f.prepare()
    f.freeze()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del f
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert not is_frozen(fs["ext4"])
    assert sorted(os.listdir("/proc/self/fd")) == before
    with quiesce.frozen(targets(fs["ext4"]), options(run_dir)) as again:
        pass
    assert again.report.ok


def test_a_close_interrupted_by_an_exception_still_releases_everything(fs, run_dir):
    """A KeyboardInterrupt raised inside close() (here by its report callback) comes out after the cleanup.

    Thawed, no fd left open, the ledger gone and the lock free: the next
    freeze in the same run directory works.
    """
    from quiesce.engine import ledger as ledger_mod

    before = sorted(os.listdir("/proc/self/fd"))
    f = quiesce.Freeze(targets(fs["ext4"]), options(run_dir, timeout_s=30))
    f.prepare()
    f.freeze()

    def interrupted(report: quiesce.FreezeReport) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        f.close(on_report=interrupted)
    assert not is_frozen(fs["ext4"])
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert ledger_mod.read(run_dir) is None
    with quiesce.frozen(targets(fs["ext4"]), options(run_dir)) as again:
        pass
    assert again.report.ok


def test_two_freezes_of_one_target_in_one_process(fs, run_dir, root_run_dir):
    """The same run directory: LockHeldError naming this process; another one: EBUSY. The first holds."""
    with quiesce.frozen(targets(fs["ext4"]), options(run_dir)) as first:
        with pytest.raises(quiesce.LockHeldError, match="this process"):
            with quiesce.frozen(targets(fs["ext4"]), options(run_dir)):
                pytest.fail("ran")
        with pytest.raises(quiesce.FrozenByOtherError):
            with quiesce.frozen(targets(fs["ext4"]), options(root_run_dir)):
                pytest.fail("ran")
        w = Writer(fs["ext4"])
        assert not w.finished_within(0.2)
    assert w.finished_within(5)
    w.finish()
    assert first.report.ok


def test_two_threads_freezing_one_target_at_once(fs, run_dir):
    """Two threads enter frozen() on the same target together: one freezes, the other is refused."""
    barrier = threading.Barrier(2)
    inside = threading.Event()
    outcomes: list[object] = []

    def worker() -> None:
        barrier.wait()
        try:
            with quiesce.frozen(targets(fs["xfs"]), options(run_dir, timeout_s=30)) as w:
                inside.wait(20)
            outcomes.append(w.report.ok)
        except quiesce.QuiesceError as err:
            inside.set()
            outcomes.append(type(err))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, outcomes)) == sorted(map(str, [True, quiesce.LockHeldError]))


def test_keyboard_interrupt_in_the_block_thaws_and_propagates(fs, run_dir):
    """A KeyboardInterrupt inside the block comes out as itself, after the thaw; the report names it."""
    window = None
    with pytest.raises(KeyboardInterrupt):
        with quiesce.frozen(targets(fs["ext4"]), options(run_dir)) as window:
            raise KeyboardInterrupt
    assert window is not None
    assert [t.state for t in window.report.targets] == ["thawed"]
    assert window.report.error_type == "KeyboardInterrupt"


def test_a_generator_abandoned_inside_the_block_thaws(fs, run_dir):
    """A generator suspended inside frozen() and then dropped thaws at once (GeneratorExit)."""

    def snapshots():
        with quiesce.frozen(targets(fs["xfs"]), options(run_dir, timeout_s=30)) as w:
            yield w

    gen = snapshots()
    window = next(gen)
    del gen
    assert not is_frozen(fs["xfs"])
    assert [t.state for t in window.report.targets] == ["thawed"]


def test_frozen_from_another_thread(fs, run_dir):
    """frozen() needs no main thread: it installs no signal handler."""
    out: list[object] = []

    def body() -> None:
        with quiesce.frozen(targets(fs["ext4"]), options(run_dir)) as w:
            pass
        out.append(w.report.ok)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert out == [True]


def test_a_forked_child_cannot_end_its_parents_window(fs, run_dir):
    """A child forked inside the block (a fork without exec) that thaws or closes the Freeze changes nothing.

    thaw() there is a RuntimeError; close(), and leaving the block, only drop
    the child's copies: the parent's filesystems stay frozen, its guardian
    armed, and its report is its own.
    """
    with quiesce.frozen(targets(fs["ext4"]), options(run_dir, timeout_s=30)) as window:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 0
            try:
                window.thaw()
                code = 1
            except RuntimeError:
                pass
            try:
                window.close()
                del window
                gc.collect()
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w = Writer(fs["ext4"])
        assert not w.finished_within(0.2)
    assert w.finished_within(5)
    w.finish()
    assert window.report.ok and window.report.guardian_reason is None


def test_close_from_another_thread_waits_for_a_freeze_under_way(fs, run_dir):
    """close() while another thread's FIFREEZE blocks (wrong stacking order): it waits, then cleans up.

    The freeze ends as the guardian resolves it (FreezeTimeoutError) or, if
    close() came first, is refused (RuntimeError); either way the session
    is never freed under a running freeze and nothing stays frozen.
    """
    wrong = targets(fs["outer"], fs["inner"])
    opts = quiesce.FreezeOptions(
        timeout_s=10, step_timeout_s=0.5, preflush=False, run_dir=run_dir, parallel=False
    )
    f = quiesce.Freeze(wrong, opts)
    f.prepare()
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def freezer() -> None:
        started.set()
        try:
            f.freeze()
            outcome.append(None)
        except (quiesce.FreezeTimeoutError, RuntimeError) as err:
            outcome.append(err)

    t = threading.Thread(target=freezer)
    t.start()
    started.wait(5)
    f.close()
    t.join(30)
    [err] = outcome
    assert isinstance(err, (quiesce.FreezeTimeoutError, RuntimeError))
    assert [t.state for t in f.report.targets] in (
        ["thawed-by-guardian", "thawed"],
        ["not-attempted", "not-attempted"],
    )
    for name in ("inner", "outer"):
        w = Writer(fs[name])
        assert w.finished_within(5), f"{name} left frozen"
        w.finish()
