"""The API's arguments checked before anything is opened or frozen: a clear exception for a bad one."""

from __future__ import annotations

import math
import os
import signal
import threading
from fractions import Fraction

import pytest

import quiesce
from quiesce.engine.mountinfo import Mount
from quiesce.runner.signals import Handlers


def target(mount_point: str, dev: str) -> quiesce.Target:
    """A planned Target for a made-up mount (nothing is opened: the checks come first)."""
    major, minor = (int(x) for x in dev.split(":"))
    mount = Mount(
        mount_id=len(mount_point),
        parent_id=1,
        major=major,
        minor=minor,
        root="/",
        mount_point=mount_point,
        mount_options=("rw",),
        optional_fields=(),
        fstype="ext4",
        source="/dev/x",
        super_options=("rw",),
    )
    return quiesce.Target(mount, None, None)


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, -1, 0, 0.0, 3600.5, 1e12, 1e300])
@pytest.mark.parametrize("field", ["timeout_s", "step_timeout_s"])
def test_a_timeout_out_of_range_is_a_value_error(field, seconds):
    """NaN, infinities, zero, negatives, past an hour: ValueError, never an OverflowError later."""
    with pytest.raises(ValueError, match="positive number of seconds"):
        quiesce.FreezeOptions(**{field: seconds})


def test_the_range_is_named():
    """The error names the hour the command line and the config allow too."""
    with pytest.raises(ValueError, match="at most 3600"):
        quiesce.FreezeOptions(timeout_s=1e12)


@pytest.mark.parametrize("seconds", [True, False, "10", b"10", None, [10]])
def test_a_timeout_that_is_no_number_is_a_type_error(seconds):
    """A bool, a string or None is not a number of seconds (``True`` is not one second)."""
    with pytest.raises(TypeError, match="number of seconds"):
        quiesce.FreezeOptions(timeout_s=seconds)
    if seconds is not None:  # None is step_timeout_s's "the default"
        with pytest.raises(TypeError, match="number of seconds"):
            quiesce.FreezeOptions(step_timeout_s=seconds)


@pytest.mark.parametrize("seconds", [1e-3, 1, 10.5, 3600, Fraction(1, 2)])
def test_timeouts_in_range_are_taken(seconds):
    """Any real number above 0 and at most an hour: ints, floats, fractions."""
    opts = quiesce.FreezeOptions(timeout_s=seconds, step_timeout_s=seconds)
    assert opts.timeout_ns == max(1, round(seconds * 1e9))


def test_frozen_timeout_is_checked_the_same_way():
    """``frozen(..., timeout=)`` goes through the same checks, before anything is planned."""
    with pytest.raises(ValueError):
        with quiesce.frozen(["/nonexistent"], timeout=math.nan):
            pytest.fail("ran")
    with pytest.raises(TypeError):
        with quiesce.frozen(["/nonexistent"], timeout="5"):  # type: ignore[arg-type]
            pytest.fail("ran")


@pytest.mark.parametrize("one", ["/data", b"/data", pytest.param(None, id="path-object")])
def test_frozen_refuses_one_path_instead_of_a_list(one, tmp_path):
    """A single path (which would be read character by character) is a TypeError saying to pass a list."""
    value = tmp_path if one is None else one
    with pytest.raises(TypeError, match="not one path"):
        with quiesce.frozen(value):  # type: ignore[arg-type]
            pytest.fail("ran")


@pytest.mark.parametrize("bad", [None, 5, [None], [5], [{"mount": "/data"}]])
def test_frozen_refuses_what_is_not_a_list_of_targets(bad):
    """None, a number, or a list holding something that names no mount: TypeError, nothing planned."""
    with pytest.raises(TypeError, match="target"):
        with quiesce.frozen(bad):
            pytest.fail("ran")


def test_a_freeze_takes_planned_targets_only():
    """A path, a list of paths, or an empty list: a clear error before anything is opened."""
    with pytest.raises(TypeError, match="not one path"):
        quiesce.Freeze("/data")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"quiesce\.plan"):
        quiesce.Freeze(["/data"])  # type: ignore[list-item]
    with pytest.raises(quiesce.TargetError, match="nothing to freeze"):
        quiesce.Freeze([])
    with pytest.raises(quiesce.TargetError, match="nothing to freeze"):
        quiesce.Freeze(t for t in ())
    with pytest.raises(TypeError, match="FreezeOptions"):
        quiesce.Freeze([target("/data", "8:1")], {"timeout_s": 5})  # type: ignore[arg-type]


def test_a_freeze_refuses_one_filesystem_twice():
    """Two Targets on one device (a bind mount, a second subvolume): TargetError naming both."""
    with pytest.raises(quiesce.TargetError, match="twice") as info:
        quiesce.Freeze([target("/data", "8:1"), target("/srv/data", "8:1")])
    assert "/data" in str(info.value) and "/srv/data" in str(info.value)


def test_a_freeze_reads_an_iterator_of_targets_once():
    """A generator of Targets is read whole, once: every target is in the freeze."""
    ts = [target("/a", "8:1"), target("/b", "8:2")]
    f = quiesce.Freeze(t for t in ts)
    assert {t.mount.mount_point for t in f.targets} == {"/a", "/b"}
    f.close()


