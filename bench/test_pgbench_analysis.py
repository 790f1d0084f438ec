"""pgbench.py's analysis: reading pgbench's log and placing transactions around a freeze (no server)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pgbench import Timeline, Txn, baseline_rate, classify, read_logs

MS = 1_000_000


def sample(cmd_start: int, win_start: int, win_ns: int, cmd_end: int) -> dict[str, int]:
    """A freeze's timestamps, in ms."""
    return {
        "cmd_start_ns": cmd_start * MS,
        "window_start_ns": win_start * MS,
        "window_ns": win_ns * MS,
        "cmd_end_ns": cmd_end * MS,
    }


def txn(start_ms: float, end_ms: float) -> Txn:
    """A transaction from start to end, in ms."""
    return Txn(int(start_ms * MS), int(end_ms * MS))


def test_read_logs_undoes_the_epoch_shift_and_sorts_by_start(tmp_path):
    """Two thread logs; completion = epoch stamp - shift, start = completion - latency."""
    (tmp_path / "log.7").write_text("0 0 1500 0 100 2000\n1 0 20000 0 100 500000\n")
    (tmp_path / "log.7.1").write_text("2 0 300 0 99 999999\n2 1 skipped 0 100 0\n")
    shift = 90 * 1_000_000_000
    txns = read_logs(str(tmp_path / "log"), shift)
    ends = [10 * 1_000_000_000 + 2000 * 1000, 10 * 1_000_000_000 + 500000 * 1000, 9_999_999_000]
    assert txns == sorted(
        [
            Txn(ends[0] - 1_500_000, ends[0]),
            Txn(ends[1] - 20_000_000, ends[1]),
            Txn(ends[2] - 300_000, ends[2]),
        ],
        key=lambda t: t.start_ns,
    )


def test_classify_places_each_slow_transaction_once():
    """Inside wins over before, before over after; fast ones only count for overlapping/worst."""
    s = sample(cmd_start=1000, win_start=1300, win_ns=50, cmd_end=1400)
    txns = [
        txn(900, 950),  # before the command: nowhere
        txn(1100, 1120),  # lead-in, slow
        txn(1100, 1105),  # lead-in, fast
        txn(1290, 1320),  # lead-in and window: inside
        txn(1310, 1420),  # inside, the worst (110 ms)
        txn(1330, 1335),  # inside, fast
        txn(1500, 1600),  # after the command end, within 0.5 s: after
        txn(1950, 1990),  # past command end + 0.5 s: nowhere
    ]
    got = classify(Timeline(sorted(txns, key=lambda t: t.start_ns)), s, 10 * MS, 500 * MS)
    assert got["worst_ns"] == 110 * MS
    assert got["overlapping"] == 3
    assert (got["slow_before"], got["slow_inside"], got["slow_after"]) == (1, 2, 1)
    assert got["span_ns"] == (1400 + 500 - 1000) * MS


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 2_000)), max_size=60),
    st.integers(0, 12_000),
    st.integers(0, 3_000),
)
def test_overlapping_matches_a_plain_scan(spans, a, length):
    """The bisecting lookup finds exactly the transactions a full scan finds."""
    txns = sorted((Txn(s, s + d) for s, d in spans), key=lambda t: t.start_ns)
    b = a + length
    tl = Timeline(txns)
    assert sorted(tl.overlapping(a, b), key=id) == sorted(
        [t for t in txns if t.start_ns < b and t.end_ns > a], key=id
    )


def test_baseline_counts_slow_transactions_ending_in_quiet_intervals():
    """Per second of quiet time; a slow one ending outside every quiet interval is not counted."""
    txns = [txn(0, 20), txn(100, 150), txn(500, 505), txn(1990, 2100)]
    tl = Timeline(txns)
    quiet = [(0, 1000 * MS), (1500 * MS, 2000 * MS)]
    assert baseline_rate(tl, quiet, 10 * MS) == 2 / 1.5
    assert baseline_rate(tl, [], 10 * MS) == 0.0


def test_classify_splits_the_lead_in_at_the_preflush():
    """A slow transaction ending in the pre-flush's span counts there; earlier ones are start-up's."""
    s = sample(cmd_start=1000, win_start=1300, win_ns=10, cmd_end=1400) | {"preflush_ns": 100 * MS}
    txns = [txn(1100, 1120), txn(1150, 1250), txn(1210, 1290), txn(1250, 1255)]
    got = classify(Timeline(txns), s, 10 * MS, 500 * MS)
    assert (got["slow_before"], got["slow_preflush"]) == (3, 2)
    assert (got["startup_span_ns"], got["preflush_span_ns"]) == (200 * MS, 100 * MS)
