"""``quiesce fleet run``: drive one run across the members of a group, and judge it.

The run is created in one transaction (``spec``, and ``alive`` under a lease
this process keeps alive). Then, each step a transaction that commits only
if every member's previous key exists and no ``abort`` does: ``freeze``
once all are ready, ``cut`` once all are frozen, ``thaw`` once every
snapshot succeeded. Anything else (a timeout, a failed member, a lost
lease) writes ``abort``. The verdict comes from the keys' revisions
(:func:`quiesce.fleet.protocol.judge`) once every member reported or the
wait for them ran out, and is stored as ``verdict``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quiesce.fleet import FleetError
from quiesce.fleet.protocol import Keys, Record, RunView, Verdict, check_name, judge
from quiesce.fleet.store import Store, Watch

#: The coordinator's lease: etcd's minimum is about 2 s; agents also thaw at their own deadline.
DEFAULT_TTL_S = 2
#: How many finished runs a group keeps for ``fleet status``.
KEEP_RUNS = 50


@dataclass(frozen=True)
class FleetOptions:
    """How one fleet run goes."""

    members: tuple[str, ...] = ()
    expect: int | None = None
    #: Longest wait for the members' pre steps (ready), and for their post steps (done).
    timeout_s: float = 60.0
    #: Each node's freeze deadline is capped at this (its guardian's local deadline).
    deadline_s: float = 10.0
    ttl_s: int = DEFAULT_TTL_S


@dataclass
class FleetResult:
    """A fleet run: its verdict, what each node got, and the order of events by revision."""

    group: str
    run_id: str
    verdict: Verdict
    timeline: list[dict[str, Any]] = field(default_factory=list)
    phases_ns: dict[str, int] = field(default_factory=dict)
    aborted_by_coordinator: str | None = None
    #: The coordinator's CLOCK_MONOTONIC at the start of the run: ``phases_ns`` count from it.
    started_mono_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "group": self.group,
            "run_id": self.run_id,
            **self.verdict.to_dict(),
            "timeline": self.timeline,
            "phases_ns": self.phases_ns,
            "started_mono_ns": self.started_mono_ns,
        }


def new_run_id() -> str:
    """Sortable by creation time, unique across coordinators."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{secrets.token_hex(3)}"


def resolve_members(store: Store, keys: Keys, opts: FleetOptions) -> list[str]:
    """The members of this run: the named ones, or the N registered; waits for them up to the timeout."""
    for m in opts.members:
        check_name("node", m)
    deadline = time.monotonic() + opts.timeout_s
    while True:
        _, records = store.get_prefix(keys.members)
        registered = sorted(k[len(keys.members) :] for k in records)
        if opts.members:
            missing = [m for m in opts.members if m not in registered]
            if not missing:
                return list(opts.members)
            what = f"not registered: {', '.join(missing)}"
        elif opts.expect is not None:
            if len(registered) == opts.expect:
                return registered
            if len(registered) > opts.expect:
                raise FleetError(f"{len(registered)} agents registered in the group, --expect {opts.expect}")
            what = f"{len(registered)} of {opts.expect} agents registered"
        else:
            if registered:
                return registered
            what = "no agent registered"
        if time.monotonic() >= deadline:
            raise FleetError(f"group {keys.group}: {what}")
        time.sleep(0.2)


