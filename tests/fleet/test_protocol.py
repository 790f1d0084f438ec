"""The fleet's verdict from etcd revisions, the cut check, names and keys (no root, no etcd)."""

from __future__ import annotations

import pytest

from quiesce import APPLICATION, CRASH, FAILED, FILESYSTEM
from quiesce.fleet.protocol import Keys, Record, RunView, check_name
from quiesce.fleet.verdict import judge, worst
from quiesce.fleet.writer import cut_violations, parse_seq


def _view(members=("a", "b"), *, skip=(), thawed_by="thaw", local=APPLICATION, held=True, order=None):
    """A run whose keys were written in the usual order; ``skip`` leaves keys out."""
    v = RunView("r1")
    rev = iter(range(10, 1000))
    v.add("spec", None, Record({"members": list(members)}, next(rev)))
    steps = order or ["ready", "freeze", "frozen", "cut", "snapshotted", "thaw", "done"]
    revs: dict[str, int] = {}
    for what in steps:
        if what in ("freeze", "cut", "thaw"):
            if what not in skip:
                revs[what] = next(rev)
                v.add(what, None, Record({}, revs[what]))
            continue
        for m in members:
            if (what, m) in skip or what in skip:
                continue
            value = {"ok": True}
            if what == "done":
                value = {
                    "thawed_by": thawed_by,
                    "thaw_revision": revs.get("thaw"),
                    "local": local,
                    "held_through_snapshot": held,
                }
            v.add(what, m, Record(value, next(rev)))
    return v


def test_clean_run_is_application_consistent():
    """frozen < cut < snapshotted < thaw < done on every node, thawed by thaw: consistent."""
    verdict = judge(_view())
    assert verdict.consistency == APPLICATION and verdict.ok and verdict.cut_committed
    assert [p.verdict for p in verdict.nodes] == [APPLICATION, APPLICATION]
    assert verdict.nodes[0].revisions["frozen"] < verdict.nodes[0].revisions["cut"]


def test_no_cut_is_failed():
    """Without a committed cut no snapshot exists: failed, and each node says so."""
    verdict = judge(_view(skip=("cut", "snapshotted", "thaw")))
    assert verdict.consistency == FAILED and not verdict.cut_committed
    assert all("no cut" in p.why for p in verdict.nodes)


def test_node_thawed_by_lease_loss_is_not_consistent():
    """In the cut, but it thawed because the coordinator vanished: file-system-consistent, not 0."""
    verdict = judge(_view(thawed_by="coordinator-lost", skip=("thaw",)))
    assert verdict.consistency == FILESYSTEM
    assert "coordinator-lost" in verdict.nodes[0].why


def test_thaw_revision_must_match():
    """A node that claims 'thaw' but names another revision is not counted as thawed by it."""
    v = _view()
    rec = v.per_node["done"]["b"]
    v.per_node["done"]["b"] = Record({**rec.value, "thaw_revision": 3}, rec.mod_revision)
    verdict = judge(v)
    assert verdict.consistency == FILESYSTEM
    assert [p.verdict for p in verdict.nodes] == [APPLICATION, FILESYSTEM]


def test_frozen_after_cut_is_failed():
    """A frozen key whose revision is after the cut's cannot be part of it."""
    verdict = judge(_view(order=["ready", "freeze", "cut", "frozen", "snapshotted", "thaw", "done"]))
    assert verdict.consistency == FAILED
    assert all("not frozen before the cut" in p.why for p in verdict.nodes)


def test_the_report_that_committed_the_cut_shares_its_revision():
    """The last ``frozen`` commits the cut in its own transaction: equal revisions are in the cut."""
    v = _view()
    cut = v.single["cut"].mod_revision
    last = v.per_node["frozen"]["b"]
    v.per_node["frozen"]["b"] = Record(last.value, cut)
    verdict = judge(v)
    assert verdict.consistency == APPLICATION
    assert verdict.nodes[1].revisions["frozen"] == verdict.nodes[1].revisions["cut"]
    # One revision later it would not be: the cut cannot hold a freeze reported after it.
    v.per_node["frozen"]["b"] = Record(last.value, cut + 1)
    assert judge(v).nodes[1].why == "not frozen before the cut"


