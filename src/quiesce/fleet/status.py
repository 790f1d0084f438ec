"""``quiesce fleet status``, and the text form of a fleet run's result."""

from __future__ import annotations

import time
from typing import Any, TextIO

from quiesce.fleet.coordinator import FleetResult, timeline_of, view_of
from quiesce.fleet.protocol import Keys, check_name, judge
from quiesce.fleet.store import Store


def group_status(store: Store, group: str, last: int = 5) -> dict[str, Any]:
    """Members with their health, and the last runs with each node's part."""
    keys = Keys(check_name("group", group))
    _, members = store.get_prefix(keys.members)
    _, records = store.get_prefixes([keys.runs, keys.reports])
    run_ids = sorted({p[0] for k in records if (p := keys.parse(k)) is not None}, reverse=True)[:last]
    runs = []
    for run_id in run_ids:
        view = view_of(keys, run_id, records)
        verdict = judge(view)
        finished = "verdict" in view.single
        alive = "alive" in view.single
        runs.append(
            {
                **verdict.to_dict(),
                "state": "finished" if finished else ("in progress" if alive else "coordinator lost"),
                "members": view.members,
                "timeline": timeline_of(view),
            }
        )
    now = time.time()
    out_members = []
    for _key, rec in sorted(members.items()):
        v = dict(rec.value)
        v["registered_for_s"] = round(now - float(v.get("since_unix", now)), 1)
        v["health"] = "running a run" if v.get("state") == "running" else "idle"
        out_members.append(v)
    named = {m for r in runs for m in r["members"]}
    registered = {str(m.get("node")) for m in out_members}
    missing = sorted(named - registered)
    return {"group": group, "members": out_members, "missing": missing, "runs": runs}


def print_status(status: dict[str, Any], out: TextIO) -> None:
    """The group for a terminal."""
    out.write(f"group {status['group']}: {len(status['members'])} agent(s) registered\n")
    for m in status["members"]:
        last = m.get("last_run")
        tail = (
            f"; last run {last}: {m.get('last_local')}, thawed by {m.get('last_thawed_by')}" if last else ""
        )
        out.write(
            f"  {m.get('node'):<16} {m.get('health'):<14} host {m.get('host')} pid {m.get('pid')}{tail}\n"
        )
    for name in status["missing"]:
        out.write(f"  {name:<16} NOT REGISTERED (named by a recent run; agent down or cut off)\n")
    for r in status["runs"]:
        out.write(f"run {r['run_id']} ({r['state']}): {r['consistency']}")
        out.write(f"{'' if r['abort'] is None else '; aborted: ' + str(r['abort'])}\n")
        for n in r["nodes"]:
            out.write(f"  {n['node']:<16} {n['verdict']:<24} {n['why']}\n")


def print_result(result: FleetResult, out: TextIO) -> None:
    """A fleet run's verdict, each node's part, and the order of its keys by revision."""
    v = result.verdict
    out.write(f"fleet run {result.run_id} (group {result.group}), members {len(v.nodes)}\n")
    out.write("timeline (etcd revisions):\n")
    for row in result.timeline:
        who = f" {row['node']}" if row["node"] else ""
        out.write(f"  rev {row['revision']:>8}  {row['key']}{who}\n")
    for n in v.nodes:
        window = "" if n.window_ns is None else f", frozen {n.window_ns / 1e6:.2f} ms"
        out.write(f"  {n.node:<16} {n.verdict:<24} {n.why} (local: {n.local}{window})\n")
    if v.abort:
        out.write(f"aborted: {v.abort}\n")
    out.write(f"result: {v.consistency}\n")
