"""The fleet's verdict, proved from the revisions of a run's keys (:mod:`quiesce.fleet.protocol`).

A node is part of the cut when, by etcd revision, ``frozen <= cut <
snapshotted`` (equal when its own report committed the cut: it wrote
``frozen`` after its FIFREEZE returned, in the transaction that commits the
cut), its freeze held through its snapshot, and it thawed because it saw
``thaw`` (``thaw < done``, with the thaw revision it names). The revisions
come from one etcd cluster, so the order needs no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quiesce import APPLICATION, CRASH, FAILED, FILESYSTEM
from quiesce.fleet.protocol import THAW, Record, RunView

#: Worst first, for combining nodes into the fleet's verdict.
_RANK = {FAILED: 0, CRASH: 1, FILESYSTEM: 2, APPLICATION: 3}


@dataclass
class NodePart:
    """What one node got in a run, and why."""

    node: str
    verdict: str
    why: str
    thawed_by: str | None = None
    local: str | None = None
    revisions: dict[str, int] = field(default_factory=dict)
    window_ns: int | None = None
    #: The node's own config was invalid (``quiesce run`` would exit 10).
    config_error: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return dict(self.__dict__)


@dataclass
class Verdict:
    """The fleet's verdict: the worst of its nodes' parts."""

    run_id: str
    consistency: str
    cut_committed: bool
    nodes: list[NodePart]
    abort: str | None = None

    @property
    def ok(self) -> bool:
        """Every node's snapshot is part of one application-consistent cut."""
        return self.consistency == APPLICATION

    @property
    def config_error(self) -> bool:
        """The run failed and some node's own config was invalid."""
        return self.consistency == FAILED and any(n.config_error for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "run_id": self.run_id,
            "consistency": self.consistency,
            "ok": self.ok,
            "cut_committed": self.cut_committed,
            "config_error": self.config_error,
            "abort": self.abort,
            "nodes": [n.to_dict() for n in self.nodes],
        }


def judge(view: RunView) -> Verdict:
    """The verdict of a run from its keys and their revisions (see the module doc)."""
    cut = view.single.get("cut")
    thaw = view.single.get("thaw")
    abort = view.single.get("abort")
    parts = [_node_part(view, m, cut, thaw) for m in view.members]
    consistency = min((p.verdict for p in parts), key=_RANK.__getitem__, default=FAILED)
    why = None if abort is None else str(abort.value.get("reason", "aborted"))
    return Verdict(view.run_id, consistency, cut is not None, parts, why)


def _node_part(view: RunView, node: str, cut: Record | None, thaw: Record | None) -> NodePart:
    revs = {
        what: rec.mod_revision
        for what in ("ready", "frozen", "snapshotted", "done")
        if (rec := view.node(what, node)) is not None
    }
    if cut is not None:
        revs["cut"] = cut.mod_revision
    if thaw is not None:
        revs["thaw"] = thaw.mod_revision
    done = view.node("done", node)
    snap = view.node("snapshotted", node)
    part = NodePart(node, FAILED, "", revisions=revs)
    if done is not None:
        part.thawed_by = _opt_str(done.value.get("thawed_by"))
        part.local = _opt_str(done.value.get("local"))
        window = done.value.get("window_ns")
        part.window_ns = window if type(window) is int and 0 <= window < 2**63 else None
        part.config_error = done.value.get("config_error") is True
    if cut is None:
        part.why = "no cut was committed: no snapshot was taken"
        return part
    frozen = view.node("frozen", node)
    if frozen is None or frozen.mod_revision > cut.mod_revision:
        part.why = "not frozen before the cut"  # cannot happen with the transaction; said if it did
        return part
    if snap is None or snap.value.get("ok") is not True or snap.mod_revision <= cut.mod_revision:
        detail = "" if snap is None else f": {snap.value.get('detail') or 'failed'}"
        part.why = f"no snapshot after the cut{detail}"
        return part
    if done is None:
        part.why = "snapshot taken, but the node never reported (agent killed or cut off)"
        return part
    if part.local == FAILED:
        part.why = f"its own run failed: {done.value.get('error') or 'see its result'}"
        return part
    # Each fact counts only as the agent writes it (JSON true, an integer revision): a value
    # anyone else planted, "false" or 1.0, never makes a verdict stronger.
    if done.value.get("held_through_snapshot") is not True:
        part.verdict, part.why = CRASH, "its freeze did not hold through its snapshot"
        return part
    clean = (
        thaw is not None
        and part.thawed_by == THAW
        and _revision(done.value.get("thaw_revision")) == thaw.mod_revision
        and thaw.mod_revision < done.mod_revision
    )
    if not clean:
        part.verdict = FILESYSTEM
        part.why = f"in the cut, but it thawed by {part.thawed_by or 'unknown'}, not by the fleet's thaw"
        return part
    if part.local != APPLICATION:
        part.verdict = FILESYSTEM if part.local in (FILESYSTEM, APPLICATION) else CRASH
        part.why = f"in the cut; its own run was {part.local}: {done.value.get('error') or ''}".rstrip(": ")
        return part
    part.verdict, part.why = APPLICATION, "frozen < cut < snapshotted < thaw < done"
    return part


def _revision(v: object) -> int | None:
    """An etcd revision as a node reports it: a JSON integer (not a bool, a float or a string)."""
    return v if type(v) is int else None


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)


def worst(verdicts: Sequence[str]) -> str:
    """The weakest of several consistency classes."""
    return min(verdicts, key=_RANK.__getitem__, default=FAILED)
