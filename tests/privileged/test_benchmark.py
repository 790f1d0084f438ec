"""``quiesce bench`` on real loop filesystems: samples, summaries, dirty load, probe, refusals, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.bench import command as bench_command
from quiesce.bench import runner as bench_runner
from quiesce.bench.helpers import FILE_PREFIX
from quiesce.bench.runner import DEFAULT_IDLE_S, BenchOptions, run_bench
from quiesce.cli import main
from quiesce.cli.exits import Exit
from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.lock import FreezeLock, is_held
from quiesce.engine.rcu import RCU_EXPEDITED
from tests.privileged.conftest import Writer, targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

_HELPER_MARK = "from quiesce.bench.helpers import helper_main"


def bench_argv(*args):
    """``python -m quiesce bench ARGS``."""
    return [sys.executable, "-m", "quiesce", "bench", *args]


def bench(run_dir, *args, timeout=100):
    """Run the bench with a private run directory and no terminal on stdin."""
    return subprocess.run(
        bench_argv(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ, QUIESCE_RUN_DIR=run_dir),
        timeout=timeout,
    )


def bench_json(run_dir, *args):
    """Run ``bench --json`` and parse its one document."""
    done = bench(run_dir, "--json", *args)
    assert done.stdout.count("\n") == 1, (done.stdout, done.stderr)
    return done, json.loads(done.stdout)


def leftover_files(*filesystems):
    """Files the bench may have made, still on the given filesystems."""
    return [
        f"{f.mount_point}/{name}"
        for f in filesystems
        for name in os.listdir(f.mount_point)
        if name.startswith(FILE_PREFIX)
    ]


def helpers_alive(*filesystems):
    """Pids of bench helper processes working on the given filesystems."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(_HELPER_MARK in a for a in argv) and any(
            a.startswith(str(fs.mount_point)) for a in argv for fs in filesystems
        ):
            found.append(int(pid))
    return found


def assert_summary_of(summary, values):
    """A summary is consistent with its sample: count, extremes, order, every figure measured."""
    assert summary["n"] == len(values)
    assert summary["min_ns"] == min(values) and summary["max_ns"] == max(values)
    figures = [summary[k] for k in ("min_ns", "median_ns", "p90_ns", "p99_ns", "max_ns")]
    assert figures == sorted(figures)
    assert all(v in values for v in figures)


def assert_clean(run_dir, *filesystems):
    """Nothing left: no ledger, lock free, no helper, no file, every filesystem writable."""
    assert ledger_mod.read(run_dir) is None
    assert not is_held(run_dir)
    assert helpers_alive(*filesystems) == []
    assert leftover_files(*filesystems) == []
    for f in filesystems:
        w = Writer(f, name="after-bench")
        assert w.finished_within(5), f"{f} is not writable after the bench"
        assert w.finish() == 0
        w.path.unlink()


@pytest.fixture
def rcu_original():
    """rcu_expedited's value before the test (None without the knob); always put back after it."""
    if not os.path.exists(RCU_EXPEDITED):
        yield None
        return
    with open(RCU_EXPEDITED) as f:
        original = f.read()
    yield original
    with open(RCU_EXPEDITED, "w") as f:
        f.write(original)


def rcu_value():
    """rcu_expedited now."""
    with open(RCU_EXPEDITED) as f:
        return f.read()


