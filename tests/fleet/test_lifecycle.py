"""An agent's life around runs: one agent per node name, and a restarted agent's earlier reports.

Each test builds the situation on a lab of three agents (registration lease
2 s), then checks the registration in etcd, what each node's scripts ran and
the run's keys.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quiesce import APPLICATION
from quiesce.fleet.labnode import stop_process
from quiesce.fleet.protocol import Keys

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(300)]
KEYS = Keys("lab")


@pytest.fixture(scope="module")
def lifelab(lab_namespace):
    """Three agents, no writer."""
    from quiesce.fleet.lab import Lab

    with Lab(3, deadline_s=5.0, writer=False) as lab:
        yield lab


@contextlib.contextmanager
def background_run(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """``fleet run`` in the background (stdout and stderr piped); killed if still running at the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _member(lab, name: str) -> dict[str, Any] | None:
    """The registration of ``name`` as etcd has it now."""
    _, records = lab.client_call(lambda s: s.get_prefix(KEYS.member(name)))
    rec = records.get(KEYS.member(name))
    return None if rec is None else dict(rec.value)


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def _wait_report(lab, start_rev: int, suffix: str) -> str:
    """The run id once a report whose key ends with ``suffix`` is written."""
    watch = lab.client_call(lambda s: s.watch(KEYS.reports, start_rev + 1))
    try:
        while True:
            ev = watch.get(30)
            assert ev is not None and ev.kind == "put", ev
            if ev.key.endswith(suffix):
                return ev.key.split("/")[4]
    finally:
        watch.close()


def test_a_second_agent_with_a_taken_name_serves_nothing_until_the_first_leaves(lifelab):
    """An agent started as n1 while n1's agent lives (a cloned machine): n1's registration stays
    the first agent's, the second takes no part in a run naming n1, and registers once the
    first leaves."""
    n1, _, n3 = lifelab.nodes
    stop_process(n3.agent)
    assert _member(lifelab, "n1")["pid"] == n1.agent.pid
    lifelab.start_agent(n3, name="n1")
    try:
        log = n3.home / "agent.log"
        _wait(lambda: "n1 is registered by another agent" in log.read_text(), 20, "no word of the name")
        time.sleep(3)  # more than the lease: a second agent would have registered by now
        assert _member(lifelab, "n1")["pid"] == n1.agent.pid
        events = len(n3.events())
        code, out = lifelab.fleet_run("--members", "n1,n2")
        assert code == 0 and out["consistency"] == APPLICATION, out
        assert len(n3.events()) == events, "the second agent ran steps of the run"
        stop_process(n1.agent)  # the first leaves (its lease is revoked): the second takes the name
        _wait(lambda: (_member(lifelab, "n1") or {}).get("pid") == n3.agent.pid, 20, "not taken over")
    finally:
        stop_process(n3.agent)
        stop_process(n1.agent)
        _wait(lambda: _member(lifelab, "n1") is None, 20, "n1 still registered")
        lifelab.start_agent(n1)
        lifelab.start_agent(n3)
        lifelab.wait_registered()


def test_an_agents_registration_outlives_an_etcd_restart(lifelab):
    """etcd killed and restarted between runs (its leases outlive a restart): every agent keeps the
    registration it made, never waits for its own lease to expire, and the next run is consistent."""

    def made() -> dict[str, int]:
        _, records = lifelab.client_call(lambda s: s.get_prefix(KEYS.members))
        return {KEYS.member_name(k): r.create_revision for k, r in records.items()}

    before = made()
    logs = {n.name: len((n.home / "agent.log").read_text()) for n in lifelab.nodes}
    lifelab.etcd.kill()
    lifelab.etcd.wait()
    time.sleep(1)  # the agents' watches and requests fail meanwhile
    lifelab.start_etcd()
    code, out = lifelab.fleet_run("--timeout", "20")
    assert code == 0 and out["consistency"] == APPLICATION, out
    assert made() == before
    for node in lifelab.nodes:
        assert "registered by" not in (node.home / "agent.log").read_text()[logs[node.name] :]


