"""``quiesce agent``: one node of a fleet, serving fleet runs with the node's own config.

The agent registers ``members/<node>`` under a lease it keeps alive (only
where no other agent holds that name: it waits until it can), then watches
its group's ``runs/``. A run whose spec names it is served by
:class:`~quiesce.fleet.noderun.NodeRun` around ``quiesce.run`` with the
node's own Azure config (its scripts, hooks, targets, snapshot command), its
freeze deadline capped at the fleet's. It acts only on its own group's keys;
a run that names it while it is busy, or that it cannot serve, gets an
``abort`` saying why, so nobody waits for it (written once this node is
out of its frozen window, if the run came while it was frozen).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import quiesce
from quiesce.fleet import FleetError
from quiesce.fleet.noderun import FleetAbort, NodeRun
from quiesce.fleet.nodestep import with_deadline
from quiesce.fleet.protocol import (
    NOT_FROZEN,
    PROTOCOL_VERSION,
    Keys,
    Record,
    RunSpec,
    check_name,
    spec_members,
    write_abort,
)
from quiesce.fleet.store import Event, Security, Store, Watch

#: The agent's registration lease; etcd's minimum is about 2 s.
DEFAULT_TTL_S = 5
#: How long the agent keeps trying to write its result after a run.
REPORT_RETRY_S = 30.0
#: How often an agent whose node name another agent holds asks again.
NAME_RETRY_S = 0.5


@dataclass(frozen=True)
class AgentOptions:
    """How an agent runs."""

    endpoints: tuple[str, ...]
    group: str
    node: str
    config_path: str
    run_dir: str = "/run/quiesce"
    pluginhost_path: str | None = "/etc/azure/VMSnapshotPluginHost.conf"
    vmbackup_conf: str | None = "/etc/azure/vmbackup.conf"
    ttl_s: int = DEFAULT_TTL_S
    security: Security = dataclasses.field(default_factory=Security)


class Agent:
    """A long-running fleet agent (see the module doc)."""

    def __init__(self, options: AgentOptions, log: Callable[[str], None] | None = None) -> None:
        self.options = options
        check_name("group", options.group)
        check_name("node", options.node)
        self.keys = Keys(options.group)
        self.store = Store(options.endpoints, options.security)
        # A second connection for the liveness probe while frozen, so a probe
        # stuck on a dead etcd never delays the main thread's watch.
        self._probe_store = Store(options.endpoints, options.security, timeout_s=0.5)
        # The writes inside the window, on their own kept-open session with a short timeout.
        self._window_store = Store(options.endpoints, options.security, timeout_s=1.0)
        self.log = log or (lambda _line: None)
        self.lease: int | None = None
        self._stop_keepalive: Callable[[], None] | None = None
        self._lease_lost = threading.Event()
        self.state: dict[str, Any] = {"state": "idle"}
        self.runs_served = 0
        #: The revision that created this agent's registration: updates go only to that key.
        self._registered = 0
        self._waiting_for_name = False
        self._since = time.time()
        #: Set by SIGTERM: a run in progress ends now (thaw, post steps), then the agent exits.
        self.stopping = threading.Event()

    # -- registration ----------------------------------------------------------

    def register(self) -> bool:
        """Take ``members/<node>`` under a fresh lease kept alive by a thread; False while the name is taken.

        The name is taken only where no registration holds it (one
        transaction): two agents never serve one node name at once (a cloned
        machine with the same name, or one restarted before the lease of its
        previous life expired). The second serves nothing until the first
        leaves or its lease expires.
        """
        if self._stop_keepalive is not None:
            self._stop_keepalive()
            self._stop_keepalive = None
        self._lease_lost.clear()
        key = self.keys.member(self.options.node)
        if self.lease is not None and self._still_registered(key):
            return True
        _, held = self.store.get_prefix(key)
        if key not in held:
            lease = self.store.grant(self.options.ttl_s)
            taken, revision = self.store.put_if({key: self._info()}, absent=[key], lease={key: lease})
            if taken:
                self.lease, self._registered = lease, revision
                self._keep(lease)
                self._waiting_for_name = False
                self.log(f"registered as {self.options.node} in group {self.options.group}")
                return True
            with contextlib.suppress(quiesce.QuiesceError):  # else it expires on its own
                self.store.revoke(lease)
            _, held = self.store.get_prefix(key)
        if not self._waiting_for_name:
            holder = held[key].value if key in held else {}
            host, pid = holder.get("host"), holder.get("pid")
            who = (
                "this agent's earlier lease (not expired yet)"
                if (host, pid) == (socket.gethostname(), os.getpid())
                else f"another agent (host {host!r:.80}, pid {pid!r:.20})"
            )
            self.log(
                f"node name {self.options.node} is registered by {who}: serving nothing until "
                "that registration ends"
            )
            self._waiting_for_name = True
        return False

    def _still_registered(self, key: str) -> bool:
        """Whether this agent's lease lives and its registration is still the one it made (kept then).

        An error answering (etcd still away) is raised: the lease is kept for the next try.
        Otherwise the lease is given up (revoked if it lives), and the caller registers anew.
        """
        assert self.lease is not None
        if self.store.keepalive(self.lease) > 0:
            _, held = self.store.get_prefix(key)
            if key in held and held[key].create_revision == self._registered:
                self._keep(self.lease)
                return True
            with contextlib.suppress(quiesce.QuiesceError):  # else it expires on its own
                self.store.revoke(self.lease)
        self.lease = None
        return False

    def _keep(self, lease: int) -> None:
        self._stop_keepalive = self.store.keep_alive(
            lease, self.options.ttl_s, lambda why: self._lease_lost.set()
        )

    def _info(self) -> dict[str, Any]:
        return {
            "node": self.options.node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since_unix": self._since,
            "protocol": PROTOCOL_VERSION,
            "config": self.options.config_path,
            "runs_served": self.runs_served,
            **self.state,
        }

    def _publish(self) -> None:
        """Update the registration, only while it is still this agent's (else: re-register)."""
        if self.lease is None:
            return
        key = self.keys.member(self.options.node)
        ours, _ = self.store.put_if(
            {key: self._info()}, created={key: self._registered}, lease={key: self.lease}
        )
        if not ours:
            self.log("the registration is no longer this agent's (its lease ended): registering again")
            self._lease_lost.set()

    # -- the loop ----------------------------------------------------------------

    def serve(self, stop: threading.Event | None = None, max_runs: int | None = None) -> None:
        """Serve runs until ``stop`` is set (or ``max_runs`` were served); reconnects when etcd is lost."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                if (self.lease is None or self._lease_lost.is_set()) and not self.register():
                    stop.wait(NAME_RETRY_S)
                    continue
                self._watch_runs(stop, max_runs)
                if max_runs is not None and self.runs_served >= max_runs:
                    return
            except quiesce.QuiesceError as err:
                self.log(f"etcd: {err}; retrying")
                self._lease_lost.set()
                stop.wait(0.5)
            except Exception as err:  # a long-running agent outlives one bad answer; say what it was
                self.log(f"unexpected {type(err).__name__}: {err}; retrying")
                self._lease_lost.set()
                stop.wait(0.5)

    def close(self) -> None:
        """Leave the group: revoke the lease (the registration goes at once)."""
        if self._stop_keepalive is not None:
            self._stop_keepalive()
        if self.lease is not None:
            with contextlib.suppress(quiesce.QuiesceError):  # etcd gone: the lease expires on its own
                self.store.revoke(self.lease)
        self.store.close()
        self._probe_store.close()
        self._window_store.close()

    def _watch_runs(self, stop: threading.Event, max_runs: int | None) -> None:
        # The nodes' reports are read (for this node's own ``done``) but not watched: the
        # agent is woken only by the runs' own keys, never by the other nodes' reports.
        revision, records = self.store.get_prefixes([self.keys.runs, self.keys.reports])
        watch = self.store.watch(self.keys.runs, revision + 1)
        try:
            for run_id, spec in self._catch_up(records):
                self.serve_run(run_id, spec, watch)
            while not stop.is_set():
                if self._lease_lost.is_set():
                    return
                ev = watch.get(0.5)
                if ev is None:
                    continue
                if ev.kind == "lost":
                    self.log(f"watch lost: {ev.why}")
                    return
                parsed = self.keys.parse(ev.key)
                if parsed is None or parsed[1] != "spec" or ev.kind != "put" or ev.value is None:
                    continue
                if self.options.node not in spec_members(ev.value):
                    continue
                self.serve_run(parsed[0], ev.value, watch)
                if max_runs is not None and self.runs_served >= max_runs:
                    return
        finally:
            watch.close()

    def _catch_up(self, records: dict[str, Record]) -> list[tuple[str, dict[str, Any]]]:
        """Runs naming this node that it has not finished, found on (re)connecting.

        One still waiting for its members (no ``freeze`` yet) is joined: returned
        to be served. One past its barrier cannot be (this agent restarted, or was
        cut off, in it): its ``done`` says so, with an ``abort`` if the run is still
        going. One whose coordinator is gone gets its ``done`` too, so every member
        of every run has reported.
        """
        node = self.options.node
        join = []
        for key, rec in sorted(records.items()):
            parsed = self.keys.parse(key)
            if parsed is None or parsed[1] != "spec" or node not in spec_members(rec.value):
                continue
            run_id = parsed[0]

            def k(what: str, who: str | None = None, r: str = run_id) -> str:
                return self.keys.key(r, what, who)

            if k("done", node) in records or k("verdict") in records:
                continue
            alive = k("alive") in records
            if alive and k("freeze") not in records and k("abort") not in records:
                join.append((run_id, dict(rec.value)))
                continue
            why = (
                "the agent restarted or reconnected past this run's barrier; its part was lost"
                if alive
                else "the run was over before this agent could take part"
            )
            record = {"node": node, "thawed_by": "agent-restarted", "local": quiesce.FAILED, "error": why}
            self.store.put(k("done", node), record)
            if alive:
                self._abort(run_id, f"{node}: {why}")
        return join

    def _abort(self, run_id: str, reason: str) -> None:
        try:
            write_abort(self.store, self.keys, run_id, reason, self.options.node)
        except quiesce.QuiesceError as err:
            self.log(f"cannot write abort for {run_id}: {err}")

    def _busy(self, ev: Event) -> None:
        parsed = self.keys.parse(ev.key)
        if parsed is not None and ev.value and self.options.node in spec_members(ev.value):
            self._decline(parsed[0], f"{self.options.node} is busy with another run")

    def _decline(self, run_id: str, why: str) -> dict[str, Any]:
        """Abort a run this node will not take part in, and write its ``done``: nobody waits for it."""
        self.log(f"run {run_id}: declined: {why}")
        self._abort(run_id, why)
        node = self.options.node
        record = {"node": node, "thawed_by": NOT_FROZEN, "local": quiesce.FAILED, "error": why}
        with contextlib.suppress(quiesce.QuiesceError):
            self.store.put(self.keys.key(run_id, "done", node), record)
        return record

    def _probe(self) -> bool:
        if self.lease is None:
            return False
        try:
            return self._probe_store.keepalive(self.lease) > 0
        except quiesce.QuiesceError:
            return False

    # -- one run -----------------------------------------------------------------

    def serve_run(self, run_id: str, spec: Mapping[str, Any], watch: Watch) -> dict[str, Any]:
        """Take part in one run; returns the ``done/<node>`` record it wrote."""
        node = self.options.node
        try:
            run_spec = RunSpec.parse(spec)
        except FleetError as err:
            return self._decline(run_id, f"{node}: cannot serve this run: {err}")
        self.log(f"run {run_id}: starting")
        self.state = {"state": "running", "run": run_id}
        self._publish_quietly()
        part = NodeRun(
            self.store, self.keys, node, run_id, run_spec, watch, self._probe, self._busy, self.stopping
        )
        part.lease = self.lease
        result: quiesce.RunResult | None = None
        error: str | None = None
        config_error = False
        try:
            loaded = quiesce.load_config(self.options.config_path)
            cfg = loaded.config
            if not cfg.fs_freeze_enabled:
                raise FleetAbort("fsFreezeEnabled is false here: this node cannot hold a fleet freeze")
            snap = cfg.quiesce.snapshot
            if snap.mode.value == "hold":
                raise FleetAbort("snapshot mode hold cannot serve a fleet run (use command or none)")
            part.spec_argv = tuple(snap.argv)
            part.window_store = self._window_store
            part.snapshot_timeout_s = float(snap.timeout_s or cfg.quiesce.freeze_timeout_s)
            if run_spec.deadline_s is not None:
                loaded = with_deadline(loaded, run_spec.deadline_s)
            options = quiesce.RunOptions(
                config_path=self.options.config_path,
                pluginhost_path=self.options.pluginhost_path,
                vmbackup_conf=self.options.vmbackup_conf,
                run_dir=self.options.run_dir,
                before_freeze=part.before_freeze,
            )
            result = quiesce.run(loaded, snapshot=part.snapshot, options=options)
        except (quiesce.QuiesceError, FleetAbort) as err:
            error = f"{type(err).__name__}: {err}"
            config_error = isinstance(err, quiesce.ConfigError)
        finally:
            part.stop()
        record = part.record(result, error)
        record["config_error"] = config_error
        record["node"] = node
        reached_freeze = "ready_mono_ns" in part.times
        if (
            not part.snapshot_ok
            and part.ending is None
            and (not reached_freeze or "frozen_mono_ns" in part.times)
        ):
            # This node cannot go on: tell the others now instead of letting them wait.
            self._abort(run_id, f"{node}: {record.get('error') or record.get('snapshot_detail') or 'failed'}")
        self._report(run_id, record)
        for ev in part.deferred:  # other runs that named this node while it was frozen
            self._busy(ev)
        self.runs_served += 1
        self.state = {
            "state": "idle",
            "last_run": run_id,
            "last_local": record.get("local"),
            "last_thawed_by": record.get("thawed_by"),
        }
        self._publish_quietly()
        self.log(f"run {run_id}: {record.get('local')}, thawed by {record.get('thawed_by')}")
        return record

    def _report(self, run_id: str, record: dict[str, Any]) -> None:
        """Write ``done/<node>``, retrying for a while: the verdict needs it (etcd may be back soon)."""
        deadline = time.monotonic() + REPORT_RETRY_S
        while True:
            try:
                self.store.put(self.keys.key(run_id, "done", self.options.node), record)
                return
            except quiesce.QuiesceError as err:
                if time.monotonic() >= deadline or self.stopping.is_set():
                    self.log(f"run {run_id}: cannot report the result: {err}")
                    return
                time.sleep(0.5)

    def _publish_quietly(self) -> None:
        try:
            self._publish()
        except quiesce.QuiesceError as err:
            self.log(f"cannot update the registration: {err}")