def test_json_five_reps_on_ext4_and_xfs(fs, run_dir):
    """``bench --json -n 5``: five samples, windows > 0, every filesystem thawed, summaries match."""
    a, b = fs["ext4"], fs["xfs"]
    # 3 MiB dirty on each of two targets before each repetition: past the pre-flush threshold, so
    # every repetition pre-flushes and has the pre-flush stamps checked below.
    done, doc = bench_json(
        run_dir, "-n", "5", "--idle", "0.05", "--dirty", "3", str(a.mount_point), str(b.mount_point)
    )
    assert done.returncode == Exit.OK, done.stderr
    assert doc["exit"] == 0 and doc["error"] is None and doc["interrupted_by"] is None
    assert doc["requested"] == doc["completed"] == 5
    samples = doc["samples"]
    assert [s["rep"] for s in samples] == [1, 2, 3, 4, 5]
    assert {t["mount_point"] for t in doc["targets"]} == {str(a.mount_point), str(b.mount_point)}
    for s in samples:
        assert s["window_ns"] > 0
        assert [f["state"] for f in s["filesystems"]] == ["thawed", "thawed"]
        assert all(f["freeze_ns"] > 0 and f["thaw_ns"] > 0 for f in s["filesystems"])
        # The stamps a timeline is drawn from: the pre-flush before the window, the thaw after the freeze.
        for f in s["filesystems"]:
            assert f["preflush_at_ns"] < 0 <= f["freeze_at_ns"] < f["thaw_at_ns"] < s["window_ns"]
            assert f["preflush_at_ns"] + f["preflush_ns"] <= 0
        assert s["window_ns"] >= max(f["freeze_ns"] for f in s["filesystems"])
        # Written dirty first, so pre-flushed (quiesce.engine.preflush's threshold is machine-wide).
        assert s["dirty_write_ns"] > 0 and s["preflush_ns"] > 0
        assert s["cycle_start_ns"] < s["cycle_end_ns"]
    summary = doc["summary"]
    assert_summary_of(summary["window"], [s["window_ns"] for s in samples])
    assert_summary_of(summary["preflush"], [s["preflush_ns"] for s in samples])
    assert_summary_of(summary["dirty_write"], [s["dirty_write_ns"] for s in samples])
    for i, t in enumerate(doc["targets"]):
        per = summary["filesystems"][t["mount_point"]]
        assert_summary_of(per["freeze"], [s["filesystems"][i]["freeze_ns"] for s in samples])
        assert_summary_of(per["thaw"], [s["filesystems"][i]["thaw_ns"] for s in samples])
    assert sum(b["count"] for b in doc["window_histogram"]) == 5
    assert doc["percentile_method"] == "nearest-rank" and doc["probes"] == []
    assert_clean(run_dir, a, b)


def test_text_output_has_table_and_histogram(fs, run_dir):
    """Without --json: a table in human units and a window histogram; no progress bar off a terminal."""
    done = bench(run_dir, "-n", "3", "--warm", "--no-preflush", str(fs["btrfs"].mount_point))
    assert done.returncode == Exit.OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bench: 3 of 3 freezes") and "no pre-flush" in lines[0]
    header = next(line for line in lines if line.split()[:2] == ["n", "min"])
    assert header.split() == ["n", "min", "median", "p90", "p99", "max"]
    window = next(line for line in lines if line.startswith("window "))
    assert window.split()[1] == "3" and any(u in window for u in (" us", " ms"))
    assert not any(line.startswith("pre-flush") for line in lines)
    hist = lines[lines.index("window histogram:") + 1 :]
    assert sum(int(line.split()[-1]) for line in hist if "|" in line) == 3
    assert "\r" not in done.stderr and "\033" not in done.stderr


def test_dirty_20_mib_leaves_no_file_behind(fs, run_dir):
    """``--dirty 20`` writes before every repetition, pre-flushes it, and deletes its files at the end."""
    x = fs["xfs"]
    before = os.statvfs(x.mount_point)
    done, doc = bench_json(run_dir, "-n", "3", "--warm", "--dirty", "20", str(x.mount_point))
    assert done.returncode == Exit.OK, done.stderr
    assert doc["completed"] == 3 and doc["options"]["dirty_mib"] == 20
    for s in doc["samples"]:
        assert s["dirty_write_ns"] > 0
        assert s["filesystems"][0]["state"] == "thawed"
    assert_summary_of(doc["summary"]["dirty_write"], [s["dirty_write_ns"] for s in doc["samples"]])
    assert doc["warnings"] == []
    assert_clean(run_dir, x)
    after = os.statvfs(x.mount_point)
    assert abs(after.f_bavail - before.f_bavail) * after.f_frsize < 4 << 20, "the dirty data was not deleted"


def test_dirty_refused_when_a_target_lacks_twice_the_space(fs, run_dir):
    """``--dirty`` needs 2x free on each target: the small ext4 is refused (exit 7) before any freeze."""
    e = fs["ext4"]
    free_mib = os.statvfs(e.mount_point).f_bavail * os.statvfs(e.mount_point).f_frsize >> 20
    assert free_mib < 40, "the sandbox ext4 grew: pick a larger --dirty"
    done, doc = bench_json(
        run_dir, "-n", "2", "--dirty", "20", str(fs["xfs"].mount_point), str(e.mount_point)
    )
    assert done.returncode == Exit.BAD_TARGET
    assert (
        doc["error_type"] == "TargetError"
        and "MiB free" in doc["error"]
        and str(e.mount_point) in doc["error"]
    )
    assert os.listdir(run_dir) == [], "a freeze was started although the bench was refused"
    assert leftover_files(e, fs["xfs"]) == []


