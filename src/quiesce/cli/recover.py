"""``quiesce thaw`` and ``quiesce recover``: release a holder, or undo what a dead freeze left.

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
import signal
import sys
from typing import Any

from quiesce.cli.exits import Exit
from quiesce.cli.holder import acknowledge_last_report, expired_hold, read_last_report
from quiesce.cli.render import emit_json, print_thaw
from quiesce.engine import ledger as ledger_mod
from quiesce.engine import lock as lock_mod
from quiesce.engine.mountfd import mount_id_of_fd
from quiesce.engine.mountinfo import read_mountinfo
from quiesce.engine.native import thaw_fd
from quiesce.engine.proof import open_proven, wait_pidfd
from quiesce.engine.rcu import restore_value
from quiesce.engine.rundir import RunDir
from quiesce.errors import LedgerError, NotFrozenError
from quiesce.runner.run import RUN_LOCK
from quiesce.supervise.cgroups import kill_orphaned_run_cgroups
from quiesce.supervise.notify import NOTIFY_PREFIX


def _mount_dev(mount_id: int) -> str | None:
    for m in read_mountinfo():
        if m.mount_id == mount_id:
            return m.dev
    return None


def thaw_mount(path: str, expect_mount_id: int | None = None, expect_dev: str | None = None) -> str:
    """FITHAW one mount point; returns "thawed", "not-frozen" or "mount-changed".

    With ``expect_mount_id``/``expect_dev`` (from a ledger) the mount must still
    be the one that was frozen: same mount ID, same superblock ``maj:min``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if expect_mount_id is not None:
            mnt = mount_id_of_fd(fd)
            if mnt != expect_mount_id or (expect_dev is not None and _mount_dev(mnt) != expect_dev):
                return "mount-changed"
        try:
            thaw_fd(fd, path)
        except NotFrozenError:
            return "not-frozen"
        return "thawed"
    finally:
        os.close(fd)


def thaw_from_ledger(led: ledger_mod.Ledger) -> list[dict[str, str]]:
    """Thaw, in reverse freeze order, exactly what a dead freeze's ledger lists."""
    results = []
    for e in reversed(led.filesystems):
        try:
            outcome = thaw_mount(e.mount_point, e.mount_id, e.dev)
        except OSError as err:
            outcome = f"error: {err}"
        results.append({"mount_point": e.mount_point, "dev": e.dev, "outcome": outcome})
    return results


def _recover_dead(run_dir: RunDir, led: ledger_mod.Ledger, wait_s: float, out: dict[str, Any]) -> int:
    """Thaw what a dead freeze's ledger lists (after its guardian had its chance); exit code.

    Acts only under the freeze lock, so never while a quiesce freeze (or
    its guardian) is alive, and only on the ledger as read under that lock.
    """
    if led.boot_id != ledger_mod.current_boot_id():
        with lock_mod.FreezeLock(run_dir):
            ledger_mod.remove(run_dir)
        out["message"] = f"removed a ledger of an earlier boot ({led.run_id}): nothing it lists is frozen now"
        return Exit.OK
    guardian = open_proven(led.guardian_pid, led.guardian_start, led.token, led.proof_fd)
    if guardian is not None:
        try:
            wait_pidfd(guardian, wait_s)
        finally:
            os.close(guardian)
    with lock_mod.FreezeLock(run_dir):
        led_now = ledger_mod.read(run_dir)
        if led_now is None:
            out["message"] = "the guardian of the dead freeze already thawed it"
            return Exit.OK
        results = thaw_from_ledger(led_now)
        if led_now.rcu_expedited_restore is not None:
            out["rcu_expedited_restored"] = restore_value(led_now.rcu_expedited_restore)
        out["recovered"] = results
        if any(r["outcome"].startswith("error") for r in results):
            return Exit.THAW_FAILED
        ledger_mod.remove(run_dir)
    return Exit.OK


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
    if args.json:
        emit_json(out, sys.stdout)
    else:
        if "error" in out:
            print(f"quiesce: {out['error']}", file=sys.stderr)
        print_thaw(out)
        if out["leftover_cgroups_killed"]:
            print(f"killed leftover script cgroups: {', '.join(out['leftover_cgroups_killed'])}")
        if out.get("notify_dirs_removed"):
            print(f"removed notify directories of dead runs: {', '.join(out['notify_dirs_removed'])}")
    return code


def _remove_stale_notify_dirs(run_dir: RunDir) -> list[str]:
    """Remove the notify socket directories of runs that died (none is left while a run holds run.lock)."""
    if lock_mod.held_by(run_dir, RUN_LOCK)[0]:
        return []
    stale = [n for n in os.listdir(run_dir.fd) if n.startswith(NOTIFY_PREFIX)]
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
    return _recover_dead(run_dir, led, wait_s, out)


def cmd_thaw(args: argparse.Namespace) -> int:
    """``quiesce thaw``."""
    out: dict[str, Any] = {}
    code: int = Exit.OK
    if args.force:
        forced = []
        for path in args.force:
            try:
                outcome = thaw_mount(path)
            except OSError as err:
                outcome, code = f"error: {err}", Exit.THAW_FAILED
            forced.append({"mount_point": path, "outcome": outcome})
        out["forced"] = forced
    run_dir = RunDir.open_existing(args.run_dir)
    if run_dir is None:
        out["ledger"] = None
        if not args.force:
            out["message"] = f"nothing to thaw: no freeze in progress (no run directory {args.run_dir})"
    else:
        with run_dir:
            code = max(code, _thaw_in(run_dir, args, out))
    if args.json:
        emit_json(out, sys.stdout)
    else:
        print_thaw(out)
    return code


def _thaw_in(run_dir: RunDir, args: argparse.Namespace, out: dict[str, Any]) -> int:
    """Release the proven holder of the ledger, recover a dead one, or report the last hold."""
    led = ledger_mod.read(run_dir)
    if led is None:
        out["ledger"] = None
        last = read_last_report(run_dir)
        why = expired_hold(last)
        if why is not None:
            assert last is not None
            out["report"] = last
            out["message"] = (
                f"the hold {last['run_id']} had already ended before this release ({why}): "
                "a snapshot taken while it was held is not trusted"
            )
            acknowledge_last_report(run_dir, last)
            return Exit.GUARDIAN_THAWED
        if not args.force:
            out["message"] = f"nothing to thaw: no freeze in progress (no ledger in {run_dir.path})"
        return Exit.OK
    holder = open_proven(led.pid, led.pid_start, led.token, led.proof_fd)
    if holder is None:
        return _recover_dead(run_dir, led, args.wait, out)
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(holder, signal.SIGUSR1)
        if not wait_pidfd(holder, args.wait):
            out["message"] = f"holder pid {led.pid} did not finish within {args.wait} s"
            return Exit.ERROR
    finally:
        os.close(holder)
    out["released"] = led.pid
    report = out["report"] = read_last_report(run_dir, led.run_id)
    if report is None:
        return Exit.OK
    acknowledge_last_report(run_dir, report)
    if report.get("ok") and report.get("released_by") != "deadline":
        return Exit.OK
    if report.get("guardian_reason") or report.get("released_by") == "deadline":
        out["message"] = (
            f"the hold had already ended at its deadline ({report.get('guardian_reason') or 'deadline'}) "
            "before this release: "
            "a snapshot taken while it was held is not trusted"
        )
        return Exit.GUARDIAN_THAWED
    return Exit.ERROR
