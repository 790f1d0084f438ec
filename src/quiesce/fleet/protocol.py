"""The fleet protocol on etcd: the key layout, and the rules by which the nodes commit each step.

Everything of a group lives under ``/quiesce/<group>/``::

    members/<node>                 an agent, attached to its own lease (gone when it dies); written
                                   only where none is: one agent per node name at a time
    runs/<run>/spec                the run: members, deadlines (written by the coordinator)
    runs/<run>/alive               attached to the coordinator's lease: its loss ends the run
    runs/<run>/freeze              only if every ready exists, and alive, and no abort (see below)
    runs/<run>/cut                 only if every frozen exists, and alive, and no abort
    runs/<run>/thaw                only if every snapshotted exists (each one ok), and alive, and no abort
    runs/<run>/abort               anyone may write it, until ``thaw``; every node thaws on it
    runs/<run>/verdict             the coordinator's verdict, kept for ``fleet status``
    reports/<run>/ready/<node>     the node ran its pre steps, pre-flushed, armed its guardian;
                                   attached to its agent's lease: a dead agent's ready is gone
                                   before it can register again, and counts for no freeze
    reports/<run>/frozen/<node>    the node is frozen
    reports/<run>/snapshotted/<node>
    reports/<run>/done/<node>      after the node's post steps: why it thawed, its local result
    reports/<run>/progress/<node>  written with each of the node's reports (see below)

Each step is committed by the node whose report completes it, in the
transaction that writes the report: ``ready/<node>``, and ``freeze`` with it
if every other member's ``ready`` and the coordinator's ``alive`` exist and
neither ``abort`` nor ``freeze`` does (else the report alone). The same for
``frozen`` and ``cut``, and for ``snapshotted`` and ``thaw``: no step commits
once the coordinator's lease is gone (the nodes are thawing then). etcd orders
transactions, so whichever report comes last sees all the others and commits
the step: one round trip, not a report to the coordinator and a second
transaction from it. The check does not grow with the number of nodes:
each report also writes the node's own ``progress/<node>`` (created
by its ``ready``), and ``frozen`` commits ``cut`` only if every other
node's ``progress`` was modified after ``freeze``, which only its
``frozen`` report does (``snapshotted`` and ``thaw`` the same, after
``cut``): two range compares either side of the node's own key, not one
compare per member. ``ready`` commits ``freeze`` with one compare per
other member's ``ready`` (before the window; ``progress`` keys do not all
exist yet). A failed snapshot writes its report with ``abort`` in
one transaction, so "every ``snapshotted`` and no ``abort``" means every
snapshot succeeded. An ``abort`` is written only while there is no ``thaw``:
a node sees at most one of them.

The run's own keys (``runs/``) are what every agent watches; the nodes'
reports lie apart (``reports/``), so a node is woken only by the steps (with
N nodes, a report wakes nobody; each agent's watch would otherwise carry
every other node's ``ready``, ``frozen`` and ``snapshotted``, N² wake-ups a
step). The coordinator watches the run's keys and the ``done`` reports.
The verdict proved from these keys' revisions is in :mod:`quiesce.fleet.verdict`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from quiesce.fleet import FleetError
from quiesce.fleet.wire import range_end

ROOT = "/quiesce"
#: How many finished runs a group keeps for ``fleet status``.
KEEP_RUNS = 50
#: The key layout and step rules below, as a spec and a registration name them: an agent
#: declines a run of another version, and a coordinator refuses members that register one.
PROTOCOL_VERSION = 2
#: The most members a run can have: a node's ``ready`` checks every other member's report
#: in one transaction (their ``progress`` keys do not exist yet), with ``alive``, ``abort``
#: and the step: members + 2 compares, and etcd refuses a transaction with more than 128
#: (its ``--max-txn-ops`` default).
MAX_MEMBERS = 126
#: The longest deadline or wait a run's spec may ask for (each node's own config caps its freeze).
SPEC_MAX_S = 3600.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

#: Why a node thawed, as ``done/<node>`` names it.
THAW = "thaw"  # it saw the coordinator's ``thaw``
ABORT = "abort"
COORDINATOR_LOST = "coordinator-lost"  # the coordinator's lease (``alive``) is gone
ETCD_LOST = "etcd-lost"  # the watch ended or etcd stopped answering
DEADLINE = "deadline"  # its own guardian's deadline
NOT_FROZEN = "not-frozen"  # the run ended before this node froze
AGENT_STOPPED = "agent-stopped"  # SIGTERM to the agent (systemd stop)

#: The step a node's report completes: the last report of a kind commits it (see the module doc).
STEP_OF = {"ready": "freeze", "frozen": "cut", "snapshotted": "thaw"}
#: The step a report is written after: the node saw it committed first.
AFTER_STEP = {"frozen": "freeze", "snapshotted": "cut"}
#: Each node's own key, which each of its reports also writes (see the module doc).
PROGRESS = "progress"


def check_name(kind: str, name: str) -> str:
    """A group or node name: letters, digits, ``.``, ``_``, ``-``; at most 63 characters."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' or '-' (<= 63)")
    return name


