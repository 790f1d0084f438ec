"""``quiesce fleet run``: start one run across the members of a group, watch it, and judge it.

The run is created in one transaction (``spec``, and ``alive`` under a lease
this process keeps alive). The steps (``freeze``, ``cut``, ``thaw``) are
committed by the nodes themselves, each in the transaction of the report
that completes it (:mod:`quiesce.fleet.protocol`): the coordinator is not a
hop inside the window. It watches the run's own keys, the nodes' ``done``
reports and the group's registrations, and writes ``abort`` when a step does
not come in time, a member ended its part early, or, once the nodes are
frozen, a member's agent is gone (its registration lease expired). When the
watch breaks, the run's keys are read again and a new watch goes on from
that read, if etcd answers within a few seconds (longer, the coordinator's
lease has ended the run): never from the last revision seen, which etcd may
have compacted meanwhile (such a watch is canceled at once).
The verdict comes from the keys' revisions
(:func:`quiesce.fleet.verdict.judge`) once every member reported or the
wait for them ran out, and is stored as ``verdict``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quiesce.fleet import FleetError
from quiesce.fleet.protocol import (
    KEEP_RUNS,
    PROTOCOL_VERSION,
    Keys,
    Record,
    RunSpec,
    RunView,
    check_members,
    check_name,
    write_abort,
)
from quiesce.fleet.store import Store, Watch
from quiesce.fleet.verdict import Verdict, judge

#: The coordinator's lease: etcd's minimum is about 2 s; agents also thaw at their own deadline.
DEFAULT_TTL_S = 2
#: How long a broken watch is retried: longer than the lease, etcd has ended the run anyway.
REOPEN_S = 5.0


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
    check_members(opts.members, "--members")
    deadline = time.monotonic() + opts.timeout_s
    while True:
        _, records = store.get_prefix(keys.members)
        versions = {n: r.value.get("protocol") for k, r in records.items() if (n := keys.member_name(k))}
        registered = sorted(versions)
        if opts.members:
            missing = [m for m in opts.members if m not in registered]
            if not missing:
                return _same_protocol(list(opts.members), versions)
            what = f"not registered: {', '.join(missing)}"
        elif opts.expect is not None:
            if len(registered) == opts.expect:
                return _same_protocol(registered, versions)
            if len(registered) > opts.expect:
                raise FleetError(f"{len(registered)} agents registered in the group, --expect {opts.expect}")
            what = f"{len(registered)} of {opts.expect} agents registered"
        else:
            if registered:
                return _same_protocol(registered, versions)
            what = "no agent registered"
        if time.monotonic() >= deadline:
            raise FleetError(f"group {keys.group}: {what}")
        time.sleep(0.2)


def _same_protocol(members: list[str], versions: dict[str, Any]) -> list[str]:
    """``members``, if every one registered this coordinator's protocol version; else FleetError."""
    other = [f"{m} ({versions[m]!r:.20})" for m in members if versions[m] != PROTOCOL_VERSION]
    if other:
        raise FleetError(
            f"agents of another protocol version than this coordinator's ({PROTOCOL_VERSION}): "
            f"{', '.join(other)}; upgrade a group's coordinator and agents together"
        )
    return members