class _Run:
    """The coordinator's state for one run."""

    def __init__(self, store: Store, keys: Keys, run_id: str, members: list[str]) -> None:
        self.store, self.keys, self.run_id, self.members = store, keys, run_id, members
        self.view = RunView(run_id)
        self.lease_lost = threading.Event()
        self.watch: Watch | None = None
        self.phases: dict[str, int] = {"start": time.monotonic_ns()}

    def key(self, what: str, node: str | None = None) -> str:
        return self.keys.key(self.run_id, what, node)

    def pump(self, done: Callable[[], bool], timeout_s: float, until_done: bool = False) -> str | None:
        """Take events until ``done()``; the reason when the wait ends otherwise.

        An ``abort`` or a lost lease end the wait, unless ``until_done``.
        """
        assert self.watch is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if done():
                return None
            if "abort" in self.view.single and not until_done:
                return f"aborted: {self.view.single['abort'].value.get('reason')}"
            if self.lease_lost.is_set() and not until_done:
                return "the coordinator's lease was lost"
            left = deadline - time.monotonic()
            if left <= 0:
                return None if done() else "timed out"
            ev = self.watch.get(min(left, 0.5))
            if ev is None:
                continue
            if ev.kind == "lost":
                raise FleetError(f"lost the watch on the run: {ev.why}")
            parsed = self.keys.parse(ev.key)
            if parsed is None or parsed[0] != self.run_id or ev.kind != "put":
                continue
            self.view.add(parsed[1], parsed[2], Record(ev.value or {}, ev.revision))

    def all_have(self, what: str) -> bool:
        return all(self.view.node(what, m) is not None for m in self.members)

    def failed_before(self, what: str) -> str | None:
        """A member that reported done without reaching ``what``: it cannot go on."""
        for m in self.members:
            if self.view.node("done", m) is not None and self.view.node(what, m) is None:
                return m
        return None

    def step(self, what: str, after: str, timeout_s: float) -> str | None:
        """Wait for every member's ``after`` key, then commit ``what``; the reason if it could not."""
        why = self.pump(lambda: self.all_have(after) or self.failed_before(after) is not None, timeout_s)
        if why is None and (failed := self.failed_before(after)) is not None:
            why = f"{failed} ended before {after}"
        if why is not None:
            return f"waiting for {after}: {why}"
        self.phases[f"all_{after}"] = time.monotonic_ns()
        present = [self.key("alive")] + [self.key(after, m) for m in self.members]
        committed, _ = self.store.put_if(
            {self.key(what): {"by": "coordinator", "t_unix": time.time()}},
            present=present,
            absent=[self.key("abort"), self.key(what)],
        )
        self.phases[what] = time.monotonic_ns()
        return None if committed else f"{what} not committed (an abort came first, or the lease was lost)"

    def abort(self, reason: str) -> None:
        # etcd gone: the nodes thaw on their own (lease, watch, deadline).
        with contextlib.suppress(FleetError):
            self.store.put(self.key("abort"), {"reason": reason, "by": "coordinator", "t_unix": time.time()})


def fleet_run(
    store: Store, group: str, opts: FleetOptions, log: Callable[[str], None] | None = None
) -> FleetResult:
    """Drive one fleet run to its verdict (see the module doc)."""
    say = log or (lambda _line: None)
    keys = Keys(check_name("group", group))
    members = resolve_members(store, keys, opts)
    run = _Run(store, keys, new_run_id(), members)
    lease = store.grant(opts.ttl_s)
    stop_keepalive = store.keep_alive(lease, opts.ttl_s, lambda why: run.lease_lost.set())
    aborted: str | None = None
    try:
        spec = {
            "members": members,
            "deadline_s": opts.deadline_s,
            "ready_timeout_s": opts.timeout_s,
            "created_unix": time.time(),
        }
        committed, revision = store.put_if(
            {run.key("spec"): spec, run.key("alive"): {"lease": lease}},
            absent=[run.key("spec")],
            lease={run.key("alive"): lease},
        )
        if not committed:
            raise FleetError(f"run {run.run_id} already exists")
        say(f"run {run.run_id}: members {', '.join(members)}")
        # The run's own keys and the nodes' reports: both, from the spec's revision on.
        run.watch = store.watch([keys.run(run.run_id), keys.reports_of(run.run_id)], revision + 1)
        for what, after, timeout in (
            ("freeze", "ready", opts.timeout_s),
            ("cut", "frozen", opts.deadline_s),
        ):
            aborted = run.step(what, after, timeout)
            if aborted is not None:
                break
            say(f"run {run.run_id}: {what} committed")
        if aborted is None:
            aborted = _thaw_when_snapshotted(run, opts)
        if aborted is not None:
            say(f"run {run.run_id}: abort: {aborted}")
            run.abort(aborted)
        run.pump(lambda: run.all_have("done"), opts.timeout_s + opts.deadline_s, until_done=True)
        run.phases["all_done"] = time.monotonic_ns()
        result = _conclude(store, keys, run)
        result.aborted_by_coordinator = aborted
        return result
    except KeyboardInterrupt:
        # Stopped (SIGINT, or SIGTERM through the CLI): every node thaws now.
        run.abort("the coordinator was stopped")
        raise
    finally:
        stop_keepalive()
        if run.watch is not None:
            run.watch.close()
        with contextlib.suppress(FleetError):  # else it expires on its own
            store.revoke(lease)


