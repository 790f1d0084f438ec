"""``quiesce bench`` without freezing: statistics, histogram, rendering, argument checks, signals."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.bench import command as bench_command
from quiesce.bench import helpers
from quiesce.bench.command import (
    ProgressBar,
    check_selection,
    confirm_all,
    print_bench,
    render_table,
    summary_rows,
)
from quiesce.bench.results import (
    BenchAborted,
    BenchError,
    BenchResult,
    FsTiming,
    ProbeResult,
    RepSample,
    Stall,
    rep_at,
)
from quiesce.bench.runner import BenchOptions
from quiesce.bench.stats import (
    Bucket,
    Summary,
    bucket_labels,
    histogram,
    median,
    nice_step,
    percentile,
    render_histogram,
    summarize,
    summarize_or_none,
)
from quiesce.cli import main
from quiesce.cli.parser import build_parents
from quiesce.engine.freeze import FreezeOptions
from quiesce.engine.mountinfo import Mount
from quiesce.engine.plan import Plan, Target
from quiesce.runner.signals import stop_on_signals

durations = st.integers(min_value=0, max_value=10**12)
samples = st.lists(durations, min_size=1, max_size=300)


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self):
        """Always a terminal."""
        return True


def parse(*argv):
    """Parse ``bench ARGV`` with the parser :func:`quiesce.bench.command.add_parser` registers."""
    shared = build_parents()
    parser = argparse.ArgumentParser(prog="quiesce")
    sub = parser.add_subparsers(dest="command", required=True)
    bench_command.add_parser(sub, [shared.common, shared.freeze_tuning])
    return parser.parse_args(["bench", *argv])


def a_target(mount_point="/srv/db"):
    """A planned target, made up (nothing here is frozen)."""
    m = Mount(1, 0, 8, 1, "/", mount_point, ("rw",), (), "ext4", "/dev/sda1", ("rw",))
    return Target(m, None, None)


def a_result(windows, probe=None):
    """A finished result with one filesystem and the given windows."""
    result = BenchResult(
        options={
            "reps": len(windows),
            "mode": "cold",
            "idle_s": 0.2,
            "preflush": True,
            "dirty_mib": 0,
            "probe": probe is not None,
        },
        targets=[{"mount_point": "/srv/db", "fstype": "ext4", "dev": "8:1"}],
    )
    for i, w in enumerate(windows, 1):
        fs = (FsTiming("/srv/db", "thawed", w - 10, 5, 1000),)
        result.samples.append(RepSample(i, f"run{i}", w, 1000, None, i * 10**9, i * 10**9 + w, fs))
    if probe is not None:
        result.probes.append(probe)
    return result


# -- statistics ---------------------------------------------------------------


def test_percentile_nearest_rank_on_1_to_100():
    """On 1..100 the p-th nearest-rank percentile is p; the median is 50."""
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (0, 1, 50, 90, 99, 100)] == [1, 1, 50, 90, 99, 100]
    assert summarize(reversed(values)) == Summary(100, 1, 50, 90, 99, 100)


def test_median_of_an_even_sample_is_the_lower_middle_value():
    """Nearest-rank gives a measured value, never an average of two."""
    assert summarize([10, 20, 30, 40]).median_ns == 20
    assert summarize([7]) == Summary(1, 7, 7, 7, 7, 7)


def test_empty_sample_and_bad_percentile_are_errors():
    """An empty sample has no statistics; a percentile is between 0 and 100."""
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="outside"):
        percentile([1, 2], 101)
    assert summarize_or_none([None, None]) is None
    assert summarize_or_none([None, 3]) == Summary(1, 3, 3, 3, 3, 3)


@given(samples)
def test_summary_is_ordered_and_made_of_measured_values(values):
    """min <= median <= p90 <= p99 <= max, each one a member of the sample."""
    s = summarize(values)
    figures = [s.min_ns, s.median_ns, s.p90_ns, s.p99_ns, s.max_ns]
    assert figures == sorted(figures)
    assert all(v in values for v in figures)
    assert (s.n, s.min_ns, s.max_ns) == (len(values), min(values), max(values))


@given(samples, st.integers(min_value=1, max_value=100))
def test_percentile_meets_the_nearest_rank_definition(values, p):
    """At least p % of the sample is <= the p-th percentile, and less than p % is below it."""
    ordered = sorted(values)
    v = percentile(ordered, p)
    n = len(ordered)
    assert sum(x <= v for x in ordered) * 100 >= p * n
    assert sum(x < v for x in ordered) * 100 < p * n


# -- histogram ----------------------------------------------------------------


def test_nice_step_is_1_2_or_5_times_a_power_of_ten():
    """The smallest round width at least the one asked."""
    assert [nice_step(n) for n in (0, 1, 2, 3, 6, 11, 80_000, 100_001)] == [
        1,
        1,
        2,
        5,
        10,
        20,
        100_000,
        200_000,
    ]


@given(samples, st.integers(min_value=1, max_value=30))
def test_histogram_counts_every_value_once_in_its_bucket(values, buckets):
    """Bucket counts sum to N; each value lies in its bucket; buckets are contiguous, round, few."""
    hist = histogram(values, buckets)
    assert sum(b.count for b in hist) == len(values)
    step = hist[0].hi_ns - hist[0].lo_ns
    assert nice_step(step) == step
    assert all(b.hi_ns - b.lo_ns == step for b in hist)
    assert all(x.hi_ns == y.lo_ns for x, y in itertools.pairwise(hist))
    assert hist[0].lo_ns <= min(values) < hist[0].hi_ns
    assert hist[-1].lo_ns <= max(values) < hist[-1].hi_ns
    assert len(hist) <= buckets + 2
    for b in hist:
        assert b.count == sum(b.lo_ns <= v < b.hi_ns for v in values)


@given(samples)
def test_rendered_histogram_shows_every_count(values):
    """One line per bucket; the counts printed sum to N; the fullest bucket has the full bar."""
    hist = histogram(values)
    lines = render_histogram(hist, width=20)
    assert len(lines) == len(hist)
    assert sum(int(line.split()[-1]) for line in lines) == len(values)
    fullest = max(hist, key=lambda b: b.count)
    assert "#" * 20 in lines[hist.index(fullest)]
    labels = bucket_labels(hist)
    assert len({lo for lo, _ in labels}) == len(labels), "two buckets print the same edge"


def test_histogram_labels_are_human_units():
    """Windows around half a millisecond get 100 us-wide buckets labelled in one unit."""
    windows = [412_000, 530_000, 545_000, 710_000, 1_203_000]
    hist = histogram(windows)
    assert hist[0] == Bucket(400_000, 500_000, 1)
    assert bucket_labels(hist)[0] == ("0.4 ms", "0.5 ms")
    assert bucket_labels(histogram([70_000_000, 93_000_000]))[0] == ("70 ms", "75 ms")
    assert bucket_labels(histogram([812_345]))[0] == ("812 us", "813 us")
    assert histogram([]) == [] and render_histogram([]) == []


# -- rendering ----------------------------------------------------------------


def test_table_and_histogram_of_a_result():
    """The text output: what ran, a row per measure in human units, the histogram, the probe's worst stall."""
    probe = ProbeResult(
        "/srv/db",
        123,
        5000,
        Summary(5000, 100_000, 200_000, 300_000, 800_000, 2_500_000),
        [Stall(0, 2_500_000, 2)],
    )
    result = a_result([500_000, 600_000, 700_000], probe)
    out = io.StringIO()
    print_bench(result, out)
    text = out.getvalue()
    assert text.startswith(
        "bench: 3 of 3 freezes of /srv/db (ext4); "
        "cold (0.2 s idle before each), pre-flush, writer-stall probe"
    )
    assert [label for label, _ in summary_rows(result)] == [
        "window",
        "pre-flush",
        "freeze /srv/db",
        "thaw /srv/db",
        "probe stall /srv/db",
    ]
    assert "window histogram:" in text
    assert "longest stall 2.50 ms (during repetition 2)" in text
    row = next(line for line in text.splitlines() if line.startswith("window "))
    assert row.split() == ["window", "3", "500", "us", "600", "us", "700", "us", "700", "us", "700", "us"]