class _Run:
    """The coordinator's state for one run."""

    def __init__(self, store: Store, keys: Keys, run_id: str, members: list[str]) -> None:
        self.store, self.keys, self.run_id, self.members = store, keys, run_id, members
        self.view = RunView(run_id)
        self.lease_lost = threading.Event()
        self.watch: Watch | None = None
        self._reopened_at = 0.0
        self.gone: list[str] = []  # members whose registration was deleted during the run
        self.phases: dict[str, int] = {"start": time.monotonic_ns()}

    def key(self, what: str, node: str | None = None) -> str:
        return self.keys.key(self.run_id, what, node)

    @property
    def prefixes(self) -> list[str]:
        """What the coordinator watches: the run's keys, the ``done`` reports, the registrations."""
        return [self.keys.run(self.run_id), f"{self.keys.reports_of(self.run_id)}done/", self.keys.members]

    def open_watch(self, start_revision: int) -> None:
        self.watch = self.store.watch(self.prefixes, start_revision)

    def _reopen(self, deadline: float) -> bool:
        """Read the watched keys again and watch on from that read; False if etcd did not answer
        before ``deadline``.

        Read, not replayed from the last revision seen: etcd may have compacted
        that history, and a watch from a compacted revision is canceled at once.
        What the keys hold now is all the run needs (a member whose registration
        is gone now is gone, whenever it went).
        """
        assert self.watch is not None
        self.watch.close()
        # A watch that etcd ends as soon as it is made is not opened again in a busy loop.
        time.sleep(max(0.0, self._reopened_at + 0.2 - time.monotonic()))
        self._reopened_at = time.monotonic()
        while time.monotonic() < deadline:
            try:
                revision, records = self.store.get_prefixes(self.prefixes)
                self.watch = self.store.watch(self.prefixes, revision + 1)
            except FleetError:
                time.sleep(0.2)
                continue
            registered = {self.keys.member_name(k) for k in records if k.startswith(self.keys.members)}
            for m in self.members:
                self._take("put" if m in registered else "delete", self.keys.member(m), {}, revision)
            for key, record in sorted(records.items(), key=lambda item: item[1].mod_revision):
                if not key.startswith(self.keys.members):
                    self._take("put", key, record.value, record.mod_revision)
            return True
        return False

    def _take(self, kind: str, key: str, value: Mapping[str, Any] | None, revision: int) -> None:
        """File one change of a watched key (an event, or a key as read again)."""
        if key.startswith(self.keys.members):
            node = key[len(self.keys.members) :]
            if node in self.members and node not in self.gone and kind == "delete":
                self.gone.append(node)
            elif node in self.gone and kind == "put":
                self.gone.remove(node)  # back (a restarted agent): it may still join before the freeze
            return
        parsed = self.keys.parse(key)
        if parsed is None or parsed[0] != self.run_id or kind != "put":
            return
        if parsed[2] is None and parsed[1] not in self.view.single:
            self.phases[parsed[1]] = time.monotonic_ns()
        self.view.add(parsed[1], parsed[2], Record(value or {}, revision))

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
                if not self._reopen(min(deadline, time.monotonic() + REOPEN_S)):
                    raise FleetError(f"lost the watch on the run: {ev.why}; etcd did not answer again")
                continue
            self._take(ev.kind, ev.key, ev.value, ev.revision)

    def ended_early(self) -> str | None:
        """A member that can no longer take part: it reported done, or its agent is gone."""
        for m in self.members:
            if self.view.node("done", m) is not None:
                return f"{m} ended its part"
        if self.gone and "freeze" in self.view.single:
            # Once frozen, the others wait for it: end the run now, not at their deadlines. Before
            # the freeze a restarted agent joins the run, so its absence is only the ready timeout.
            return f"the agent of {self.gone[0]} is gone (its registration lease expired)"
        return None

    def step(self, what: str, timeout_s: float) -> str | None:
        """Wait until a node commits ``what``; the reason if it did not."""
        why = self.pump(lambda: what in self.view.single or self.ended_early() is not None, timeout_s)
        if what in self.view.single:
            return None
        return f"waiting for {what}: {why or self.ended_early()}"

    def all_done(self) -> bool:
        """Every member reported ``done``, or cannot: its agent is gone (a restarted one reports)."""
        return all(self.view.node("done", m) is not None or m in self.gone for m in self.members)

    def abort(self, reason: str) -> bool:
        """Write ``abort``; False only if ``thaw`` was committed first (then nothing is written).

        An ``abort`` already written (by a node) stays as it is: its reason is the run's.
        """
        if "abort" in self.view.single:
            return True
        try:
            return write_abort(self.store, self.keys, self.run_id, reason, "coordinator")
        except FleetError:  # etcd gone: the nodes thaw on their own (lease, watch, deadline)
            return True


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
            "protocol": PROTOCOL_VERSION,
            "members": members,
            "deadline_s": opts.deadline_s,
            "ready_timeout_s": opts.timeout_s,
            "created_unix": time.time(),
        }
        RunSpec.parse(spec)  # what the nodes will check: a bad option fails here, before anything is written
        committed, revision = store.put_if(
            {run.key("spec"): spec, run.key("alive"): {"lease": lease}},
            absent=[run.key("spec")],
            lease={run.key("alive"): lease},
        )
        if not committed:
            raise FleetError(f"run {run.run_id} already exists")
        say(f"run {run.run_id}: members {', '.join(members)}")
        run.open_watch(revision + 1)
        steps = (("freeze", opts.timeout_s), ("cut", opts.deadline_s), ("thaw", opts.deadline_s))
        for what, timeout in steps:
            aborted = run.step(what, timeout)
            if aborted is not None:
                break
            say(f"run {run.run_id}: {what} committed")
        if aborted is not None and not run.abort(aborted):
            aborted = None  # the thaw came first: the verdict says what each node got
        if aborted is not None:
            say(f"run {run.run_id}: abort: {aborted}")
        run.pump(run.all_done, opts.timeout_s + opts.deadline_s, until_done=True)
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
    """Keep the last KEEP_RUNS runs: an older one goes once it is over.

    Over: it has a verdict, or its coordinator's ``alive`` is gone (a
    coordinator killed before its verdict leaves a run that no one will
    judge: without this it would be kept for ever).
    """
    _, records = store.get_prefix(keys.runs)
    runs: dict[str, set[str]] = {}
    for key in records:
        if (parsed := keys.parse(key)) is not None and parsed[2] is None:
            runs.setdefault(parsed[0], set()).add(parsed[1])
    for run_id in sorted(runs)[:-KEEP_RUNS]:
        if "verdict" in runs[run_id] or "alive" not in runs[run_id]:
            store.delete_prefixes([keys.run(run_id), keys.reports_of(run_id)])