def test_a_killed_agents_ready_never_counts_for_its_next_life(lifelab):
    """n3 reports ready, is SIGKILLed and restarted, and its next life's pre step is slow; n1's
    ready comes meanwhile. The freeze waits for n3's new ready (its earlier one went with its
    lease): no member is frozen while another still runs its pre steps; consistent."""
    n1, _, n3 = lifelab.nodes
    lifelab.set_config(n1, {}, pre_extra="sleep 5")
    try:
        start_rev, _ = lifelab.client_call(lambda s: s.get_prefix(KEYS.prefix))
        argv = lifelab.fleet_argv("--members", "n1,n2,n3", "--timeout", "40")
        with background_run(argv) as proc:
            _wait_report(lifelab, start_rev, "/ready/n3")
            n3.agent.kill()
            n3.agent.wait()
            lifelab.set_config(n3, {}, pre_extra="sleep 6")
            lifelab.start_agent(n3)
            out, err = proc.communicate(timeout=120)
    finally:
        lifelab.set_config(n1, {}, pre_extra="")
        lifelab.set_config(n3, {}, pre_extra="")
    result = json.loads(out)
    timeline = result["timeline"]
    readies = {r["node"]: r["revision"] for r in timeline if r["key"] == "ready"}
    (freeze,) = [r["revision"] for r in timeline if r["key"] == "freeze"]
    assert sorted(readies) == ["n1", "n2", "n3"], timeline
    assert max(readies.values()) == freeze, timeline  # n3's new ready committed it
    assert proc.returncode == 0 and result["consistency"] == APPLICATION, (result, err)
    lifelab.wait_registered()


def test_the_coordinator_goes_on_after_etcd_restarted_with_its_history_compacted(lifelab):
    """etcd compacted past the last event the coordinator saw, then killed and restarted at the
    barrier: the coordinator's watch cannot go on from that revision (etcd cancels it at once).
    It reads the run again instead, sees the members end their parts (etcd lost), and ends the run
    on that, not on its timeout."""
    n1 = lifelab.nodes[0]
    lifelab.set_config(n1, {}, pre_extra="sleep 2")
    try:
        start_rev, _ = lifelab.client_call(lambda s: s.get_prefix(KEYS.prefix))
        argv = lifelab.fleet_argv("--timeout", "40")
        with background_run(argv) as proc:
            _wait_report(lifelab, start_rev, "/ready/n2")
            now = lifelab.client_call(lambda s: s.put(f"{KEYS.prefix}test-marker", {}))
            lifelab.client_call(lambda s: s.call("/kv/compaction", {"revision": now, "physical": True}))
            lifelab.etcd.kill()
            lifelab.etcd.wait()
            lifelab.start_etcd()
            out, err = proc.communicate(timeout=120)
    finally:
        lifelab.set_config(n1, {}, pre_extra="")
        lifelab.client_call(lambda s: s.delete_prefix(f"{KEYS.prefix}test-marker"), wait_s=10)
    result = json.loads(out)
    assert proc.returncode == 9 and not result["cut_committed"], (result, err)
    assert "ended its part" in result["abort"], result["abort"]
    assert {n["node"] for n in result["nodes"]} == {"n1", "n2", "n3"}
    lifelab.wait_registered()


def test_a_node_writes_nothing_for_another_run_while_frozen(lifelab):
    """A second run names the nodes while they are frozen in a first (n3's snapshot step is slow):
    each node declines it (busy) only after its window, never with a write while frozen; the
    first run is consistent."""
    saved = {node.name: node.config.read_text() for node in lifelab.nodes}
    for node in lifelab.nodes:
        lifelab.set_config(node, {"quiesce": {"freezeTimeoutSeconds": 30}})
    slow = {"mode": "command", "argv": ["/bin/sh", "-c", "sleep 3"], "timeoutSeconds": 20}
    lifelab.set_config(lifelab.nodes[2], {"quiesce": {"freezeTimeoutSeconds": 30, "snapshot": slow}})
    try:
        start_rev, _ = lifelab.client_call(lambda s: s.get_prefix(KEYS.prefix))
        argv = lifelab.fleet_argv("--deadline", "30")
        with background_run(argv) as first:
            watch = lifelab.client_call(lambda s: s.watch(KEYS.runs, start_rev + 1))
            try:
                while (ev := watch.get(30)) is not None and not ev.key.endswith("/cut"):
                    pass
            finally:
                watch.close()
            assert ev is not None, "no cut"
            code2, out2 = lifelab.fleet_run("--timeout", "20")
            out1, err1 = first.communicate(timeout=120)
    finally:
        for node in lifelab.nodes:
            node.config.write_text(saved[node.name])
    result1 = json.loads(out1)
    assert first.returncode == 0 and result1["consistency"] == APPLICATION, (result1, err1)
    assert code2 == 9 and "busy" in (out2["abort"] or ""), out2
    (thaw,) = [r["revision"] for r in result1["timeline"] if r["key"] == "thaw"]
    declined = {r["node"]: r["revision"] for r in out2["timeline"] if r["key"] == "done"}
    assert sorted(declined) == ["n1", "n2", "n3"], out2["timeline"]
    assert min(declined.values()) > thaw, (thaw, out2["timeline"])
