"""Fleet runs on a lab of three agents: verdicts, revision order, the cut proof and its negative control."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from quiesce import APPLICATION, FAILED
from quiesce.fleet.demo import Chain, restored_sequences
from quiesce.fleet.protocol import PROTOCOL_VERSION
from quiesce.fleet.writer import cut_violations

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(300)]


def _first(timeline, key):
    return min(r["revision"] for r in timeline if r["key"] == key)


def _last(timeline, key):
    return max(r["revision"] for r in timeline if r["key"] == key)


def test_run_is_consistent_and_ordered_by_revision(lab3):
    """By etcd revision: ready <= freeze < frozen <= cut < snapshotted <= thaw < done; exit 0.

    Each step is committed in the transaction of the last report it waited
    for: that report and the step share one revision, every other report of
    the kind comes before it.
    """
    code, out = lab3.fleet_run()
    assert code == 0, out
    assert out["consistency"] == APPLICATION and out["cut_committed"] and out["abort"] is None
    tl = out["timeline"]
    for report, step in (("ready", "freeze"), ("frozen", "cut"), ("snapshotted", "thaw")):
        revs = sorted(r["revision"] for r in tl if r["key"] == report)
        assert len(revs) == 3 and revs[-1] == _first(tl, step) and revs[-2] < revs[-1], (report, tl)
    assert _first(tl, "freeze") < _first(tl, "frozen")
    assert _first(tl, "cut") < _first(tl, "snapshotted")
    assert _first(tl, "thaw") < _first(tl, "done")
    assert {n["node"] for n in out["nodes"]} == {"n1", "n2", "n3"}
    for n in out["nodes"]:
        assert n["thawed_by"] == "thaw" and n["local"] == APPLICATION and n["window_ns"] > 0
    for node in lab3.nodes:
        assert node.events()[-2:] == ["pre", "post ok ok"]
    assert all(p.exists() for p in lab3.snapshots(out["run_id"]))


def test_an_agents_watch_carries_only_the_runs_own_keys(lab3):
    """What every agent watches (``runs/``) gets the run's keys only: no node's report wakes another node."""
    from quiesce.fleet.protocol import Keys

    keys = Keys("lab")
    start_rev, _ = lab3.client_call(lambda s: s.get_prefix(keys.runs))
    watch = lab3.client_call(lambda s: s.watch(keys.runs, start_rev + 1))
    try:
        code, out = lab3.fleet_run()
        assert code == 0, out
        seen = []
        while (ev := watch.get(1.0)) is not None and ev.kind != "lost":
            seen.append(ev.key)
    finally:
        watch.close()
    run = keys.run(out["run_id"])
    mine = {k[len(run) :] for k in seen if k.startswith(run)}
    assert mine == {"spec", "alive", "freeze", "cut", "thaw", "verdict"}
    # The reports are all there, under the run's own reports prefix.
    reports = [r for r in out["timeline"] if r["node"] is not None]
    assert len(reports) == 4 * len(lab3.nodes)


def test_cut_proof_and_negative_control(lab3):
    """Fleet cuts under the distributed writer restore consistent; per-VM one-by-one backups do not."""
    chain = Chain(lab3)
    try:
        fleet_runs = []
        for _ in range(3):
            time.sleep(0.3)
            code, out = lab3.fleet_run()
            assert code == 0, out
            fleet_runs.append(out["run_id"])
        sequential = []
        for node in lab3.nodes:
            time.sleep(0.3)
            code, out = lab3.fleet_run("--members", node.name)
            assert code == 0, out
            sequential.append(out["run_id"])
    finally:
        rounds = chain.stop()
    assert rounds > 100
    for run_id in fleet_runs:
        seqs = restored_sequences(lab3, run_id)
        assert seqs is not None and all(seqs)
        assert cut_violations(seqs) == [], run_id
    # The negative control: node k's snapshot from its own one-node run, taken one after another.
    images = [lab3.snapshots(run_id)[k] for k, run_id in enumerate(sequential)]
    from quiesce.fleet.writer import LOG_NAME, parse_seq

    seqs = [parse_seq(lab3.restore(img, LOG_NAME)) for img in images]
    violations = cut_violations(seqs)
    assert violations, f"per-VM sequential snapshots unexpectedly consistent: {[len(s) for s in seqs]}"


def test_status_shows_members_and_runs(lab3):
    """``fleet status --json``: three healthy members, the last runs with each node's part."""
    lab3.fleet_run()
    argv = [
        *lab3.client_argv(),
        sys.executable,
        "-m",
        "quiesce",
        "fleet",
        "status",
        "--etcd",
        lab3.etcd_url,
        "--group",
        "lab",
        "--json",
        "--last",
        "2",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert sorted(m["node"] for m in status["members"]) == ["n1", "n2", "n3"]
    assert all(m["health"] == "idle" and m["last_thawed_by"] == "thaw" for m in status["members"])
    assert len(status["runs"]) == 2 and status["missing"] == []
    assert status["runs"][0]["consistency"] == APPLICATION and status["runs"][0]["state"] == "finished"
    text = subprocess.run(argv[:-3], capture_output=True, text=True, timeout=60).stdout
    assert "group lab: 3 agent(s) registered" in text


def test_failed_pre_step_aborts_before_anything_freezes(lab3):
    """One node's pre-script fails with continueBackupOnFailure false: abort, no node frozen, posts run."""
    n2 = lab3.nodes[1]
    lab3.set_config(n2, {"continueBackupOnFailure": False}, pre_extra="exit 3")
    try:
        code, out = lab3.fleet_run()
    finally:
        lab3.set_config(n2, {"continueBackupOnFailure": True}, pre_extra="")
    assert code == 9, out
    assert out["consistency"] == FAILED and not out["cut_committed"]
    assert "n2" in out["abort"]
    keys = {r["key"] for r in out["timeline"]}
    assert "freeze" not in keys and "frozen" not in keys
    for node in lab3.nodes:
        assert node.events()[-1] == ("post skipped failed" if node is n2 else "post failed ok")
    parts = {n["node"]: n for n in out["nodes"]}
    assert parts["n1"]["thawed_by"] == "not-frozen" and parts["n1"]["local"] == FAILED


def test_unregistered_member_is_an_error(lab3):
    """``--members`` naming a node that never registered: exit 1 naming it, nothing written."""
    code, out = lab3.fleet_run("--members", "n1,ghost", "--timeout", "1")
    assert code == 1 and "ghost" in out["error"]


def test_agents_act_only_on_their_group(lab3):
    """A run written under another group's prefix naming our nodes gets no answer from them."""
    spec = {"protocol": PROTOCOL_VERSION, "members": ["n1", "n2", "n3"], "deadline_s": 5}
    lab3.client_call(lambda s: s.put("/quiesce/other/runs/r1/spec", spec))
    time.sleep(1.5)
    _, keys = lab3.client_call(lambda s: s.get_prefix("/quiesce/other/"))
    assert list(keys) == ["/quiesce/other/runs/r1/spec"]
    code, out = lab3.fleet_run()  # and they still serve their own group
    assert code == 0, out


def test_a_malformed_spec_is_declined_with_its_reason(lab3):
    """A spec naming n1 with a deadline that is not a number: n1 aborts that run saying why and
    freezes nothing; so does n2 with a spec of another protocol version; a spec whose members
    are a string names nobody; the agents serve on."""
    bad = {"protocol": PROTOCOL_VERSION, "members": ["n1"], "deadline_s": "soon", "ready_timeout_s": 5}
    stray = {"protocol": PROTOCOL_VERSION, "members": "n1n2n3"}  # "n1" is in it, yet it names nobody
    old = {"members": ["n2"], "deadline_s": 5}  # an older coordinator's: no protocol version
    runs = ("bad1", "bad2", "bad3")
    prefixes = [f"/quiesce/lab/{where}/{run}/" for where in ("runs", "reports") for run in runs]
    try:
        for run, spec in zip(runs, (bad, stray, old), strict=True):
            lab3.client_call(lambda s, r=run, v=spec: s.put(f"/quiesce/lab/runs/{r}/spec", v))
        deadline = time.monotonic() + 15
        dones = ["/quiesce/lab/reports/bad1/done/n1", "/quiesce/lab/reports/bad3/done/n2"]
        while True:
            _, keys = lab3.client_call(lambda s: s.get_prefixes(prefixes))
            if all(d in keys for d in dones) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        done = keys["/quiesce/lab/reports/bad1/done/n1"].value
        assert done["thawed_by"] == "not-frozen" and "deadline_s" in done["error"], done
        assert "deadline_s" in keys["/quiesce/lab/runs/bad1/abort"].value["reason"]
        assert "protocol version is None" in keys["/quiesce/lab/reports/bad3/done/n2"].value["error"]
        assert sorted(keys) == [
            "/quiesce/lab/reports/bad1/done/n1",
            "/quiesce/lab/reports/bad3/done/n2",
            "/quiesce/lab/runs/bad1/abort",
            "/quiesce/lab/runs/bad1/spec",
            "/quiesce/lab/runs/bad2/spec",
            "/quiesce/lab/runs/bad3/abort",
            "/quiesce/lab/runs/bad3/spec",
        ]
        code, out = lab3.fleet_run()
        assert code == 0, out
    finally:
        lab3.client_call(lambda s: s.delete_prefixes(prefixes))


def test_invalid_node_config_exits_10(lab3):
    """A node whose own config is invalid: the run aborts, nothing freezes, exit 10 naming the node."""
    n3 = lab3.nodes[2]
    lab3.set_config(n3, {"timeoutInSeconds": "30"})  # a string: IncorrectJSONConfigFile
    try:
        code, out = lab3.fleet_run()
    finally:
        lab3.set_config(n3, {"timeoutInSeconds": 30})
    assert code == 10, out
    assert out["config_error"] and not out["cut_committed"] and "n3" in out["abort"]
    parts = {n["node"]: n for n in out["nodes"]}
    assert parts["n3"]["config_error"] and not parts["n1"]["config_error"]


def test_expect_counts_registered_agents(lab3):
    """``--expect 3`` takes the three agents; ``--expect 2`` with three registered is an error."""
    code, out = lab3.fleet_run("--expect", "3")
    assert code == 0 and sorted(n["node"] for n in out["nodes"]) == ["n1", "n2", "n3"]
    code, out = lab3.fleet_run("--expect", "2", "--timeout", "1")
    assert code == 1 and "3 agents registered" in out["error"]


def test_sigterm_to_the_coordinator_aborts_the_run(lab3):
    """``fleet run`` stopped by SIGTERM: exit 130, ``abort`` written, nothing frozen, every post step runs."""
    from quiesce.fleet.coordinator import read_run
    from quiesce.fleet.protocol import Keys

    n1 = lab3.nodes[0]
    lab3.set_config(n1, {}, pre_extra="sleep 1.5")
    try:
        start_rev, _ = lab3.client_call(lambda s: s.get_prefix("/quiesce/lab/runs/"))
        proc = subprocess.Popen(lab3.fleet_argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watch = lab3.client_call(lambda s: s.watch("/quiesce/lab/reports/", start_rev + 1))
        run_id = None
        try:
            while run_id is None:
                ev = watch.get(20)
                assert ev is not None and ev.kind == "put"
                if ev.key.endswith("/ready/n2"):
                    run_id = ev.key.split("/")[4]
        finally:
            watch.close()
        proc.terminate()
        proc.communicate(timeout=60)
        assert proc.returncode == 130
    finally:
        lab3.set_config(n1, {}, pre_extra="")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = lab3.client_call(lambda s: read_run(s, Keys("lab"), run_id))
        if all(view.node("done", n.name) for n in lab3.nodes):
            break
        time.sleep(0.2)
    assert view.single["abort"].value["reason"] == "the coordinator was stopped"
    assert "freeze" not in view.single
    assert {view.node("done", n.name).value["thawed_by"] for n in lab3.nodes} == {"not-frozen"}
    for node in lab3.nodes:
        assert node.events()[-1].startswith("post")


def test_a_second_run_while_one_is_in_progress_is_refused(lab3):
    """Two coordinators at once: the busy nodes abort the second run, the first completes."""
    n1 = lab3.nodes[0]
    lab3.set_config(n1, {}, pre_extra="sleep 1.5")
    try:
        first = subprocess.Popen(lab3.fleet_argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.8)
        code2, out2 = lab3.fleet_run()
        out1, _ = first.communicate(timeout=120)
    finally:
        lab3.set_config(n1, {}, pre_extra="")
    assert first.returncode == 0, out1
    assert json.loads(out1)["consistency"] == APPLICATION
    assert code2 == 9 and "busy" in out2["abort"] and not out2["cut_committed"]


def test_an_agent_that_comes_back_joins_a_run_waiting_for_it(lab3):
    """Agent killed, a run naming it starts, the agent restarts: it joins at the barrier; consistent."""
    n3 = lab3.nodes[2]
    n3.agent.kill()
    n3.agent.wait()
    try:
        # Its registration outlives it for the lease's TTL: the run still names it.
        proc = subprocess.Popen(lab3.fleet_argv("--members", "n1,n2,n3"), stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
    finally:
        lab3.start_agent(n3)
    out, _ = proc.communicate(timeout=120)
    result = json.loads(out)
    assert proc.returncode == 0, result
    assert result["consistency"] == APPLICATION
    lab3.wait_registered()


def _run_with_etcd_killed_at_the_barrier(lab3, restart_at_once: bool) -> tuple[int, str, str]:
    """A fleet run whose etcd is SIGKILLed while n2 and n3 wait at the barrier (n1's pre step
    sleeps), restarted at once or after the coordinator ended; its exit code, stdout, stderr."""
    n1 = lab3.nodes[0]
    lab3.set_config(n1, {}, pre_extra="sleep 1")
    try:
        start_rev, _ = lab3.client_call(lambda s: s.get_prefix("/quiesce/lab/runs/"))
        proc = subprocess.Popen(lab3.fleet_argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watch = lab3.client_call(lambda s: s.watch("/quiesce/lab/reports/", start_rev + 1))
        try:
            while True:  # n2 and n3 are ready and waiting at the barrier once n2's ready is in
                ev = watch.get(20)
                assert ev is not None and ev.kind == "put"
                if ev.key.endswith("/ready/n2"):
                    break
        finally:
            watch.close()
        lab3.etcd.kill()
        lab3.etcd.wait()
        if restart_at_once:
            lab3.start_etcd()
        out, err = proc.communicate(timeout=120)
        if not restart_at_once:
            lab3.start_etcd()
    finally:
        lab3.set_config(n1, {}, pre_extra="")
    return proc.returncode, out, err


def test_agents_serve_again_after_etcd_was_killed_inside_a_run(lab3):
    """etcd killed while the nodes wait in a run, then restarted: the next run is served and consistent."""
    _run_with_etcd_killed_at_the_barrier(lab3, restart_at_once=False)
    time.sleep(3)  # the nodes' parts in the broken run end (etcd lost), their results go in
    code, out = lab3.fleet_run("--timeout", "20")
    assert code == 0, out
    assert out["consistency"] == APPLICATION


def test_the_coordinator_reopens_its_watch_when_etcd_comes_back(lab3):
    """etcd killed and restarted at once inside a run: the coordinator goes on and gives a verdict."""
    code, out, err = _run_with_etcd_killed_at_the_barrier(lab3, restart_at_once=True)
    result = json.loads(out)
    # A verdict from the nodes' own reports, not "lost the watch": the run failed (etcd went away
    # at the barrier), every node says why, and nothing was judged consistent.
    assert code == 9, (result, err)
    assert result["consistency"] == FAILED and not result["cut_committed"]
    assert {n["node"] for n in result["nodes"]} == {"n1", "n2", "n3"}
    assert all(n["thawed_by"] is not None for n in result["nodes"]), result["nodes"]
    lab3.wait_registered()


def _slow_snapshot_on_n3(lab3, seconds: int) -> dict[str, str]:
    """Every node's deadline 30 s, n3's snapshot step a sleep; returns the configs to put back."""
    saved = {node.name: node.config.read_text() for node in lab3.nodes}
    for node in lab3.nodes:
        lab3.set_config(node, {"quiesce": {"freezeTimeoutSeconds": 30}})
    slow = {"mode": "command", "argv": ["/bin/sh", "-c", f"sleep {seconds}"], "timeoutSeconds": 20}
    lab3.set_config(lab3.nodes[2], {"quiesce": {"freezeTimeoutSeconds": 30, "snapshot": slow}})
    return saved


def _wait_for_cut(lab3, start_rev: int) -> str:
    """The run id, once its ``cut`` is committed."""
    watch = lab3.client_call(lambda s: s.watch("/quiesce/lab/runs/", start_rev + 1))
    try:
        while (ev := watch.get(30)) is not None and not ev.key.endswith("/cut"):
            pass
    finally:
        watch.close()
    assert ev is not None, "no cut"
    return ev.key.split("/")[-2]


def test_nodes_thaw_when_the_coordinator_is_gone_before_their_thaw(lab3):
    """Coordinator SIGKILLed after the cut while n3's snapshot outlasts its 2 s lease: no thaw can
    come; every node thaws on losing the coordinator, long before its deadline, and the keys say
    the run was not application-consistent."""
    from quiesce.fleet.coordinator import read_run
    from quiesce.fleet.protocol import COORDINATOR_LOST, Keys
    from quiesce.fleet.verdict import judge

    saved = _slow_snapshot_on_n3(lab3, 5)
    try:
        start_rev, _ = lab3.client_call(lambda s: s.get_prefix("/quiesce/lab/runs/"))
        proc = subprocess.Popen(lab3.fleet_argv("--deadline", "30"), stdout=subprocess.DEVNULL)
        run_id = _wait_for_cut(lab3, start_rev)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            view = lab3.client_call(lambda s: read_run(s, Keys("lab"), run_id))
            if all(view.node("done", n.name) is not None for n in lab3.nodes):
                break
            time.sleep(0.2)
    finally:
        for node in lab3.nodes:
            node.config.write_text(saved[node.name])
    verdict = judge(view)
    assert verdict.cut_committed and "thaw" not in view.single
    assert verdict.consistency != APPLICATION
    for node in ("n1", "n2"):
        done = view.node("done", node).value
        assert done["thawed_by"] == COORDINATOR_LOST, done
        assert done["thaw_end_mono_ns"] - done["freeze_start_mono_ns"] < 15e9


def test_a_member_whose_agent_is_gone_ends_the_run_before_the_deadlines(lab3):
    """An agent SIGKILLed while the others are frozen: its lease expires and the run is aborted then.

    Every node's deadline is 30 s; the agent's registration lease is 5 s: the
    others thaw on the coordinator's ``abort`` long before their deadline.
    """
    n3 = lab3.nodes[2]
    saved = _slow_snapshot_on_n3(lab3, 8)
    try:
        start_rev, _ = lab3.client_call(lambda s: s.get_prefix("/quiesce/lab/runs/"))
        proc = subprocess.Popen(
            lab3.fleet_argv("--deadline", "30"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_for_cut(lab3, start_rev)
        killed_at = time.monotonic()
        n3.agent.kill()  # in its 8 s snapshot step: it never reports snapshotted
        n3.agent.wait()
        out, err = proc.communicate(timeout=120)
        ended_after = time.monotonic() - killed_at
    finally:
        lab3.start_agent(n3)
        for node in lab3.nodes:
            node.config.write_text(saved[node.name])
    result = json.loads(out)
    assert proc.returncode == 9, (result, err)
    assert "n3 is gone" in (result["abort"] or ""), result["abort"]
    parts = {n["node"]: n for n in result["nodes"]}
    assert parts["n1"]["thawed_by"] == parts["n2"]["thawed_by"] == "abort"
    assert ended_after < 20, f"the run ended {ended_after:.1f} s after the kill: at the deadlines"
    lab3.wait_registered()


def test_a_failed_snapshot_aborts_the_run_in_its_own_report(lab3):
    """n2's snapshot command fails: its report and the ``abort`` share one transaction; no thaw."""
    n2 = lab3.nodes[1]
    saved = n2.config.read_text()
    failing = {"mode": "command", "argv": ["/bin/sh", "-c", "echo no room >&2; exit 3"], "timeoutSeconds": 2}
    lab3.set_config(n2, {"quiesce": {"snapshot": failing}})
    try:
        code, out = lab3.fleet_run()
    finally:
        n2.config.write_text(saved)
    assert code == 9, out
    assert out["cut_committed"] and "n2: snapshot step failed" in out["abort"], out["abort"]
    tl = out["timeline"]
    assert not [r for r in tl if r["key"] == "thaw"]
    (abort,) = [r["revision"] for r in tl if r["key"] == "abort"]
    assert [r["revision"] for r in tl if r["key"] == "snapshotted" and r["node"] == "n2"] == [abort]
    parts = {n["node"]: n for n in out["nodes"]}
    assert parts["n2"]["verdict"] == FAILED and "no room" in parts["n2"]["why"]
    assert parts["n1"]["thawed_by"] == parts["n3"]["thawed_by"] == "abort"


def test_the_last_report_of_a_kind_commits_its_step(lab3):
    """Whatever the order, only the report that completes its kind commits the step; none while
    ``abort`` is there, nor once the coordinator's ``alive`` is gone (the report is written all the same)."""
    from quiesce.fleet.noderun import NodeRun
    from quiesce.fleet.protocol import STEP_OF, Keys, RunSpec

    keys = Keys("lab")

    def parts(store, run, members):
        spec = RunSpec(tuple(members))
        return {m: NodeRun(store, keys, m, run, spec, None, lambda: True, lambda _ev: None) for m in members}

    def steps(store, run):
        _, records = store.get_prefix(keys.run(run))
        return {k[len(keys.run(run)) :] for k in records}

    def go(store):
        out = {}
        for order in (("a", "b", "c"), ("c", "a", "b"), ("b", "c", "a")):  # the last: highest, middle, lowest
            run = f"step-{''.join(order)}"
            store.put(keys.key(run, "alive"), {})
            nodes = parts(store, run, ("a", "b", "c"))
            committed = {}
            for what, step in STEP_OF.items():
                committed[what] = []
                for m in order:
                    nodes[m]._report(what, {})
                    committed[what].append(step in nodes[m].seen)
                # Every node learns the step (as its watch tells it) before its next report.
                (revision,) = {n.seen[step] for n in nodes.values() if step in n.seen}
                for n in nodes.values():
                    n.seen.setdefault(step, revision)
            out[order] = (committed, steps(store, run))
        run = "step-aborted"
        store.put(keys.key(run, "alive"), {})
        store.put(keys.key(run, "abort"), {"reason": "test"})
        nodes = parts(store, run, ("a", "b"))
        for m in ("a", "b"):
            nodes[m].seen["cut"] = 1
            nodes[m]._report("snapshotted", {})
        out["aborted"] = steps(store, run)
        run = "step-orphaned"  # no alive: the coordinator is gone
        nodes = parts(store, run, ("a",))
        nodes["a"]._report("ready", {})
        out["orphaned"] = steps(store, run)
        _, reports = store.get_prefix(keys.reports_of(run))
        out["orphaned_reports"] = set(reports)
        for r in ("step-abc", "step-cab", "step-bca", "step-aborted", "step-orphaned"):
            store.delete_prefixes([keys.run(r), keys.reports_of(r)])
        return out

    out = lab3.client_call(go)
    last_only = {what: [False, False, True] for what in STEP_OF}
    assert out[("a", "b", "c")] == (last_only, {"alive", "freeze", "cut", "thaw"})
    assert out[("c", "a", "b")] == (last_only, {"alive", "freeze", "cut", "thaw"})
    assert out[("b", "c", "a")] == (last_only, {"alive", "freeze", "cut", "thaw"})
    assert out["aborted"] == {"alive", "abort"}
    assert out["orphaned"] == set()
    # The report is written all the same: the node's part is on record.
    assert keys.key("step-orphaned", "ready", "a") in out["orphaned_reports"]


def test_a_ready_report_of_the_largest_run_fits_in_one_etcd_transaction(lab3):
    """MAX_MEMBERS is etcd's limit: the ready of a run of MAX_MEMBERS nodes is taken, one more is refused."""
    from quiesce.fleet import FleetError
    from quiesce.fleet.noderun import NodeRun
    from quiesce.fleet.protocol import MAX_MEMBERS, Keys, RunSpec

    keys = Keys("lab")

    def ready(store, size):
        run = f"size-{size}"
        members = tuple(f"m{i:03d}" for i in range(size))
        store.put(keys.key(run, "alive"), {})
        node = NodeRun(store, keys, members[0], run, RunSpec(members), None, lambda: True, lambda _ev: None)
        try:
            node._report("ready", {})
            return "taken"
        except FleetError as err:
            return str(err)
        finally:
            store.delete_prefixes([keys.run(run), keys.reports_of(run)])

    assert lab3.client_call(lambda s: ready(s, MAX_MEMBERS)) == "taken"
    refused = lab3.client_call(lambda s: ready(s, MAX_MEMBERS + 1))
    assert "too many operations" in refused


def test_a_node_thawed_by_someone_else_in_the_window_is_not_consistent(lab3):
    """n2's filesystem thawed by another tool in the window: its freeze did not hold; not APPLICATION."""
    n2 = lab3.nodes[1]
    saved = n2.config.read_text()
    thaw_own = 'for t in $QUIESCE_TARGETS; do /sbin/fsfreeze -u "$(printf %b "$t")"; done'
    command = {"mode": "command", "argv": ["/bin/sh", "-c", thaw_own], "timeoutSeconds": 1}
    lab3.set_config(n2, {"quiesce": {"snapshot": command}})
    try:
        code, out = lab3.fleet_run()
    finally:
        n2.config.write_text(saved)
    assert code != 0 and out["consistency"] != APPLICATION, out
    parts = {n["node"]: n for n in out["nodes"]}
    assert parts["n2"]["verdict"] != APPLICATION
    assert parts["n2"]["why"] == "its freeze did not hold through its snapshot", (parts["n2"], out)
    assert parts["n1"]["verdict"] == parts["n3"]["verdict"] == APPLICATION