def _thaw_when_snapshotted(run: _Run, opts: FleetOptions) -> str | None:
    why = run.pump(
        lambda: run.all_have("snapshotted") or run.failed_before("snapshotted") is not None, opts.deadline_s
    )
    if why is not None:
        return f"waiting for snapshotted: {why}"
    run.phases["all_snapshotted"] = time.monotonic_ns()
    bad = [m for m in run.members if not (run.view.node("snapshotted", m) or Record({}, 0)).value.get("ok")]
    if bad:
        return f"snapshot failed on {', '.join(bad)}"
    committed, _ = run.store.put_if(
        {run.key("thaw"): {"by": "coordinator", "t_unix": time.time()}},
        present=[run.key("snapshotted", m) for m in run.members],
        absent=[run.key("abort"), run.key("thaw")],
    )
    run.phases["thaw"] = time.monotonic_ns()
    return None if committed else "thaw not committed: an abort came first"


def read_run(store: Store, keys: Keys, run_id: str) -> RunView:
    """Every key of one run, as etcd has it now."""
    _, records = store.get_prefixes([keys.run(run_id), keys.reports_of(run_id)])
    return view_of(keys, run_id, records)


def view_of(keys: Keys, run_id: str, records: dict[str, Record]) -> RunView:
    """File a run's records into a :class:`RunView`."""
    view = RunView(run_id)
    for key, rec in records.items():
        parsed = keys.parse(key)
        if parsed is not None and parsed[0] == run_id:
            view.add(parsed[1], parsed[2], rec)
    return view


def timeline_of(view: RunView) -> list[dict[str, Any]]:
    """Every key of the run in revision order: the proof of the order, without clocks."""
    rows = [{"revision": r.mod_revision, "key": what, "node": None} for what, r in view.single.items()]
    for what, nodes in view.per_node.items():
        rows += [{"revision": r.mod_revision, "key": what, "node": n} for n, r in nodes.items()]
    return sorted(rows, key=lambda row: (row["revision"], row["key"], row["node"] or ""))


def _conclude(store: Store, keys: Keys, run: _Run) -> FleetResult:
    view = read_run(store, keys, run.run_id)
    verdict = judge(view)
    start = run.phases["start"]
    result = FleetResult(
        keys.group,
        run.run_id,
        verdict,
        timeline_of(view),
        {k: v - start for k, v in run.phases.items() if k != "start"},
        started_mono_ns=start,
    )
    store.put(run.key("verdict"), verdict.to_dict())
    _prune(store, keys)
    return result


def _prune(store: Store, keys: Keys) -> None:
    """Keep the last KEEP_RUNS runs that have a verdict."""
    _, records = store.get_prefix(keys.runs)
    judged = sorted({p[0] for k in records if (p := keys.parse(k)) is not None and p[1] == "verdict"})
    for run_id in judged[:-KEEP_RUNS]:
        store.delete_prefixes([keys.run(run_id), keys.reports_of(run_id)])
