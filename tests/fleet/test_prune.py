"""A group keeps its last KEEP_RUNS runs; an older one goes once it is over (no etcd needed)."""

from __future__ import annotations

from quiesce.fleet.coordinator import _prune
from quiesce.fleet.protocol import KEEP_RUNS, Keys, Record

KEYS = Keys("g")


class _Store:
    def __init__(self, runs: dict[str, set[str]]) -> None:
        self.records = {KEYS.key(run, what): Record({}, 1) for run, whats in runs.items() for what in whats}
        self.deleted: list[str] = []

    def get_prefix(self, prefix: str) -> tuple[int, dict[str, Record]]:
        return 9, {k: r for k, r in self.records.items() if k.startswith(prefix)}

    def delete_prefixes(self, prefixes: list[str]) -> None:
        assert prefixes[1].startswith(KEYS.reports), "a run's reports go with its keys"
        self.deleted.append(prefixes[0][len(KEYS.runs) : -1])


def test_old_runs_go_once_over_judged_or_abandoned_and_the_last_ones_stay():
    runs = {f"r{i:03d}": {"spec", "verdict"} for i in range(100, 100 + KEEP_RUNS)}
    runs["r100"] = {"spec", "freeze"}  # abandoned, but among the last KEEP_RUNS: kept
    old = {
        "r001": {"spec", "verdict"},  # judged
        "r002": {"spec", "freeze", "cut"},  # its coordinator was killed: alive gone, no verdict
        "r003": {"spec", "alive", "freeze"},  # alive still: its coordinator may be at work
    }
    store = _Store({**runs, **old})
    _prune(store, KEYS)
    assert sorted(store.deleted) == ["r001", "r002"]