def test_probe_stall_is_at_least_the_shortest_window(fs, run_dir, rcu_original):
    """``--probe``: each probe reports its writes; the longest stall covers a window; nothing is left.

    A cold FIFREEZE spends most of a cycle's window in an RCU grace period
    during which writes still go through, so a writer's stall is then shorter
    than the window it met (measured here: 26.5 ms against 40 ms). With
    expedited RCU nearly the whole window blocks writers, and the stall
    (blocked part, wake-up, the write's own flush) exceeds the shortest window.
    Without the knob only the rest is checked.
    """
    a, b = fs["ext4"], fs["xfs"]
    expedite = ["--expedite-rcu"] if rcu_original is not None else []
    done, doc = bench_json(run_dir, "-n", "5", "--probe", *expedite, str(a.mount_point), str(b.mount_point))
    if expedite:
        assert rcu_value() == rcu_original, "the bench did not restore rcu_expedited"
    assert done.returncode == Exit.OK, done.stderr
    probes = doc["probes"]
    assert {p["mount_point"] for p in probes} == {str(a.mount_point), str(b.mount_point)}
    for p in probes:
        assert p["error"] is None and p["iterations"] > 0
        assert p["stall"]["n"] == p["iterations"] and p["stall"]["max_ns"] == p["longest"][0]["duration_ns"]
        durations = [s["duration_ns"] for s in p["longest"]]
        assert durations == sorted(durations, reverse=True)
    if expedite:
        assert all(s["rcu_expedited"] for s in doc["samples"])
        shortest_window = min(s["window_ns"] for s in doc["samples"])
        longest_stall = max(p["stall"]["max_ns"] for p in probes)
        assert longest_stall >= shortest_window
    for stall in (s for p in probes for s in p["longest"]):
        assert stall["rep"] in {None, 1, 2, 3, 4, 5}
    assert_clean(run_dir, a, b)


def test_no_target_is_a_usage_error(run_dir):
    """Without targets and without --all: exit 2, saying why; nothing is started."""
    done = bench(run_dir)
    assert done.returncode == Exit.USAGE
    assert "no target" in done.stderr and "--all" in done.stderr
    assert os.listdir(run_dir) == []


def test_all_without_yes_and_without_a_terminal_is_refused(fs, run_dir, monkeypatch, capsys):
    """``--all`` with no --yes and no terminal is refused (exit 2) before planning; nothing is frozen.

    Run in-process with the freeze and the planner replaced by tripwires, so a
    regression fails the test instead of freezing this machine's filesystems.
    """

    def tripwire(*args, **kwargs):
        raise AssertionError("bench --all went on without a confirmation")

    monkeypatch.setattr(bench_runner, "Freeze", tripwire)
    monkeypatch.setattr(bench_command, "make_plan", tripwire)
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))  # not a terminal, even if it says yes
    code = main(["bench", "--all", "--json", "--run-dir", run_dir])
    assert code == Exit.USAGE
    out, err = capsys.readouterr()
    assert "--yes" in err and "not a terminal" in err
    assert json.loads(out)["exit"] == Exit.USAGE
    assert os.listdir(run_dir) == []


def test_non_mount_point_target_exits_7(fs, run_dir):
    """A directory that is not a mount point is a bad target (exit 7); nothing is frozen."""
    sub = fs["ext4"].mount_point / "not-a-mount"
    sub.mkdir(exist_ok=True)
    try:
        done, doc = bench_json(run_dir, "-n", "2", str(fs["xfs"].mount_point), str(sub))
    finally:
        sub.rmdir()
    assert done.returncode == Exit.BAD_TARGET
    assert doc["error_type"] == "TargetError" and "not a mount point" in doc["error"]
    assert os.listdir(run_dir) == []


def test_lock_held_exits_3(fs, run_dir):
    """Another freeze holding the lock: exit 3 and the error names the lock; nothing is frozen."""
    with FreezeLock(run_dir):
        done, doc = bench_json(run_dir, "-n", "3", "--probe", str(fs["ext4"].mount_point))
    assert done.returncode == Exit.LOCKED
    assert doc["exit"] == Exit.LOCKED and doc["error_type"] == "LockHeldError"
    assert doc["completed"] == 0
    assert_clean(run_dir, fs["ext4"])