def test_freeze_not_held_is_crash():
    """The guardian thawed during the snapshot: that node's part is crash-consistent."""
    assert judge(_view(held=False)).consistency == CRASH


def test_missing_done_is_failed_and_local_failure_is_failed():
    """A node that never reported, or whose own run failed, fails the fleet."""
    assert judge(_view(skip=(("done", "b"),))).consistency == FAILED
    assert judge(_view(local=FAILED)).consistency == FAILED
    assert judge(_view(local=FILESYSTEM)).consistency == FILESYSTEM


def test_failed_snapshot_is_failed():
    """A snapshotted key with ok false: failed."""
    v = _view()
    rec = v.per_node["snapshotted"]["a"]
    v.per_node["snapshotted"]["a"] = Record({"ok": False, "detail": "disk full"}, rec.mod_revision)
    verdict = judge(v)
    assert verdict.consistency == FAILED and "disk full" in verdict.nodes[0].why


def test_worst_and_names():
    """The weakest class wins; names are checked; keys parse back."""
    assert worst([APPLICATION, CRASH, FILESYSTEM]) == CRASH
    assert worst([]) == FAILED
    assert check_name("node", "db-1.a_b") == "db-1.a_b"
    for bad in ("", "a/b", "-x", "x" * 64, "a b"):
        with pytest.raises(ValueError):
            check_name("node", bad)
    k = Keys("g")
    assert k.prefix == "/quiesce/g/"
    assert k.parse(k.key("r", "ready", "n1")) == ("r", "ready", "n1")
    assert k.parse(k.key("r", "cut")) == ("r", "cut", None)
    assert k.parse("/quiesce/other/runs/r/cut") is None
    assert k.parse("/quiesce/g/runs/r/ready/n1") is None
    assert k.parse("/quiesce/g/reports/r/cut") is None


def test_reports_lie_outside_what_agents_watch():
    """A node's reports are not under ``runs/`` (every agent's watch): a report wakes the coordinator only."""
    k = Keys("g")
    for what in ("ready", "frozen", "snapshotted", "done"):
        key = k.key("r", what, "n1")
        assert not key.startswith(k.runs) and key.startswith(k.reports_of("r"))
        assert key.startswith(k.prefix)  # still within the group's role
    for what in ("spec", "alive", "freeze", "cut", "thaw", "abort", "verdict"):
        assert k.key("r", what).startswith(k.run("r"))


def test_cut_violations():
    """Prefixes of the causal chain pass; a later write without its predecessor is named."""
    assert cut_violations([[1, 2, 3], [1, 2, 3], [1, 2]]) == []
    assert cut_violations([[1, 2, 3], [1, 2], [1, 2]]) == []
    bad = cut_violations([[1, 2], [1, 2, 3], [1, 2]])
    assert len(bad) == 1 and "node 2 holds write 3" in bad[0]
    assert "node 1 holds write 4" in cut_violations([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2]])[0]
    assert "gap" in cut_violations([[1, 3], [1]])[0]
    assert parse_seq(b"1\n2\n3") == [1, 2]


def test_the_other_members_progress_ranges_hold_only_sides_with_a_member():
    """etcd fails a "modified after" compare on an empty range: a side with no member is left out."""
    k = Keys("g")
    p = "/quiesce/g/reports/r1/progress/"
    assert k.others_progress("r1", "b", ("a", "b", "c")) == [
        (p, p + "b"),
        (p + "b\0", "/quiesce/g/reports/r1/progress0"),
    ]
    assert k.others_progress("r1", "a", ("a", "b")) == [(p + "a\0", "/quiesce/g/reports/r1/progress0")]
    assert k.others_progress("r1", "b", ("a", "b")) == [(p, p + "b")]
    assert k.others_progress("r1", "a", ("a",)) == []  # alone: its own report commits the step
    assert RunView("r1").per_node == {}
    v = RunView("r1")
    v.add("progress", "a", Record({"last": "frozen"}, 5))
    assert v.per_node == {}  # bookkeeping, not a report: not in the verdict or the timeline
