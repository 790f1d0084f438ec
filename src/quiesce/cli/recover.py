"""``quiesce recover``: undo what a dead freeze left (``quiesce thaw`` is :mod:`quiesce.cli.thaw`).

Recovery acts only on what a ledger provably quiesce's own lists, only
under the freeze lock (so never while a freeze or its guardian lives), and
only on mounts whose ID and device still match. It restores
``rcu_expedited`` as the ledger records (:mod:`quiesce.engine.rcu`), and
kills what is left in the cgroups of runs that died.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from quiesce.cli.exits import Exit
from quiesce.cli.output import SafeStream, guarded_stdout
from quiesce.cli.render import emit_json, print_thaw
from quiesce.cli.thaw import recover_dead
from quiesce.engine import ledger as ledger_mod
from quiesce.engine import lock as lock_mod
from quiesce.engine.proof import open_proven
from quiesce.engine.rundir import RunDir
from quiesce.errors import LedgerError
from quiesce.runner.run import RUN_LOCK
from quiesce.supervise.cgroups import kill_orphaned_run_cgroups
from quiesce.supervise.notify import NOTIFY_PREFIX


def cmd_recover(args: argparse.Namespace) -> int:
    """``quiesce recover``: undo what a crashed freeze left, and nothing else."""
    out: dict[str, Any] = {}
    code: int = Exit.OK
    run_dir = RunDir.open_existing(args.run_dir)
    if run_dir is None:
        out["message"] = f"nothing to recover (no run directory {args.run_dir})"
    else:
        with run_dir:
            try:
                code = _recover_in(run_dir, args.wait, out)
            except LedgerError as err:
                # Not provably quiesce's: nothing it names is touched. The cgroups still are.
                out["error"] = str(err)
                code = Exit.ERROR
            out["notify_dirs_removed"] = _remove_stale_notify_dirs(run_dir)
    out["leftover_cgroups_killed"] = kill_orphaned_run_cgroups()
    # What was done is done: a closed stdout or a reader gone changes no exit status.
    with guarded_stdout() as stdout:
        if args.json:
            emit_json(out, stdout)
        else:
            if "error" in out:
                SafeStream("stderr", sys.stderr).write(f"quiesce: {out['error']}\n")
            print_thaw(out)
            if out["leftover_cgroups_killed"]:
                print(f"killed leftover script cgroups: {', '.join(out['leftover_cgroups_killed'])}")
            if out.get("notify_dirs_removed"):
                print(f"removed notify directories of dead runs: {', '.join(out['notify_dirs_removed'])}")
    return code


def _remove_stale_notify_dirs(run_dir: RunDir) -> list[str]:
    """Remove the notify socket directories of runs that died (none is left while a run holds run.lock).

    A run that starts after the lock was looked at makes its directory
    meanwhile: one whose run's process lives is its, and stays.
    """
    if lock_mod.held_by(run_dir, RUN_LOCK)[0]:
        return []
    stale = [
        n
        for n in os.listdir(run_dir.fd)
        if n.startswith(NOTIFY_PREFIX) and not os.path.exists(f"/proc/{ledger_mod.run_pid(n)}")
    ]
    for name in stale:
        with contextlib.suppress(OSError):
            run_dir.remove_private(name)
    return stale


def _recover_in(run_dir: RunDir, wait_s: float, out: dict[str, Any]) -> int:
    led = ledger_mod.read(run_dir)
    if led is None:
        out["message"] = f"nothing to recover (no ledger in {run_dir.path})"
        return Exit.OK
    holder = open_proven(led.pid, led.pid_start, led.token, led.proof_fd)
    if holder is not None:
        os.close(holder)
        out["message"] = f"a freeze is in progress (pid {led.pid}); nothing to recover"
        return Exit.OK
    code = recover_dead(run_dir, led, wait_s, out)
    return Exit.OK if code is None else code  # gone meanwhile: nothing left to recover