def test_steps_of_a_freeze_never_prepared():
    """freeze() and cycle() before prepare() raise RuntimeError; thaw() and close() do nothing."""
    f = quiesce.Freeze([target("/a", "8:1")])
    for step in (f.freeze, f.cycle):
        with pytest.raises(RuntimeError, match=r"prepare\(\)"):
            step()
    f.thaw()
    f.close()
    f.close()
    with pytest.raises(RuntimeError, match="closed"):
        f.prepare()


def test_signal_handlers_outside_the_main_thread_leak_nothing():
    """Handlers from another thread: a RuntimeError saying why; no fd, handler or wake-up fd changed."""
    before = sorted(os.listdir("/proc/self/fd"))
    handler = signal.getsignal(signal.SIGUSR1)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            Handlers((signal.SIGUSR1,), lambda signum, frame: None, wakeup=True)
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=install)
    t.start()
    t.join()
    [err] = errors
    assert isinstance(err, RuntimeError) and "main thread" in str(err)
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert signal.getsignal(signal.SIGUSR1) is handler


@pytest.mark.parametrize("one", ["/tmp", b"/tmp", pytest.param(None, id="path-object")])
def test_plan_refuses_one_path_instead_of_a_list(one, tmp_path):
    """``quiesce.plan("/tmp")`` used to plan "/", "t", "m", "p": the root filesystem among its targets."""
    value = tmp_path if one is None else one
    with pytest.raises(TypeError, match="not one path"):
        quiesce.plan(value, vmbackup_conf=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["exclude", "exclude_fstypes", "extra_fstypes", "loop_backing_fstypes"])
def test_plan_refuses_one_string_for_a_list_option(key):
    """A list option given one string would be read character by character: TypeError instead."""
    with pytest.raises(TypeError, match=key):
        quiesce.plan(["/proc"], vmbackup_conf=None, **{key: "/proc"})


def test_plan_takes_paths_of_every_kind_and_iterators():
    """Path objects, bytes and a generator name the same mount as a str."""
    import pathlib

    def skipped_proc(plan: quiesce.Plan) -> list[str]:
        return [s.mount.mount_point for s in plan.skipped if s.mount.mount_point == "/proc"]

    for given in ([pathlib.Path("/proc")], [b"/proc"], (p for p in ["/proc"])):
        plan = quiesce.plan(given, vmbackup_conf=None)
        assert plan.targets == () and skipped_proc(plan) == ["/proc"]
        assert plan.named == (("/proc", "/proc"),)


def test_run_refuses_a_snapshot_that_cannot_be_called():
    """A snapshot step that is no callable (a command line, say) is a TypeError before the config is read.

    It used to be found only inside the frozen window, as a failed snapshot.
    """
    with pytest.raises(TypeError, match="snapshot"):
        quiesce.run("/nonexistent/config.json", snapshot="/usr/bin/take-snapshot")  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{}, {"run_dir": "/run/x"}, "/run/x"])
def test_run_refuses_options_that_are_no_run_options(options):
    """A dict or a string for ``options`` is a TypeError (an empty dict was quietly the defaults)."""
    with pytest.raises(TypeError, match="RunOptions"):
        quiesce.run("/nonexistent/config.json", options=options)


def test_run_takes_a_config_path_of_every_kind(tmp_path):
    """A path object or bytes names the config file like a str; a number is a TypeError."""
    import pathlib

    missing = tmp_path / "VMSnapshotScriptPluginConfig.json"
    for config in (missing, str(missing), os.fsencode(missing), pathlib.PurePosixPath(missing)):
        with pytest.raises(quiesce.ConfigError, match="does not exist"):
            quiesce.run(config)  # type: ignore[arg-type]
        with pytest.raises(quiesce.ConfigError, match="does not exist"):
            quiesce.load_config(config)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        quiesce.run(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["preflush", "expedite_rcu", "parallel"])
@pytest.mark.parametrize("value", ["false", 0, None])
def test_freeze_option_switches_are_booleans(key, value):
    """``parallel="false"`` used to read as true: a switch that is no bool is a TypeError naming it."""
    with pytest.raises(TypeError, match=key):
        quiesce.FreezeOptions(**{key: value})


@pytest.mark.parametrize("options", [quiesce.FreezeOptions, quiesce.RunOptions])
def test_a_run_dir_may_be_a_path_object_or_bytes(options, tmp_path):
    """``run_dir`` as a path object or bytes is kept as its str; a number is a TypeError."""
    assert options(run_dir=tmp_path).run_dir == str(tmp_path)
    assert options(run_dir=os.fsencode(tmp_path)).run_dir == str(tmp_path)
    with pytest.raises(TypeError, match="run_dir"):
        options(run_dir=5)


@pytest.mark.parametrize("key", ["handle_signals", "hold_stdin"])
def test_run_option_switches_are_booleans(key):
    """``handle_signals="no"`` used to read as true (and install handlers): TypeError instead."""
    with pytest.raises(TypeError, match=key):
        quiesce.RunOptions(**{key: "no"})


@pytest.mark.parametrize("key", ["progress", "on_frozen", "on_hold", "before_freeze", "on_config"])
def test_run_option_callbacks_are_callables(key):
    """A callback that cannot be called is a TypeError when the options are made, not inside the window."""
    with pytest.raises(TypeError, match=key):
        quiesce.RunOptions(**{key: "print"})
