"""Fault trials at random instants: coordinator, agent and etcd killed, stopped or cut off.

Each trial starts a fleet run on three agents, waits for a random point of
it (a key appearing, then a random delay), and injects one fault. After
every trial: no filesystem is left frozen; every node thawed no later than
its own deadline + 50 ms (a SIGKILLed agent's guardian also within 100 ms
of the kill, the engine's own promise for a killed orchestrator); every
node whose agent lived ran its post steps for each pre step; and the
verdict (proved from the keys' revisions, as ``fleet status`` does) is
"application-consistent" only if the cut really held, checked against the
nodes' own timestamps (one machine, one monotonic clock): every freeze
ended before any snapshot began and every snapshot ended before any thaw.

``QUIESCE_FLEET_TRIALS`` sets the number of trials (default 30; the soak
runs 200), ``QUIESCE_FLEET_SEED`` the seed, ``QUIESCE_FLEET_REPORT`` a file
for the per-kind tally.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from quiesce import APPLICATION
from quiesce.fleet.coordinator import read_run
from quiesce.fleet.protocol import Keys
from quiesce.fleet.verdict import judge

DEADLINE_S = 3.0
SLACK_NS = 50_000_000
#: A SIGKILLed agent's guardian thaws within this of the kill (as for any killed orchestrator).
KILLED_SLACK_NS = 100_000_000
TRIALS = int(os.environ.get("QUIESCE_FLEET_TRIALS", "30"))

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120 + 20 * TRIALS)]
KINDS = (
    "coordinator-before-freeze",
    "coordinator-while-frozen",
    "coordinator-after-cut",
    "link-down-while-frozen",
    "agent-killed",
    "etcd-stopped",
    "etcd-killed",
)
KEYS = Keys("lab")


@pytest.fixture(scope="module")
def faultlab(lab_namespace):
    """Three agents with a 3 s deadline; the pre step and the snapshot step take a little time."""
    from quiesce.fleet.lab import Lab

    with Lab(3, deadline_s=DEADLINE_S, pre_extra="sleep 0.2", snap_extra="sleep 0.3", writer=False) as lab:
        yield lab


def _watch_for(lab, pattern: str, start_rev: int, timeout_s: float):
    """Wait (in the client namespace) for a run's key or report matching ``pattern``; its run id or None."""
    watch = lab.client_call(lambda s: s.watch([KEYS.runs, KEYS.reports], start_rev))
    deadline = time.monotonic() + timeout_s
    rx = re.compile(pattern)
    try:
        while time.monotonic() < deadline:
            ev = watch.get(0.2)
            if ev is None:
                continue
            if ev.kind == "lost":
                return None
            if ev.kind == "put" and rx.search(ev.key):
                return KEYS.parse(ev.key)[0]
    finally:
        watch.close()
    return None


def _guardian_thaws(node, since_bytes: int) -> list[int]:
    """Thaw end times the node's guardian logged after ``since_bytes`` of its log."""
    log = Path(node.run_dir) / "guardian.log"
    try:
        text = log.read_bytes()[since_bytes:].decode()
    except FileNotFoundError:
        return []
    return [int(m) for m in re.findall(r"event=thaw .*end_ns=(\d+)", text)]


def _tail(path: Path, lines: int = 12) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def _log_size(node) -> int:
    try:
        return (Path(node.run_dir) / "guardian.log").stat().st_size
    except FileNotFoundError:
        return 0