def check_members(names: Sequence[str], what: str = "the member list") -> tuple[str, ...]:
    """A run's member list as a caller names it: valid names, each once, at most MAX_MEMBERS.

    A ValueError says what is wrong, ``what`` naming the list (``--members``).
    """
    if "" in names:
        raise ValueError(f"{what} has an empty name")
    for name in names:
        check_name("node", name)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{what} names {', '.join(twice)} more than once")
    if len(names) > MAX_MEMBERS:
        raise ValueError(
            f"{what} names {len(names)} nodes; a run has at most {MAX_MEMBERS} (each node's ready "
            "report checks every other one in one etcd transaction, and etcd takes 128 compares)"
        )
    return tuple(names)


@dataclass(frozen=True)
class Keys:
    """Key names for one group (and one run within it)."""

    group: str

    @property
    def prefix(self) -> str:
        """Everything of the group: what an agent's etcd role is limited to."""
        return f"{ROOT}/{self.group}/"

    @property
    def members(self) -> str:
        """Where agents register."""
        return f"{self.prefix}members/"

    def member(self, node: str) -> str:
        """One agent's registration."""
        return f"{self.members}{node}"

    def member_name(self, key: str) -> str | None:
        """The node a registration key names; None for any other key, or a name no agent can have."""
        name = key[len(self.members) :] if key.startswith(self.members) else ""
        return name if _NAME.fullmatch(name) else None

    @property
    def runs(self) -> str:
        """Where runs live."""
        return f"{self.prefix}runs/"

    def run(self, run_id: str) -> str:
        """One run's own keys (spec, the coordinator's decisions, abort, verdict)."""
        return f"{self.runs}{run_id}/"

    @property
    def reports(self) -> str:
        """Where the nodes report, per run."""
        return f"{self.prefix}reports/"

    def reports_of(self, run_id: str) -> str:
        """One run's node reports (``ready``, ``frozen``, ``snapshotted``, ``done``)."""
        return f"{self.reports}{run_id}/"

    def others_progress(self, run_id: str, node: str, members: Sequence[str]) -> list[tuple[str, str]]:
        """The other members' ``progress`` keys of a run: the key ranges either side of ``node``'s own.

        Only a side that holds a member: etcd compares an empty range as one
        missing key (its revisions 0), which no "modified after" holds.
        """
        prefix = f"{self.reports_of(run_id)}{PROGRESS}/"
        mine = f"{prefix}{node}"
        ranges = []
        if any(m < node for m in members):
            ranges.append((prefix, mine))
        if any(m > node for m in members):
            ranges.append((f"{mine}\0", range_end(prefix)))
        return ranges

    def key(self, run_id: str, what: str, node: str | None = None) -> str:
        """A run's key: ``what`` alone (``freeze``, in ``runs/``) or a node's report (in ``reports/``)."""
        if node is None:
            return f"{self.run(run_id)}{what}"
        return f"{self.reports_of(run_id)}{what}/{node}"

    def parse(self, key: str) -> tuple[str, str, str | None] | None:
        """``(run, what, node)`` for a run's key or a node's report, else None.

        Every part must be a valid name (:func:`check_name`): a key anyone
        else wrote in the group's prefix is not taken for part of a run.
        """
        if key.startswith(self.runs):
            parts = key[len(self.runs) :].split("/")
            if len(parts) == 2 and all(_NAME.fullmatch(part) for part in parts):
                return parts[0], parts[1], None
        elif key.startswith(self.reports):
            parts = key[len(self.reports) :].split("/")
            if len(parts) == 3 and all(_NAME.fullmatch(part) for part in parts):
                return parts[0], parts[1], parts[2]
        return None  # not a key of this layout, or a run or node name quiesce never writes