@pytest.mark.parametrize(
    ("signum", "code", "load"),
    [(signal.SIGINT, 130, ()), (signal.SIGTERM, 143, ("--dirty", "4"))],
    ids=["ctrl-c", "sigterm-with-dirty"],
)
def test_signal_thaws_prints_partial_results_and_exits_128_plus_signal(fs, run_dir, signum, code, load):
    """SIGINT/SIGTERM to the process group mid-bench: thawed, partial results printed, helpers cleaned up."""
    a, b = fs["ext4"], fs["xfs"]
    argv = bench_argv(
        "--json",
        "-n",
        "100000",
        "--idle",
        "0.01",
        "--probe",
        *load,
        str(a.mount_point),
        str(b.mount_point),
    )
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 30
        while not os.path.exists(os.path.join(run_dir, "guardian.log")):
            assert time.monotonic() < end, "the bench never started freezing"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.5)
        os.killpg(proc.pid, signum)  # a Ctrl-C on its terminal, or a service stop
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    doc = json.loads(out)
    assert doc["interrupted_by"] == signal.Signals(signum).name and doc["exit"] == code
    assert doc["error"] is None and doc["warnings"] == []
    assert 1 <= doc["completed"] < 100000
    assert all(f["state"] == "thawed" for s in doc["samples"] for f in s["filesystems"])
    assert doc["summary"]["window"]["n"] == doc["completed"]
    assert [p["error"] for p in doc["probes"]] == [None, None], "the probes did not survive the signal"
    assert all(p["iterations"] > 0 for p in doc["probes"])
    assert_clean(run_dir, a, b)


def test_run_bench_api_with_progress_and_stop(fs, run_dir):
    """``run_bench``: the progress callback sees each repetition; ``stop`` ends it after the current one."""
    seen = []
    freeze = FreezeOptions(timeout_s=20, run_dir=run_dir)
    options = BenchOptions(targets=tuple(targets(fs["xfs"], fs["btrfs"])), reps=50, idle_s=0, freeze=freeze)
    result = run_bench(
        options, progress=lambda done, s: seen.append((done, s.window_ns)), stop=lambda: len(seen) >= 2
    )
    assert [done for done, _ in seen] == [1, 2]
    assert [s.window_ns for s in result.samples] == [w for _, w in seen]
    assert result.error is None and result.requested == 50
    data = json.loads(json.dumps(result.to_dict()))
    assert data["completed"] == 2 and data["options"]["run_dir"] == run_dir
    assert data["options"] == {
        "reps": 50,
        "mode": "warm",
        "idle_s": 0,
        "dirty_mib": 0,
        "probe": False,
        "preflush": True,
        "timeout_s": 20,
        "run_dir": run_dir,
        "expedite_rcu": True,
        "parallel": True,
    }
    assert_clean(run_dir, fs["xfs"], fs["btrfs"])


class _Terminal(io.StringIO):
    """Text input that says it is a terminal."""

    def isatty(self):
        """Always a terminal."""
        return True


def test_all_on_a_terminal_shows_the_plan_and_no_freezes_nothing(fs, run_dir, monkeypatch, capsys):
    """``--all`` on a terminal lists every filesystem; any answer but yes freezes nothing."""

    def tripwire(*args, **kwargs):
        raise AssertionError("bench --all froze without a yes")

    monkeypatch.setattr(bench_runner, "Freeze", tripwire)
    monkeypatch.setattr(sys, "stdin", _Terminal("no\n"))
    code = main(["bench", "--all", "-n", "3", "--run-dir", run_dir])
    assert code == Exit.ERROR
    err = capsys.readouterr().err
    assert "freeze order" in err and str(fs["ext4"].mount_point) in err
    assert "Type yes" in err and "not confirmed: nothing was frozen" in err
    assert os.listdir(run_dir) == []


