"""One node's part in one fleet run: the single-node run with a barrier before and inside its window.

The node's own ``quiesce.run`` does everything local (its config, scripts,
hooks, targets, guardian). Two callbacks tie it to the fleet:

- ``before_freeze`` (after the pre steps, pre-flush and guardian arming):
  report ``ready/<node>``, wait for ``freeze``. Anything else (``abort``, the
  coordinator's lease gone, etcd lost, the wait timing out) raises: nothing
  gets frozen, the post steps still run.
- the snapshot step (inside the window): report ``frozen/<node>``, wait for
  ``cut``, take the node's snapshot, report ``snapshotted/<node>``, wait for
  ``thaw``. It returns at the latest at the node's own deadline, when its
  guardian thaws anyway. Whatever ends the wait is recorded.

Each report is one transaction that also commits the step when this node's
report is the last one missing (:mod:`quiesce.fleet.protocol`); the node
that commits a step needs no event to learn it.

Nothing here writes to a file while frozen: the only I/O is to etcd, and
only this run's reports (another run's spec seen while frozen is declined
by the agent after this run).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import quiesce
from quiesce.engine.mountinfo import escape_path
from quiesce.fleet.nodestep import prepare, run_command
from quiesce.fleet.protocol import (
    ABORT,
    AFTER_STEP,
    AGENT_STOPPED,
    COORDINATOR_LOST,
    DEADLINE,
    ETCD_LOST,
    NOT_FROZEN,
    PROGRESS,
    STEP_OF,
    THAW,
    Keys,
    RunSpec,
    write_abort,
)
from quiesce.fleet.store import Event, Store, Watch
from quiesce.supervise.launch import Launch
from quiesce.supervise.snapshot_command import unsafe_command

#: How long, while waiting in a run, the node goes without a word from etcd before it asks.
PROBE_INTERVAL_S = 0.25
#: How long before its guardian's deadline a node stops waiting and thaws itself.
EARLY_NS = 200_000_000


class FleetAbort(Exception):
    """The fleet run ended for this node before it could go on (the reason is the message)."""


class NodeRun:
    """This node's participation in run ``run_id`` (see the module doc)."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        run_id: str,
        spec: RunSpec,
        watch: Watch,
        probe: Callable[[], bool],
        on_other_spec: Callable[[Event], None],
        stopping: threading.Event | None = None,
    ) -> None:
        self.store, self.keys, self.node, self.run_id = store, keys, node, run_id
        self.spec = spec
        self.watch = watch
        self._probe = probe
        self._on_other_spec = on_other_spec
        #: Other runs' specs seen while frozen: the agent answers them once this run is over.
        self.deferred: list[Event] = []
        self._stopping = stopping or threading.Event()
        self.seen: dict[str, int] = {}  # freeze/cut/thaw/abort -> revision
        self.ending: str | None = None
        self.abort_reason: str | None = None
        self.thawed_by: str = NOT_FROZEN
        self.thaw_revision: int | None = None
        self.times: dict[str, int] = {}
        self.snapshot_ok = False
        self.snapshot_detail = ""
        self.held = False
        self._freeze: quiesce.Freeze | None = None
        self._probe_stop = threading.Event()
        self._launch: Launch | None = None
        self._command_vars: dict[str, str] = {}
        self._probe_failed = threading.Event()
        #: When etcd last answered this node (an event, a report's transaction): CLOCK_MONOTONIC.
        self._heard_at = time.monotonic()

    # -- waiting ---------------------------------------------------------------

    def _handle(self, ev: Event) -> None:
        if ev.kind == "lost":
            self.ending = self.ending or ETCD_LOST
            return
        self._heard_at = time.monotonic()
        parsed = self.keys.parse(ev.key)
        if parsed is None:
            return
        run, what, node = parsed
        if run != self.run_id:
            if what == "spec" and ev.kind == "put":  # declined (written) after the window, not in it
                (self.deferred.append if "frozen_mono_ns" in self.times else self._on_other_spec)(ev)
            return
        if what == "alive" and ev.kind == "delete":
            self.ending = self.ending or COORDINATOR_LOST
        elif what == "abort" and ev.kind == "put":
            self.seen["abort"] = ev.revision
            self.abort_reason = str((ev.value or {}).get("reason", "aborted"))
            self.ending = self.ending or ABORT
        elif node is None and what in ("freeze", "cut", "thaw") and ev.kind == "put":
            self.seen[what] = ev.revision

    def _drain(self) -> None:
        while (ev := self.watch.get(0)) is not None:
            self._handle(ev)
            if ev.kind == "lost":
                return  # it stays lost: every later read returns it again

    def wait_for(self, what: str, deadline_ns: int) -> str | None:
        """Wait until ``what`` is committed (None) or the run ends for this node (the reason)."""
        while True:
            self._drain()
            if self.ending is not None:
                return self.ending
            if what in self.seen:
                self.times.setdefault(f"{what}_seen_mono_ns", time.monotonic_ns())
                return None
            if self._probe_failed.is_set():
                self.ending = ETCD_LOST
                return self.ending
            if self._stopping.is_set():
                self.ending = AGENT_STOPPED
                return self.ending
            left = deadline_ns - time.monotonic_ns()
            if left <= 0:
                return DEADLINE
            ev = self.watch.get(min(left / 1e9, PROBE_INTERVAL_S))
            if ev is not None:
                self._handle(ev)

    def _probe_loop(self) -> None:
        """Ask etcd whether it still answers whenever it has been silent for PROBE_INTERVAL_S.

        Events and the node's own transactions already prove it answers: the
        probe (a lease keepalive, which needs etcd's leader) is made only in
        a silence, so a run that is moving adds no request to the window.
        """
        failures = 0
        while True:
            wait = PROBE_INTERVAL_S
            if failures == 0:  # after a failure, ask again a full interval later, whatever was heard
                wait -= time.monotonic() - self._heard_at
            if self._probe_stop.wait(max(0.0, wait)):
                return
            if failures == 0 and time.monotonic() - self._heard_at < PROBE_INTERVAL_S:
                continue
            if self._probe():
                failures = 0
                self._heard_at = time.monotonic()
            else:
                failures += 1
                if failures >= 2:
                    self._probe_failed.set()
                    return

    def _warm_window_store(self) -> None:
        """One cheap request on the window's connection now, so the writes while frozen find it open.

        A connection opened (or found closed by the server and reopened)
        inside the window would add a TCP handshake to every node's frozen
        time. A failure here is not one: the write inside the window says its own.
        """
        if self.window_store is None:
            return
        with contextlib.suppress(quiesce.QuiesceError):
            self.window_store.get_prefix(self.keys.key(self.run_id, "freeze"))

    def _stamped(self, value: dict[str, Any]) -> dict[str, Any]:
        """A report's value with who wrote it and when (wall clock, and this machine's monotonic)."""
        return {**value, "node": self.node, "t_unix": time.time(), "t_mono_ns": time.monotonic_ns()}

    def _report(self, what: str, value: dict[str, Any], store: Store | None = None) -> None:
        """Write ``what/<node>``, committing its step in the same transaction if every other report is in.

        Only while the coordinator's ``alive`` is there: once its lease is
        gone the nodes are thawing on their own, and no step commits after.
        """
        value = self._stamped(value)
        step = STEP_OF[what]
        present = [self.keys.key(self.run_id, "alive")]
        newer: list[tuple[str, str, int]] = []
        if what in AFTER_STEP:  # every other node's progress written since the step before: theirs is in
            since = self.seen[AFTER_STEP[what]]
            ranges = self.keys.others_progress(self.run_id, self.node, self.spec.members)
            newer = [(start, end, since) for start, end in ranges]
        else:  # ready: one compare per other member (their progress keys may not exist yet)
            present += [self.keys.key(self.run_id, what, m) for m in self.spec.members if m != self.node]
        report = self.keys.key(self.run_id, what, self.node)
        mine = {report: value, self.keys.key(self.run_id, PROGRESS, self.node): {"last": what}}
        # A ready lives no longer than this agent's registration: a dead agent's counts for no freeze.
        lease = {report: self.lease} if what == "ready" and self.lease else None
        committed, revision = (store or self.store).put_if(
            {**mine, self.keys.key(self.run_id, step): {"by": self.node, "t_unix": value["t_unix"]}},
            present=present,
            absent=[self.keys.key(self.run_id, "abort"), self.keys.key(self.run_id, step)],
            newer=newer,
            lease=lease,
            otherwise=mine,
        )
        self._heard_at = time.monotonic()
        if committed:
            self.seen[step] = revision
            self.times[f"{step}_committed_mono_ns"] = time.monotonic_ns()

    # -- the two callbacks -------------------------------------------------------

    def before_freeze(self, freeze: quiesce.Freeze) -> None:
        """``RunOptions.before_freeze``: ready, then wait for ``freeze``; raise to abort."""
        self._freeze = freeze
        self._drain()
        if self.ending is not None:
            raise FleetAbort(self._why(self.ending))
        # The snapshot command is checked now (root's alone, as in a single-node run), not
        # inside the window: refused, this node is never ready and nothing freezes.
        unsafe = unsafe_command(self.spec_argv[0]) if self.spec_argv else None
        if unsafe is not None:
            raise FleetAbort(f"snapshot command {self.spec_argv[0]} {unsafe}")
        threading.Thread(target=self._probe_loop, name="etcd-probe", daemon=True).start()
        if self.spec_argv:  # the snapshot command's cgroup, pipes and variables: made now, not while frozen
            self._launch = prepare(self.run_id)
            self._command_vars = self._command_env(freeze)
        targets = [t.mount.mount_point for t in freeze.targets]
        self._warm_window_store()
        self.times["ready_mono_ns"] = time.monotonic_ns()
        self._report("ready", {"targets": targets})
        timeout_ns = int(self.spec.ready_timeout_s * 1e9)
        ending = self.wait_for("freeze", time.monotonic_ns() + timeout_ns)
        if ending is not None:
            raise FleetAbort(self._why(ending))
        self._drain()  # an abort that came with the freeze wins: freeze nothing
        if self.ending is not None:
            raise FleetAbort(self._why(self.ending))

    def snapshot(self) -> None:
        """The snapshot step inside the window: frozen, cut, snapshot, snapshotted, thaw."""
        freeze = self._freeze
        assert freeze is not None
        now = time.monotonic_ns()
        cpu_start = time.process_time_ns()  # what the node's window costs this machine, all threads
        left = freeze.remaining_ns() or 0
        deadline = now + left
        # Stop waiting a little before the guardian's deadline: the node thaws itself, in
        # order, and the guardian stays the backstop (its wake-up is not delayed by ours).
        wait_until = deadline - min(EARLY_NS, left // 10)
        self.times["frozen_mono_ns"] = now
        self.times["deadline_mono_ns"] = deadline
        self.thawed_by = DEADLINE  # until something better ends the window
        try:
            self._report("frozen", {"deadline_in_ns": left}, self.window_store)
        except quiesce.QuiesceError as err:
            self.ending = ETCD_LOST
            self.thawed_by = ETCD_LOST
            raise FleetAbort(f"cannot report frozen: {err}") from err
        ending = self.wait_for("cut", wait_until)
        if ending is not None:
            self.thawed_by = ending
            raise FleetAbort(self._why(ending))
        self._take_snapshot(freeze, wait_until)
        if not self.snapshot_ok:
            self._snapshot_failed()
            raise FleetAbort(f"snapshot step failed: {self.snapshot_detail}")
        try:
            report = {"ok": True, "detail": self.snapshot_detail, "held": True}
            self._report("snapshotted", report, self.window_store)
        except quiesce.QuiesceError:
            self.ending = ETCD_LOST
        ending = self.wait_for("thaw", wait_until)
        self.times["window_cpu_ns"] = time.process_time_ns() - cpu_start
        self.thawed_by = THAW if ending is None else ending
        if ending is None:
            self.thaw_revision = self.seen["thaw"]
        self._probe_stop.set()

    def _snapshot_failed(self) -> None:
        """Report the failed snapshot with the run's ``abort``, in one transaction: no thaw can follow."""
        report = self._stamped({"ok": False, "detail": self.snapshot_detail, "held": self.held})
        reason = f"{self.node}: snapshot step failed: {self.snapshot_detail}"
        mine = {self.keys.key(self.run_id, "snapshotted", self.node): report}
        try:
            write_abort(self.window_store or self.store, self.keys, self.run_id, reason, self.node, also=mine)
        except quiesce.QuiesceError:
            self.ending = ETCD_LOST
        self.ending = self.ending or ABORT
        self.abort_reason = self.abort_reason or reason
        self.thawed_by = self.ending
        self._probe_stop.set()

    def stop(self) -> None:
        """Stop the etcd probe and remove the snapshot command's cgroup (the run is over)."""
        self._probe_stop.set()
        if self._launch is not None:
            self._launch.close()
            self._launch = None

    def _why(self, ending: str) -> str:
        if ending == ABORT:
            return f"the fleet run was aborted: {self.abort_reason}"
        return {
            COORDINATOR_LOST: "the coordinator's lease is gone",
            ETCD_LOST: "etcd stopped answering",
            DEADLINE: "timed out waiting for the fleet",
            AGENT_STOPPED: "the agent was told to stop",
        }.get(ending, ending)

    def _take_snapshot(self, freeze: quiesce.Freeze, deadline_ns: int) -> None:
        """The node's own snapshot step: its config's command, or nothing (taken elsewhere)."""
        self.times["snapshot_start_mono_ns"] = time.monotonic_ns()
        argv = self.spec_argv
        if argv:
            timeout_s = min(self.snapshot_timeout_s, max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))
            assert self._launch is not None  # made by before_freeze, with the variables
            self.snapshot_ok, self.snapshot_detail = run_command(
                self._launch, argv, timeout_s, self._command_vars, self.run_id
            )
        else:
            self.snapshot_ok, self.snapshot_detail = True, "mode none: taken by the caller while frozen"
        self.times["snapshot_end_mono_ns"] = time.monotonic_ns()
        # The guardian has not thawed by now: the snapshot was taken frozen.
        self.held = not freeze.guardian_fired
        if not self.held:
            self.snapshot_ok, self.snapshot_detail = False, "the guardian thawed before the snapshot ended"

    #: Set by the agent from the node's config: the snapshot command and its timeout.
    spec_argv: tuple[str, ...] = ()
    snapshot_timeout_s: float = 10.0
    #: The connection for the writes inside the window (a short request timeout).
    window_store: Store | None = None
    #: The agent's registration lease, which its ``ready`` is attached to (see the protocol).
    lease: int | None = None

    def _command_env(self, freeze: quiesce.Freeze) -> dict[str, str]:
        """What the snapshot command gets besides every supervised process's environment.

        ``QUIESCE_TARGETS`` is escaped as in mountinfo, as in a single-node
        run: a mount point's name cannot forge a line.
        """
        return {
            "QUIESCE_TARGETS": "\n".join(escape_path(t.mount.mount_point) for t in freeze.targets),
            "QUIESCE_FLEET_RUN": self.run_id,
            "QUIESCE_FLEET_GROUP": self.keys.group,
            "QUIESCE_NODE": self.node,
        }

    def record(self, result: quiesce.RunResult | None, error: str | None = None) -> dict[str, Any]:
        """``done/<node>``: why the node thawed and what its own run got."""
        out: dict[str, Any] = {
            "thawed_by": self.thawed_by,
            "thaw_revision": self.thaw_revision,
            "snapshot_ok": self.snapshot_ok,
            "snapshot_detail": self.snapshot_detail,
            "held_through_snapshot": self.held,
            "abort_reason": self.abort_reason,
            **self.times,
        }
        if result is None:
            return {**out, "local": quiesce.FAILED, "error": error}
        out["local"] = result.consistency
        out["error"] = None if result.error_name is None else f"{result.error_name}: {result.message}"
        out["pre"] = None if result.pre is None else result.pre.status
        out["post"] = None if result.post is None else result.post.status
        out["hooks_post"] = [r.status for r in result.hooks_post]
        out["run_id_local"] = result.run_id
        rep = result.freeze
        if rep is not None and rep.window_start_ns is not None:
            start = rep.window_start_ns
            ends = [
                start + t.freeze_at_ns + t.freeze_ns
                for t in rep.targets
                if t.freeze_at_ns is not None and t.freeze_ns
            ]
            firsts = [start + t.freeze_at_ns for t in rep.targets if t.freeze_at_ns is not None]
            out["freeze_start_mono_ns"] = min(firsts, default=start)
            out["freeze_end_mono_ns"] = max(ends, default=start)
            out["window_ns"] = rep.window_ns
            if rep.window_ns is not None:
                out["thaw_end_mono_ns"] = start + rep.window_ns
            thaws = [start + t.thaw_at_ns for t in rep.targets if t.thaw_at_ns is not None]
            if thaws:
                out["thaw_start_mono_ns"] = min(thaws)
            out["guardian_reason"] = rep.guardian_reason
            out["fs_states"] = [t.state for t in rep.targets]
            if "thawed-externally" in out["fs_states"]:
                # Someone else thawed one while it was held: when is not known, so nothing
                # says the snapshot was taken before it.
                out["held_through_snapshot"] = False
            # Wall-clock equivalents, for a reader on another machine (indicative only).
            out["freeze_start_unix"] = (
                result.started_unix + (out["freeze_start_mono_ns"] - result.started_ns) / 1e9
            )
        return out