class PutIf(Protocol):
    """What :func:`write_abort` needs of a store (:class:`quiesce.fleet.store.Store` has it)."""

    def put_if(
        self, puts: Mapping[str, Mapping[str, Any]], *, absent: Sequence[str] = ...
    ) -> tuple[bool, int]: ...


def write_abort(
    store: PutIf,
    keys: Keys,
    run_id: str,
    reason: str,
    by: str,
    also: Mapping[str, Mapping[str, Any]] | None = None,
) -> bool:
    """Write the run's ``abort`` (and ``also``, in the same transaction) unless its ``thaw`` was
    committed; whether it was written.

    After ``thaw`` an abort changes nothing (the nodes are thawing) and would
    only race the thaw in a node's wait; before it, every node thaws on it.
    """
    puts = {keys.key(run_id, "abort"): {"reason": reason, "by": by, "t_unix": time.time()}, **(also or {})}
    written, _ = store.put_if(puts, absent=[keys.key(run_id, "thaw")])
    return written


def spec_members(value: Mapping[str, Any]) -> tuple[str, ...]:
    """The nodes a run's spec names: () unless ``members`` is a list of distinct valid names."""
    members = value.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) and _NAME.fullmatch(m) for m in members):
        return ()
    return tuple(members) if len(set(members)) == len(members) else ()


@dataclass(frozen=True)
class RunSpec:
    """A run's ``spec`` as a node acts on it.

    The spec is read from etcd, where whoever holds the group's role may
    write: a value of the wrong type or out of range is refused whole (the
    node declines the run, saying why), never half used.
    """

    members: tuple[str, ...]
    #: Caps each node's freeze deadline; None: the node's own freezeTimeoutSeconds.
    deadline_s: float | None = None
    ready_timeout_s: float = 60.0

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> RunSpec:
        """The spec from its stored value; :class:`FleetError` naming the first bad field."""
        if value.get("protocol") != PROTOCOL_VERSION:
            raise FleetError(
                f"the run's protocol version is {value.get('protocol')!r:.20}, this agent's is "
                f"{PROTOCOL_VERSION}: upgrade a group's coordinator and agents together"
            )
        members = spec_members(value)
        if not members:
            raw = value.get("members")
            raise FleetError(f"the run's members must be a list of distinct node names, not {raw!r:.100}")
        if len(members) > MAX_MEMBERS:
            raise FleetError(f"a run has at most {MAX_MEMBERS} members, not {len(members)}")
        deadline = _spec_seconds(value, "deadline_s")
        ready = _spec_seconds(value, "ready_timeout_s")
        return cls(members, deadline, cls.ready_timeout_s if ready is None else ready)


def _spec_seconds(value: Mapping[str, Any], key: str) -> float | None:
    """A spec's number of seconds, if given: more than 0, at most SPEC_MAX_S (nan and inf fail both)."""
    if key not in value:
        return None
    raw = value[key]
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= SPEC_MAX_S:
        raise FleetError(
            f"the run's {key} must be a number of seconds, more than 0 and at most {SPEC_MAX_S:g}, "
            f"not {raw!r:.50}"
        )
    return float(raw)


@dataclass(frozen=True)
class Record:
    """One key of a run as read from etcd: its JSON value and its revisions."""

    value: Mapping[str, Any]
    mod_revision: int
    create_revision: int = 0


@dataclass
class RunView:
    """Every key of one run, by ``what`` and node, as read at one revision."""

    run_id: str
    single: dict[str, Record] = field(default_factory=dict)
    per_node: dict[str, dict[str, Record]] = field(default_factory=dict)

    def add(self, what: str, node: str | None, record: Record) -> None:
        """File one key (a node's ``progress`` is only the steps' bookkeeping: not filed)."""
        if what == PROGRESS:
            return
        if node is None:
            self.single[what] = record
        else:
            self.per_node.setdefault(what, {})[node] = record

    def node(self, what: str, node: str) -> Record | None:
        """``what/<node>``, if written."""
        return self.per_node.get(what, {}).get(node)

    @property
    def members(self) -> list[str]:
        """The members the spec names."""
        spec = self.single.get("spec")
        return [] if spec is None else list(spec_members(spec.value))
