"""``quiesce thaw``: release a holder, or thaw what a dead freeze's ledger lists.

This is the hold shape's release path (``quiesce freeze --hold``; snapshot;
``quiesce thaw``): it runs while the filesystems are frozen, so it loads
only what releasing needs. The holder is proven before it is signalled
(:mod:`quiesce.engine.proof`); a dead freeze is recovered only under the
freeze lock, only on mounts whose ID and device still match, and its
``rcu_expedited`` is restored as the ledger records
(:mod:`quiesce.engine.rcu`). ``quiesce recover`` (:mod:`quiesce.cli.recover`)
shares the recovery.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from quiesce.cli.exits import Exit, exit_code_for
from quiesce.cli.output import SafeStream, emit_json, guarded_stdout
from quiesce.engine import ledger as ledger_mod
from quiesce.engine import lock as lock_mod
from quiesce.engine.lastreport import (
    HOLDING,
    acknowledge_last_report,
    cut_short,
    expired_hold,
    read_last_report,
)
from quiesce.engine.proof import PROOF_FROZEN, PROOF_THAWED, open_proven, proof_state, wait_pidfd
from quiesce.engine.rcu import restore_value
from quiesce.engine.rundir import RunDir
from quiesce.errors import NotFrozenError, QuiesceError

if TYPE_CHECKING:  # annotations only: a plain `quiesce thaw` is parsed without argparse
    import argparse


#: What opening a ledger's mount point fails with once nothing is there to thaw (see thaw_mount).
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _mount_dev(mount_id: int) -> str | None:
    from quiesce.engine.mountinfo import read_mountinfo  # recovery only, like the imports of thaw_mount

    for m in read_mountinfo():
        if m.mount_id == mount_id:
            return m.dev
    return None


def thaw_mount(path: str, expect_mount_id: int | None = None, expect_dev: str | None = None) -> str:
    """FITHAW one mount point; returns "thawed", "not-frozen" or "mount-changed" (also: gone).

    With ``expect_mount_id``/``expect_dev`` (from a ledger) the mount must still
    be the one that was frozen: same mount ID, same superblock ``maj:min``.
    """
    # Only recovery, --force and a holder that takes no signal thaw here: releasing quiesce's own
    # holder (the usual case) signals it, and need not load the C extension or the mount table's parser.
    from quiesce.engine.mountfd import open_no_symlinks
    from quiesce.engine.native import thaw_fd
    from quiesce.engine.usermounts import mount_id_of_fd

    # A mount point as the mount table names it has no symlink in it: one found on the
    # way was planted, and could lead to a filesystem someone else froze.
    try:
        fd = open_no_symlinks(path)
    except OSError as err:
        if expect_mount_id is not None and err.errno in _NOT_THERE:
            # Unmounted and removed (or a link put in its place) since: not the mount that was frozen.
            return "mount-changed"
        raise
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


def recover_dead(run_dir: RunDir, led: ledger_mod.Ledger, wait_s: float, out: dict[str, Any]) -> int | None:
    """Thaw what a dead freeze's ledger lists (after its guardian had its chance); exit code.

    Acts only under the freeze lock, so never while a quiesce freeze (or
    its guardian) is alive, and only on the ledger as read under that lock.
    None when that ledger is gone by then: its guardian thawed and dropped
    it, or its holder ended (its last report says how, see ``_no_ledger``).
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
            out["message"] = f"the freeze {led.run_id} ended meanwhile and dropped its ledger"
            return None
        results = thaw_from_ledger(led_now)
        last = read_last_report(run_dir, led_now.run_id)
        if last is not None:
            # This recovery told its caller how the dead freeze ended: nothing left for a later thaw.
            acknowledge_last_report(run_dir, last)
        if led_now.rcu_expedited_restore is not None:
            out["rcu_expedited_restored"] = restore_value(led_now.rcu_expedited_restore)
        out["recovered"] = results
        if any(r["outcome"].startswith("error") for r in results):
            return Exit.THAW_FAILED
        ledger_mod.remove(run_dir)
    return Exit.OK


def cmd_thaw(args: argparse.Namespace) -> int:
    """``quiesce thaw``."""
    out: dict[str, Any] = {}
    code: int = Exit.OK
    if args.force:
        from quiesce.engine.targets import resolve_target

        forced = []
        for path in args.force:
            # Resolved as a named target is: a link another user could plant is refused.
            resolved = resolve_target(path)
            try:
                if resolved.path is None:
                    outcome, code = f"error: {resolved.problem}", max(code, Exit.ERROR)
                else:
                    outcome = thaw_mount(resolved.path)
            except OSError as err:
                outcome, code = f"error: {err}", Exit.THAW_FAILED
            forced.append({"mount_point": path, "outcome": outcome})
        out["forced"] = forced
    try:
        run_dir = RunDir.open_existing(args.run_dir)
        if run_dir is None:
            out["ledger"] = None
            if not args.force:
                out["message"] = f"nothing to thaw: no freeze in progress (no run directory {args.run_dir})"
        else:
            with run_dir:
                code = max(code, _thaw_in(run_dir, args, out))
    except QuiesceError as err:
        if not args.force:
            raise
        # The forced thaws were done: the answer still says so, with the error after them.
        code = max(code, exit_code_for(err))
        out |= {"error": str(err), "error_type": type(err).__name__, "error_name": err.azure_name}
        out |= {"error_code": err.azure_code, "exit": int(code)}
    # What was done is done: a closed stdout or a reader gone changes no exit status.
    with guarded_stdout() as stdout:
        if args.json:
            emit_json(out, stdout)
        else:
            # Imported once released: text output needs the mount table's escaping (a dataclass module).
            from quiesce.cli.render import print_thaw

            print_thaw(out)
            if "error" in out:
                SafeStream("stderr", sys.stderr).write(f"quiesce: {out['error']}\n")
    return code