def _trial(lab, kind: str, rng: random.Random) -> dict:
    start_rev, _ = lab.client_call(lambda s: s.get_prefix(KEYS.runs), wait_s=10)
    pre_counts = {n.name: Counter(e.split()[0] for e in n.events()) for n in lab.nodes}
    log_sizes = {n.name: _log_size(n) for n in lab.nodes}
    coordinator = subprocess.Popen(
        lab.fleet_argv("--timeout", "8", "--deadline", str(DEADLINE_S)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        return _fault(lab, kind, rng, coordinator, start_rev, pre_counts, log_sizes)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        coordinator.communicate()


def _fault(lab, kind, rng, coordinator, start_rev, pre_counts, log_sizes) -> dict:
    victim = rng.choice(lab.nodes)
    trigger, delay = {
        "coordinator-before-freeze": (r"/ready/", rng.uniform(0, 0.15)),
        "coordinator-while-frozen": (r"/freeze$", rng.uniform(0, 0.03)),
        "coordinator-after-cut": (r"/cut$", rng.uniform(0, 0.3)),
        "link-down-while-frozen": (rf"/frozen/{victim.name}$", rng.uniform(0, 0.1)),
        "agent-killed": (rng.choice([r"/ready/", r"/freeze$", r"/cut$"]), rng.uniform(0, 0.1)),
        "etcd-stopped": (rng.choice([r"/freeze$", r"/cut$"]), rng.uniform(0, 0.05)),
        "etcd-killed": (rng.choice([r"/freeze$", r"/cut$"]), rng.uniform(0, 0.05)),
    }[kind]
    run_id = _watch_for(lab, trigger, start_rev + 1, 20)
    time.sleep(delay)
    t_fault = time.monotonic_ns()
    killed_agent = None
    if kind.startswith("coordinator"):
        coordinator.kill()
    elif kind == "link-down-while-frozen":
        lab.set_link(victim, False)
        time.sleep(DEADLINE_S + 0.7)
        lab.set_link(victim, True)
    elif kind == "agent-killed":
        victim.agent.kill()
        victim.agent.wait()
        killed_agent = victim
    elif kind == "etcd-stopped":
        lab.etcd.send_signal(signal.SIGSTOP)
        time.sleep(DEADLINE_S + 0.7)
        lab.etcd.send_signal(signal.SIGCONT)
    elif kind == "etcd-killed":
        lab.etcd.kill()
        lab.etcd.wait()
        time.sleep(0.3)
        lab.start_etcd()
    coordinator.communicate(timeout=60)
    if killed_agent is not None:
        lab.start_agent(killed_agent)
    # Every node that lives has finished its part: its result is in etcd (it retries until it is).
    view = None
    if run_id is not None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            view = lab.client_call(lambda s: read_run(s, KEYS, run_id), wait_s=10)
            if all(view.node("done", n.name) is not None for n in lab.nodes if n is not killed_agent):
                break
            time.sleep(0.2)
    lab.wait_registered()
    return _check(lab, kind, run_id, view, t_fault, killed_agent, pre_counts, log_sizes)


def _check(lab, kind, run_id, view, t_fault, killed_agent, pre_counts, log_sizes) -> dict:
    kill_to_thaw: list[int] = []
    lates: list[int] = []
    # 0 filesystems left frozen.
    for node in lab.nodes:
        assert not node.thaw_if_frozen(), f"{kind}: {node.name} was left frozen"
    # Every pre step got its post step (a SIGKILLed agent's run is the one exception).
    for node in lab.nodes:
        counts = Counter(e.split()[0] for e in node.events())
        new_pre = counts["pre"] - pre_counts[node.name]["pre"]
        new_post = counts["post"] - pre_counts[node.name]["post"]
        if node is not killed_agent:
            assert new_post == new_pre, f"{kind}: {node.name} ran {new_pre} pre and {new_post} post steps"
    if view is None:
        return {"kind": kind, "verdict": "no-run"}
    # Thawed no later than the local deadline + 50 ms.
    for node in lab.nodes:
        done = view.node("done", node.name)
        if node is killed_agent:
            frozen = view.node("frozen", node.name)
            deadline = None if frozen is None else frozen.value["t_mono_ns"] + frozen.value["deadline_in_ns"]
            for end in _guardian_thaws(node, log_sizes[node.name]):
                kill_to_thaw.append(end - t_fault)
                # The engine's own promise for a killed orchestrator (tests/privileged/test_guardian.py).
                assert end <= t_fault + KILLED_SLACK_NS, (
                    f"{kind}: killed {node.name} thawed {(end - t_fault) / 1e6:.1f} ms after the kill"
                )
                if deadline is not None:
                    assert end <= deadline + SLACK_NS, f"{kind}: killed {node.name} thawed after its deadline"
            continue
        assert done is not None, f"{kind}: {node.name} never reported"
        d = done.value
        if d.get("freeze_start_mono_ns") and d.get("deadline_mono_ns") and d.get("thaw_end_mono_ns"):
            late = d["thaw_end_mono_ns"] - d["deadline_mono_ns"]
            lates.append(late)
            assert late <= SLACK_NS, f"{kind}: {node.name} thawed {late / 1e6:.1f} ms after its deadline"
    verdict = judge(view)
    if verdict.consistency == APPLICATION:
        dones = [view.node("done", n.name).value for n in lab.nodes]
        assert max(d["freeze_end_mono_ns"] for d in dones) <= min(d["snapshot_start_mono_ns"] for d in dones)
        assert max(d["snapshot_end_mono_ns"] for d in dones) <= min(d["thaw_start_mono_ns"] for d in dones)
        assert all(d["thawed_by"] == "thaw" for d in dones)
    return {
        "kind": kind,
        "verdict": verdict.consistency,
        "kill_to_thaw_ns": kill_to_thaw,
        "thaw_after_deadline_ns": lates,
        "thawed_by": sorted({str(p.thawed_by) for p in verdict.nodes}),
    }


def test_fault_trials(faultlab):
    """Random faults at random instants; the safety checks hold after every one."""
    seed = int(os.environ.get("QUIESCE_FLEET_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    results = []
    for i in range(TRIALS):
        kind = KINDS[i % len(KINDS)]
        try:
            results.append(_trial(faultlab, kind, rng))
        except AssertionError as err:
            logs = "\n".join(
                f"--- {n.name} agent.log:\n" + "\n".join(_tail(n.home / "agent.log")) for n in faultlab.nodes
            )
            raise AssertionError(f"trial {i} ({kind}, seed {seed}): {err}\n{logs}") from err
    tally = Counter((r["kind"], r["verdict"]) for r in results)
    report = os.environ.get("QUIESCE_FLEET_REPORT")
    if report:
        Path(report).write_text(
            json.dumps(
                {
                    "seed": seed,
                    "trials": results,
                    "tally": [[k, v, n] for (k, v), n in sorted(tally.items())],
                },
                indent=1,
            )
        )
    assert len(results) == TRIALS
    # The faults really interfered: most runs that broke were not judged consistent.
    assert any(r["verdict"] not in (APPLICATION, "no-run") for r in results)