def test_render_table_aligns_columns():
    """Every row of the table has the header's width."""
    lines = render_table([("window", Summary(2, 1_000, 2_000, 2_000, 2_000, 2_000)), ("x", summarize([5]))])
    assert len({len(line) for line in lines}) == 1


def test_result_to_dict_is_json_with_samples_and_summaries():
    """``to_dict`` holds every sample in ns, the summaries, the histogram and the counts."""
    data = json.loads(json.dumps(a_result([500_000, 600_000]).to_dict()))
    assert data["completed"] == 2 and data["requested"] == 2
    assert [s["window_ns"] for s in data["samples"]] == [500_000, 600_000]
    assert data["summary"]["window"]["max_ns"] == 600_000
    assert data["summary"]["filesystems"]["/srv/db"]["thaw"]["n"] == 2
    assert sum(b["count"] for b in data["window_histogram"]) == 2


def test_rep_at_matches_a_stall_to_the_window_it_overlaps():
    """A stall overlapping a repetition's cycle is attributed to it; one between windows to none."""
    result = a_result([500_000, 600_000])
    assert rep_at(result.samples, 10**9 - 100, 200) == 1
    assert rep_at(result.samples, 2 * 10**9 + 100, 10) == 2
    assert rep_at(result.samples, 10**9 + 600_000, 1000) is None