def _thaw_in(run_dir: RunDir, args: argparse.Namespace, out: dict[str, Any]) -> int:
    """Release the proven holder of the ledger, recover a dead one, or report the last hold."""
    led = ledger_mod.read(run_dir)
    if led is None:
        return _no_ledger(run_dir, args, out)
    holder = open_proven(led.pid, led.pid_start, led.token, led.proof_fd)
    if holder is None:
        code = recover_dead(run_dir, led, args.wait, out)
        # Gone meanwhile (its holder killed and its guardian done, say): judged as if never seen.
        return _no_ledger(run_dir, args, out) if code is None else code
    if led.release != ledger_mod.RELEASE_SIGNAL:
        os.close(holder)
        return _thaw_for(led, out)
    return _release(holder, run_dir, led, args.wait, out)


def _no_ledger(run_dir: RunDir, args: argparse.Namespace, out: dict[str, Any]) -> int:
    """No freeze listed: whether the last hold had ended before this release (exit 5), else nothing to do."""
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
        out.setdefault("message", f"nothing to thaw: no freeze in progress (no ledger in {run_dir.path})")
    return Exit.OK


def _release(holder: int, run_dir: RunDir, led: ledger_mod.Ledger, wait_s: float, out: dict[str, Any]) -> int:
    """Signal the proven holder (its pidfd, closed here) and judge its saved report; exit code."""
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(holder, signal.SIGUSR1)
        if not _wait_released(holder, run_dir, led.run_id, wait_s):
            out["message"] = f"holder pid {led.pid} did not finish within {wait_s} s"
            return Exit.ERROR
    finally:
        os.close(holder)
    out["released"] = led.pid
    report = out["report"] = read_last_report(run_dir, led.run_id)
    if report is None or report.get("state") == HOLDING:
        # Nothing vouches that its window held until now (its report was never saved, say on a
        # full run directory, or it was not a `quiesce freeze` or `run`): never an all-clear.
        out["message"] = "released, but the holder left no report: whether its window held is unknown"
        return Exit.ERROR
    acknowledge_last_report(run_dir, report)
    return _released_exit(report, out)


def _thaw_for(led: ledger_mod.Ledger, out: dict[str, Any]) -> int:
    """Thaw what a live holder that takes no SIGUSR1 froze (see quiesce.engine.ledger); exit code.

    The holder (a program using the Python API, ``quiesce qga``, ``quiesce
    agent``) keeps running, and finds its filesystems thawed when it ends its
    window: its own result says the window was cut short.
    """
    out["holder"] = led.pid
    state = proof_state(led.pid, led.proof_fd)
    if state == PROOF_THAWED:
        out["message"] = f"nothing to thaw: the holder pid {led.pid} has thawed its filesystems"
        return Exit.OK
    if state != PROOF_FROZEN:
        # Thawing now would come before its FIFREEZE: it would freeze after, and hold.
        out["message"] = (
            f"pid {led.pid} holds the freeze lock but has not frozen its filesystems yet (or freezes "
            "them in one step that ends on its own): nothing thawed; `quiesce thaw --force MOUNT` "
            "thaws a mount regardless"
        )
        return Exit.ERROR
    results = out["thawed_for"] = thaw_from_ledger(led)
    outcomes = [r["outcome"] for r in results]
    if any(o.startswith("error") for o in outcomes):
        out["message"] = f"a FITHAW failed for the freeze held by pid {led.pid}"
        return Exit.THAW_FAILED
    gone = sum(1 for o in outcomes if o != "thawed")
    if gone and proof_state(led.pid, led.proof_fd) == PROOF_THAWED:
        out["message"] = f"the holder pid {led.pid} thawed its filesystems itself meanwhile"
        return Exit.OK
    if gone:
        # Not frozen any more (its guardian's deadline, or another thaw), or no longer the
        # mount it froze: the window had ended for those before this thaw.
        out["message"] = (
            f"the freeze held by pid {led.pid} had already ended before this thaw for {gone} of "
            f"{len(outcomes)} filesystems (thawed, or no longer the mount it froze): "
            "a snapshot taken while it was held is not trusted"
        )
        return Exit.GUARDIAN_THAWED
    out["message"] = (
        f"thawed the freeze held by pid {led.pid} (not a quiesce command: it is not signalled, "
        "and finds its filesystems thawed when it ends its window)"
    )
    return Exit.OK


def _wait_released(holder: int, run_dir: RunDir, run_id: str, wait_s: float) -> bool:
    """Wait until the holder exits, or has thawed and saved its final report; False after ``wait_s``.

    A ``quiesce run`` goes on to its post steps after its thaw: its release
    is done once its report is final, not when the run ends.
    """
    deadline = time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        if wait_pidfd(holder, min(max(left, 0.0), 0.02)):
            return True
        last = read_last_report(run_dir, run_id)
        if last is not None and last.get("state") != HOLDING:
            return True
        if left <= 0:
            return False


def _released_exit(report: dict[str, Any], out: dict[str, Any]) -> int:
    """The exit status of a release, from the holder's report: 0 only if its window held until then."""
    if report.get("error_type") == "ThawError":
        out["message"] = f"a FITHAW failed: {report.get('error')}: see `quiesce status`"
        return Exit.THAW_FAILED
    why = cut_short(report)
    if why is not None:
        out["message"] = (
            f"the hold had already ended before this release ({why}): "
            "a snapshot taken while it was held is not trusted"
        )
        return Exit.GUARDIAN_THAWED
    if not report.get("ok"):
        out["message"] = f"the freeze did not hold: {report.get('error') or 'see the report'}"
        return Exit.ERROR
    return Exit.OK
