"""Three PostgreSQL shards under cross-shard two-phase-commit transfers: every fleet cut restores."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from quiesce import APPLICATION
from tests.fleet import pg2pc

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(900)]

CYCLES = int(os.environ.get("QUIESCE_FLEET_PG_CYCLES", "10"))


def _postgres_missing() -> str | None:
    for tool in (pg2pc.PG_BIN / "initdb", pg2pc.PG_BIN / "pg_ctl"):
        if not tool.exists():
            return f"{tool} missing: run tests/db/install.sh"
    if subprocess.run(["id", "-u", "postgres"], capture_output=True, check=False).returncode != 0:
        return "no postgres user: run tests/db/install.sh"
    return None


@pytest.fixture(scope="module")
def pglab(lab_namespace):
    """Three nodes, each with a PostgreSQL shard on its own loop filesystem."""
    why = _postgres_missing()
    if why:
        pytest.skip(why)
    from quiesce.fleet.lab import Lab

    with Lab(3, deadline_s=8.0, size_mb=160, writer=False) as lab:
        try:
            for node in lab.nodes:
                pg2pc.start_shard(lab, node)
            yield lab
        finally:
            for node in lab.nodes:
                pg2pc.stop_shard(lab, node)


def test_two_phase_commit_transfers_survive_every_fleet_cut(pglab):
    """Over CYCLES fleet cuts under load: total conserved, nothing half applied after in-doubt resolution."""
    argv = [
        *pglab.client_argv(),
        sys.executable,
        "-m",
        "tests.fleet.pg2pc",
        *(n.address for n in pglab.nodes),
    ]
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_ids = []
    try:
        assert load.stdout is not None and load.stdout.readline().strip() == "driving"
        for _ in range(CYCLES):
            time.sleep(0.3)
            code, out = pglab.fleet_run("--deadline", "8")
            assert code == 0 and out["consistency"] == APPLICATION, out
            run_ids.append(out["run_id"])
            assert load.poll() is None, load.stderr.read() if load.stderr else ""
    finally:
        load.terminate()
        stdout, stderr = load.communicate(timeout=120)
    assert load.returncode == 0, stderr
    transfers = int(stdout.split()[-1])
    assert transfers > CYCLES
    in_doubt = 0
    for run_id in run_ids:
        result = pg2pc.check_restored(pglab.snapshots(run_id), pglab.fstype)
        assert result["problems"] == [], (run_id, result)
        assert result["applied"] > 0
        in_doubt += int(result["in_doubt"])
    print(f"{CYCLES} cycles, {transfers} transfers, {in_doubt} in-doubt prepared transactions resolved")