def test_progress_bar_redraws_one_line_and_clears():
    """On a terminal the bar redraws in place and is erased before the results."""
    out = FakeTerminal()
    bar = ProgressBar(out, total=4, width=8)
    bar(0, None)
    bar(2, a_result([812_000]).samples[0])
    assert out.getvalue().endswith("\r\033[K[####....] 2/4  last window 812 us")
    bar.clear()
    assert out.getvalue().endswith("\r\033[K")


# -- arguments ----------------------------------------------------------------


def test_parser_defaults():
    """Defaults: 20 repetitions, pre-flush, no load, no probe, 60 s guardian deadline, no picture."""
    args = parse("/srv/db")
    assert args.plot is None and args.warm is False and args.idle is None
    idle = bench_command.idle_of(args)
    assert (args.reps, idle, args.dirty, args.probe, args.no_preflush, args.timeout) == (
        20,
        0.2,
        0,
        False,
        False,
        60.0,
    )
    assert args.func is bench_command.cmd_bench and args.targets == ["/srv/db"] and args.expedite_rcu is True


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "0"],
        ["--interval", "-1"],
        ["--interval", "nan"],
        ["--idle", "-0.1"],
        ["--idle", "inf"],
        ["--dirty", "-5"],
        ["--timeout", "0"],
        ["-n", "x"],
    ],
)
def test_parser_rejects_bad_values(argv, capsys):
    """Out-of-range numbers are usage errors (exit 2) naming the option."""
    with pytest.raises(SystemExit) as info:
        parse(*argv, "/srv/db")
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("targets", "all_", "yes", "message"),
    [
        ([], False, False, "no target"),
        (["/srv"], True, False, "do not name targets"),
        (["/srv"], False, True, "nothing to confirm"),
    ],
)
def test_check_selection_explains_the_problem(targets, all_, yes, message):
    """Targets, --all and --yes: each wrong combination is a usage error saying why."""
    with pytest.raises(ValueError, match=message):
        check_selection(targets, all_, yes)


def test_check_selection_accepts_targets_or_all():
    """Named targets, ``--all`` and ``--all --yes`` are fine."""
    check_selection(["/srv"], False, False)
    check_selection([], True, False)
    check_selection([], True, True)


