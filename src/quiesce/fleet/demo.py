"""``quiesce fleet demo``: a whole fleet on this machine, one cut, restored and checked.

It starts etcd (from PATH) and N agents, each in its own network namespace
and mount namespace with its own loop filesystem (``quiesce.fleet.lab``),
runs the distributed writer across them (each write causally follows the
previous one on another node), takes one fleet cut whose snapshot step is a
reflink copy of each node's disk image, restores every snapshot, and checks
that together they form a consistent cut.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Any, TextIO

from quiesce.fleet import FleetError
from quiesce.fleet.lab import Lab
from quiesce.fleet.writer import LOG_NAME, cut_violations, parse_seq
from quiesce.sandbox import enter_private_mount_namespace


def check_prerequisites() -> None:
    """Root, etcd on PATH, pyroute2 and etcd3gw importable; a clear error otherwise."""
    if os.geteuid() != 0:
        raise FleetError("the fleet demo needs root (namespaces, loop devices, mount)")
    for tool in ("etcd", "nsenter", "unshare", "mkfs.xfs", "mkfs.ext4", "losetup"):
        if shutil.which(tool) is None:
            raise FleetError(
                f"{tool} is not installed (apt-get install etcd-server xfsprogs e2fsprogs util-linux)"
            )
    try:
        import etcd3gw  # noqa: F401
        import pyroute2  # noqa: F401
    except ImportError as err:
        raise FleetError(f"the fleet demo needs the extra: pip install 'quiesce[fleet]' ({err})") from err


def restored_sequences(lab: Lab, run_id: str) -> list[list[int]] | None:
    """Each node's ``seq.log`` from its restored snapshot, in node order (None if one is missing)."""
    seqs = []
    for image in lab.snapshots(run_id):
        if not image.exists():
            return None
        seqs.append(parse_seq(lab.restore(image, LOG_NAME)))
    return seqs


class Chain:
    """The distributed writer running in the lab's client namespace."""

    def __init__(self, lab: Lab) -> None:
        self.proc = subprocess.Popen(
            lab.writer_argv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "driving":
            raise FleetError(f"the writer did not start: {self.proc.communicate()[1]}")

    def stop(self) -> int:
        """Stop it; returns how many full rounds it wrote."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise FleetError(f"the writer failed: {err.strip()[-500:]}")
        return int(out.split()[0])


def run_demo(agents: int = 3, deadline_s: float = 5.0) -> dict[str, Any]:
    """Build the lab, take one cut under the writer, restore and check it."""
    if not 1 <= agents <= 32:
        raise ValueError("--agents must be between 1 and 32")
    check_prerequisites()
    enter_private_mount_namespace()
    with Lab(agents, deadline_s=deadline_s) as lab:
        chain = Chain(lab)
        try:
            time.sleep(0.5)
            code, result = lab.fleet_run("--deadline", str(deadline_s))
            time.sleep(0.3)
        finally:
            rounds = chain.stop()
        run_id = result.get("run_id")
        if run_id is None:
            raise FleetError(f"the fleet run failed: {result.get('error')}")
        seqs = restored_sequences(lab, run_id)
        violations = ["a snapshot is missing"] if seqs is None else cut_violations(seqs)
        return {
            "agents": agents,
            "etcd": lab.etcd_url,
            "run_id": run_id,
            "exit": code,
            "verdict": result.get("consistency"),
            "nodes": result.get("nodes", []),
            "timeline": result.get("timeline", []),
            "phases_ns": result.get("phases_ns", {}),
            "writer_rounds": rounds,
            "restored_tops": [] if seqs is None else [len(s) for s in seqs],
            "violations": violations,
            "cut_consistent": not violations,
        }


def print_demo(outcome: dict[str, Any], out: TextIO) -> None:
    """The demo's timeline and its check, for a terminal."""
    n = outcome["agents"]
    out.write(f"lab: etcd at {outcome['etcd']} in its own network namespace; {n} agents, each in its own\n")
    out.write("     network and mount namespace with its own ext4 loop filesystem; a distributed writer\n")
    out.write("     writes n to node 1, waits for the answer, then node 2, ..., then n+1 to node 1\n")
    out.write(f"fleet run {outcome['run_id']}: the keys in etcd revision order\n")
    for row in outcome["timeline"]:
        who = f" {row['node']}" if row["node"] else ""
        out.write(f"  rev {row['revision']:>6}  {row['key']}{who}\n")
    phases = outcome["phases_ns"]
    if phases:
        out.write("when the coordinator saw each step, from the start of the run:\n")
    for name in ("freeze", "cut", "thaw", "all_done"):
        if name in phases:
            out.write(f"  {name:<16} +{phases[name] / 1e6:8.1f} ms\n")
    for node in outcome["nodes"]:
        window = "" if node.get("window_ns") is None else f"frozen {node['window_ns'] / 1e6:.1f} ms, "
        out.write(f"  {node['node']:<6} {window}thawed by {node.get('thawed_by')}: {node['verdict']}\n")
    out.write(f"verdict: {outcome['verdict']} (exit {outcome['exit']})\n")
    tops = outcome["restored_tops"]
    out.write(f"writer: {outcome['writer_rounds']} rounds; restored snapshots hold up to {tops}\n")
    if outcome["cut_consistent"]:
        out.write("restored snapshots: a consistent cut (no node holds a write that follows a missing one)\n")
    else:
        for v in outcome["violations"]:
            out.write(f"VIOLATION: {v}\n")
