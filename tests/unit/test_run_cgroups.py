"""Which run cgroups count as orphaned: the pid in the run ID, as new_run_id writes it."""

from __future__ import annotations

import os

from quiesce.engine import ledger as ledger_mod
from quiesce.supervise.cgroups import PARENT, kill_orphaned_run_cgroups

#: Above the kernel's PID_MAX_LIMIT: no process has it.
DEAD = ledger_mod.PID_MAX + 1


def test_orphans_are_found_by_the_pid_in_every_form_of_run_id(tmp_path):
    """A dead run's cgroup goes, its first run ID or a later one ("-PID.N"); a live process's stays."""
    parent = tmp_path / PARENT
    dead = [f"20261202T000000Z-{DEAD}", f"20261202T000000Z-{DEAD}.2", f"20261202T000001Z-{DEAD}.17"]
    alive = [f"20261202T000000Z-{os.getpid()}", f"20261202T000000Z-{os.getpid()}.3"]
    for name in dead + alive:
        (parent / name / "attempt-1").mkdir(parents=True)
    assert sorted(kill_orphaned_run_cgroups(str(tmp_path))) == sorted(dead)
    assert sorted(os.listdir(parent)) == sorted(alive)


def test_later_run_ids_of_a_process_name_it():
    """What new_run_id makes after its first still ends in the process's pid (and a number)."""
    ids = {ledger_mod.new_run_id() for _ in range(3)}
    assert all(i.split("-")[-1].split(".")[0] == str(os.getpid()) for i in ids)