def test_main_without_targets_exits_2(capsys):
    """``bench`` alone: exit 2, the reason on stderr and in the JSON."""
    assert main(["bench", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "no target" in err and json.loads(out)["error_type"] == "ValueError"


def test_help_explains_the_probe_and_all(capsys):
    """``bench --help`` says what the probe's stall means and that --all includes /."""
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("window plus scheduling", "/ included", "--yes", "nearest-rank", "O_TMPFILE", "exits 130"):
        assert words in text


def test_options_are_validated():
    """BenchOptions refuses what the parser would: no target, 0 repetitions, negative values."""
    t = (a_target(),)
    for bad in (
        {"targets": ()},
        {"targets": t, "reps": 0},
        {"targets": t, "idle_s": -0.1},
        {"targets": t, "idle_s": float("nan")},
        {"targets": t, "dirty_mib": -1},
    ):
        with pytest.raises(ValueError):
            BenchOptions(**bad)
    for timeout_s in (0, float("inf")):
        with pytest.raises(ValueError):
            BenchOptions(t, freeze=FreezeOptions(timeout_s=timeout_s))
    assert BenchOptions(t).freeze.preflush is True


# -- --all confirmation -----------------------------------------------------------


def test_confirm_all_refuses_without_a_terminal():
    """No terminal to ask: refused even when stdin says yes."""
    with pytest.raises(ValueError, match="--yes"):
        confirm_all(Plan((a_target(),), (), ()), 5, io.StringIO("yes\n"), io.StringIO())


def test_confirm_all_shows_the_plan_and_needs_yes():
    """On a terminal the plan is shown; only "yes" goes on."""
    plan = Plan((a_target("/"), a_target("/srv/db")), (), ())
    out = io.StringIO()
    confirm_all(plan, 5, FakeTerminal("yes\n"), out)
    assert "/srv/db" in out.getvalue() and "all 2 filesystems" in out.getvalue()
    for answer in ("no\n", "y\n", ""):
        with pytest.raises(BenchAborted, match="nothing was frozen"):
            confirm_all(plan, 5, FakeTerminal(answer), io.StringIO())


# -- signals ----------------------------------------------------------------------


def test_stop_on_signals_sets_a_flag_instead_of_raising():
    """SIGINT and SIGTERM within the block set the flag; the old handlers come back after it."""
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as flag:
        assert not flag()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag() and flag.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


# -- helper processes (on a plain directory; nothing is frozen) ---------------------


def bench_files(directory):
    """Names the bench's helpers made in ``directory``."""
    return sorted(n for n in os.listdir(directory) if n.startswith(helpers.FILE_PREFIX))


def never():
    """A stop request that never comes."""
    return False


def test_dirty_writer_replaces_its_file_and_deletes_it_on_eof(tmp_path):
    """Each write deletes the previous file and writes a new one of the size; EOF deletes the last."""
    w = helpers.DirtyWriter(str(tmp_path), 1)
    try:
        for _ in range(2):
            w.send("write")
            assert w.wait_written(30, never) > 0
            [name] = bench_files(tmp_path)
            assert (tmp_path / name).stat().st_size == helpers.MIB
        assert name.endswith("-2"), "the first file was not replaced"
    finally:
        w.finish(30)
    assert w.finished and w.proc.returncode == 0
    assert bench_files(tmp_path) == [] and w.remove_leftovers() == []


def test_dirty_writer_files_are_removed_even_if_the_writer_dies(tmp_path):
    """A writer killed before its cleanup leaves a file; the bench removes it afterwards."""
    w = helpers.DirtyWriter(str(tmp_path), 1)
    w.send("write")
    w.wait_written(30, never)
    w.proc.kill()
    w.finish(30)
    assert len(bench_files(tmp_path)) == 1
    assert w.remove_leftovers() == [] and bench_files(tmp_path) == []


def test_dirty_writer_names_cannot_be_foreseen(tmp_path):
    """Files planted where a pid-based name would go do not stop the writer (it makes its own)."""
    for number in range(1, 4):
        for pid in (os.getpid(), os.getpid() + 1):
            (tmp_path / f"{helpers.FILE_PREFIX}{pid}-dirty-{number}").write_text("planted")
    planted = set(bench_files(tmp_path))
    w = helpers.DirtyWriter(str(tmp_path), 1)
    try:
        for _ in range(3):
            w.send("write")
            assert w.wait_written(30, never) > 0
    finally:
        w.finish(30)
    assert w.proc.returncode == 0, w.stderr
    assert set(bench_files(tmp_path)) == planted, "a planted file was touched"


def test_probe_reports_its_iterations_and_leaves_no_file(tmp_path):
    """The probe writes until told to stop, then reports every iteration; its file never had a name."""
    p = helpers.Probe(str(tmp_path))
    try:
        p.wait_ready(never)
        assert bench_files(tmp_path) == [] and os.listdir(tmp_path) == []
        os.kill(p.pid, signal.SIGINT)  # a Ctrl-C to the group must not end it
        os.kill(p.pid, signal.SIGTERM)
    finally:
        result = p.collect(30, 0, [])
    assert p.proc.returncode == 0, p.stderr
    assert result.error is None and result.iterations > 0
    assert result.stall is not None and result.stall.n == result.iterations
    assert result.longest[0].duration_ns == result.stall.max_ns
    assert os.listdir(tmp_path) == []


def test_probe_on_a_missing_directory_fails_at_start(tmp_path):
    """A probe that cannot open its file says why before the bench freezes anything."""
    p = helpers.Probe(str(tmp_path / "missing"))
    try:
        with pytest.raises(BenchError, match="No such file"):
            p.wait_ready(never)
    finally:
        p.finish(30)


def test_median_is_the_nearest_rank_one_a_measured_value():
    """The bench scripts' median is the 50th nearest-rank percentile: the lower middle, never a mean."""
    assert median([4, 1, 3, 2]) == 2  # statistics.median would say 2.5, a value never measured
    assert median([0.5, 1.5]) == 0.5
    assert median([7]) == 7
    assert median([3, 9, 1]) == summarize([3, 9, 1]).median_ns == 3
    with pytest.raises(ValueError):
        median([])