def test_progress_bar_on_a_terminal(fs, run_dir):
    """With stderr on a terminal a progress bar is drawn in place, then erased before the results."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            bench_argv("-n", "3", "--warm", str(fs["xfs"].mount_point)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            env=dict(os.environ, QUIESCE_RUN_DIR=run_dir),
        )
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=60)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == Exit.OK
    text = drawn.decode()
    assert "] 0/3" in text and "] 3/3  last window" in text
    assert text.endswith("\r\033[K"), "the bar was not erased"
    assert out.startswith("bench: 3 of 3 freezes") and "\r" not in out


def test_expedite_rcu_is_passed_to_every_freeze_and_restored(fs, run_dir, rcu_original):
    """``--expedite-rcu``: every repetition ran expedited, and the system-wide knob is put back."""
    if rcu_original is None:
        pytest.skip("this kernel has no /sys/kernel/rcu_expedited")
    done, doc = bench_json(run_dir, "-n", "3", "--warm", "--expedite-rcu", str(fs["ext4"].mount_point))
    assert rcu_value() == rcu_original, "rcu_expedited was not restored"
    assert done.returncode == Exit.OK, done.stderr
    assert doc["options"]["expedite_rcu"] is True
    assert [s["rcu_expedited"] for s in doc["samples"]] == [True] * 3
    assert_clean(run_dir, fs["ext4"])


def test_cold_default_idles_before_every_repetition(fs, run_dir):
    """No option: cold, the default idle before each freeze (the first too), and the outputs say so."""
    x = fs["xfs"]
    done, doc = bench_json(run_dir, "-n", "3", str(x.mount_point))
    assert done.returncode == Exit.OK, done.stderr
    assert (doc["options"]["mode"], doc["options"]["idle_s"]) == ("cold", DEFAULT_IDLE_S)
    starts = [s["cycle_start_ns"] for s in doc["samples"]]
    ends = [s["cycle_end_ns"] for s in doc["samples"]]
    # From the bench's start to the first freeze, and from each thaw to the next freeze.
    gaps = [starts[0]] + [b - a for a, b in zip(ends, starts[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= DEFAULT_IDLE_S * 1e9, gaps
    text = bench(run_dir, "-n", "1", "--idle", "0.3", str(x.mount_point))
    assert text.returncode == Exit.OK, text.stderr
    assert "; cold (0.3 s idle before each), pre-flush" in text.stdout.splitlines()[0]
    assert_clean(run_dir, x)


def test_warm_runs_back_to_back_and_says_so(fs, run_dir):
    """``--warm``: no idle; the JSON and the text name the mode."""
    x = fs["ext4"]
    done, doc = bench_json(run_dir, "-n", "2", "--warm", str(x.mount_point))
    assert done.returncode == Exit.OK, done.stderr
    assert (doc["options"]["mode"], doc["options"]["idle_s"]) == ("warm", 0)
    text = bench(run_dir, "-n", "1", "--warm", str(x.mount_point))
    assert "; warm (back to back), pre-flush" in text.stdout.splitlines()[0]
    assert_clean(run_dir, x)


@pytest.fixture
def plot_dir() -> Iterator[Path]:
    """A directory only root can change (the plot is written there as root)."""
    d = Path(tempfile.mkdtemp(prefix="quiesce-test-plot-", dir="/run"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_plot_draws_the_run(fs, run_dir, plot_dir):
    """``--plot F.svg``: the window and each filesystem's FIFREEZE/FITHAW, and the median rep's timeline."""
    pytest.importorskip("matplotlib")
    a, b = fs["ext4"], fs["btrfs"]
    path = plot_dir / "bench.svg"
    # A link planted at the name is replaced, never followed: root's file stays as it was.
    victim = plot_dir / "victim"
    victim.write_text("root's\n")
    os.symlink(victim, path)
    done, doc = bench_json(
        run_dir,
        "-n",
        "3",
        "--warm",
        "--dirty",
        "3",
        "--plot",
        str(path),
        str(a.mount_point),
        str(b.mount_point),
    )  # dirty: the pre-flush runs (see the policy's threshold), so its span is drawn
    assert done.returncode == Exit.OK, done.stderr
    assert doc["plot"] == {"path": str(path), "written": True, "error": None}
    root = ET.parse(path).getroot()
    ids = [e.get("id") or "" for e in root.iter()]
    assert len([i for i in ids if i.startswith("dist-")]) == 1 + 2 * 2
    for kind in ("pre-flush", "fifreeze", "frozen", "fithaw"):
        assert len([i for i in ids if i.startswith(f"span-{kind}-") and not i.endswith("-zoom")]) == 2
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {str(a.mount_point), str(b.mount_point), f"FIFREEZE {a.mount_point}"} <= texts
    assert victim.read_text() == "root's\n" and not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert_clean(run_dir, a, b)


@pytest.mark.parametrize("where", ["/tmp", "a directory another user owns"])
def test_plot_into_a_directory_others_can_write_is_refused_before_freezing(fs, run_dir, plot_dir, where):
    """``--plot`` where another user could plant a link: a usage error, nothing frozen, nothing written."""
    pytest.importorskip("matplotlib")
    if where == "/tmp":
        directory = Path(tempfile.mkdtemp(prefix="quiesce-test-plot-", dir="/tmp"))
    else:
        directory = plot_dir / "user"
        directory.mkdir()
        os.chown(directory, 65534, 65534)
    try:
        path = directory / "bench.svg"
        done = bench(run_dir, "-n", "1", "--warm", "--plot", str(path), str(fs["ext4"].mount_point))
        assert done.returncode == Exit.USAGE, done.stderr
        assert "--plot directory" in done.stderr
        assert ("writable by" in done.stderr) or ("owned by uid 65534" in done.stderr)
        assert not path.exists()
        assert "frozen" not in done.stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)
