"""window_cpu.py: reading ``perf script`` and counting samples inside fleet windows (no perf needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from window_cpu import GROUPS, attribute, parse_script

S = 1_000_000_000


def test_parse_script_reads_pid_and_time_and_skips_anything_else():
    lines = [
        "    0 66011.414726819: ",
        " 4242 66011.000000001:",
        "garbage",
        " 12 66011.5:",  # not nanoseconds: not this format
        " -3 66011.000000001:",
        "",
    ]
    assert parse_script(lines) == [(66011 * S + 414726819, 0), (66011 * S + 1, 4242)]


def test_samples_are_counted_inside_their_window_for_their_process():
    pids = {"etcd": {10}, "agents": {20, 21}}
    samples = [
        (5, 20),  # before the first window
        (100, 10),
        (150, 20),
        (160, 21),
        (170, 0),
        (180, 99),
        (200, 10),  # on the window's end: inside
        (201, 20),  # between the windows
        (300, 21),
        (400, 21),  # after the last
    ]
    rows = attribute(samples, [(100, 200), (250, 350)], pids, hz=1000)
    assert rows[0] == {"etcd": 2.0, "agents": 2.0, "other": 1.0, "idle": 1.0, "window": 100 / 1e6}
    assert rows[1] == {"etcd": 0.0, "agents": 1.0, "other": 0.0, "idle": 0.0, "window": 100 / 1e6}


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 40)), max_size=200),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3_000)), min_size=1, max_size=5),
)
def test_every_sample_in_a_window_is_counted_once_in_it(samples, raw_windows):
    windows = [(start, start + length) for start, length in raw_windows]
    pids = {"etcd": set(range(1, 10)), "agents": set(range(10, 20))}
    rows = attribute(samples, windows, pids, hz=500)
    for (start, end), row in zip(windows, rows, strict=True):
        inside = [pid for t, pid in samples if start <= t <= end]
        assert sum(row[g] for g in GROUPS) == len(inside) * 2.0
        assert row["idle"] == inside.count(0) * 2.0
        assert row["etcd"] == sum(1 for p in inside if 1 <= p < 10) * 2.0
