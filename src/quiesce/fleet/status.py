"""``quiesce fleet status``, and the text form of a fleet run's result."""

from __future__ import annotations

import time
from typing import Any, TextIO

from quiesce.fleet.coordinator import FleetResult, timeline_of, view_of
from quiesce.fleet.protocol import Keys, check_name
from quiesce.fleet.store import Store
from quiesce.fleet.verdict import judge


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
    for key, rec in sorted(members.items()):
        node = keys.member_name(key)
        if node is None:
            continue  # not an agent's registration
        # What the agent wrote, with the node named by its key (the value is the agent's word only).
        v = {**rec.value, "node": node}
        since = v.get("since_unix")
        v["registered_for_s"] = None
        if isinstance(since, int | float) and not isinstance(since, bool) and abs(since) < 1e12:
            v["registered_for_s"] = round(now - since, 1)
        v["health"] = "running a run" if v.get("state") == "running" else "idle"
        out_members.append(v)
    named = {m for r in runs for m in r["members"]}
    registered = {m["node"] for m in out_members}
    missing = sorted(named - registered)
    return {"group": group, "members": out_members, "missing": missing, "runs": runs}


def shown(value: object, limit: int = 200) -> str:
    """A value read from etcd, for a terminal: control characters escaped, at most ``limit`` characters.

    Whoever holds the group's role writes these values (an agent's host, an
    abort's reason, a snapshot's detail): none may move the cursor, clear the
    screen or forge a line of the output.
    """
    text = str(value)[: limit + 1]
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def print_status(status: dict[str, Any], out: TextIO) -> None:
    """The group for a terminal."""
    out.write(f"group {status['group']}: {len(status['members'])} agent(s) registered\n")
    for m in status["members"]:
        last = m.get("last_run")
        tail = ""
        if last:
            tail = f"; last run {shown(last)}: {shown(m.get('last_local'))}, thawed by "
            tail += shown(m.get("last_thawed_by"))
        where = f"host {shown(m.get('host'))} pid {shown(m.get('pid'))}"
        out.write(f"  {m['node']:<16} {m['health']:<14} {where}{tail}\n")
    for name in status["missing"]:
        out.write(f"  {name:<16} NOT REGISTERED (named by a recent run; agent down or cut off)\n")
    for r in status["runs"]:
        out.write(f"run {r['run_id']} ({r['state']}): {r['consistency']}")
        out.write(f"{'' if r['abort'] is None else '; aborted: ' + shown(r['abort'])}\n")
        for n in r["nodes"]:
            out.write(f"  {n['node']:<16} {n['verdict']:<24} {shown(n['why'])}\n")


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
        out.write(f"  {n.node:<16} {n.verdict:<24} {shown(n.why)} (local: {shown(n.local)}{window})\n")
    if v.abort:
        out.write(f"aborted: {shown(v.abort)}\n")
    out.write(f"result: {v.consistency}\n")
