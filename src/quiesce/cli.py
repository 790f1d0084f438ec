"""The ``quiesce`` command line.

This is the only module that maps exceptions to exit codes and text. Every
subcommand takes ``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO, cast

from quiesce import __version__, benchmark
from quiesce import ledger as ledger_mod
from quiesce import lock as lock_mod
from quiesce.argtypes import MAX_SECONDS, seconds
from quiesce.config import DEFAULT_CONFIG_PATH, DEFAULT_PLUGINHOST_PATH, DEFAULT_POLL_S
from quiesce.errors import (
    ConfigError,
    FreezeError,
    LedgerError,
    LockHeldError,
    NotFrozenError,
    QuiesceError,
    TargetError,
    ThawError,
)
from quiesce.fleet import cli as fleet_cli
from quiesce.freeze import (
    DEFAULT_STEP_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    RUN_DIR,
    Freeze,
    FreezeOptions,
    FreezeReport,
)
from quiesce.hold import (
    DETACHED,
    FOREGROUND,
    HOLDING,
    Release,
    acknowledge_last_report,
    expired_hold,
    mark_holding,
    read_last_report,
    save_last_report,
)
from quiesce.mounts import Plan, escape_path, read_mountinfo
from quiesce.notify import NOTIFY_PREFIX
from quiesce.output import SafeStream, describe, reopen_closed_std_fds
from quiesce.plan import VMBACKUP_CONF, check_explicit, make_plan, target_problems
from quiesce.procs import mount_id_of_fd, open_proven, wait_pidfd
from quiesce.qga import command as qga_command
from quiesce.run import APPLICATION, CRASH, FILESYSTEM, RUN_LOCK, HoldAnnouncement, RunResult
from quiesce.rundir import RunDir
from quiesce.sandbox import SandboxError


class Exit(enum.IntEnum):
    """``quiesce``'s exit codes (documented in README.md)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    LOCKED = 3
    FREEZE_FAILED = 4
    GUARDIAN_THAWED = 5
    THAW_FAILED = 6
    BAD_TARGET = 7
    DEGRADED = 8
    BACKUP_FAILED = 9
    CONFIG = 10


#: What each exit code means (README.md's table says the same).
EXIT_MEANINGS: dict[str, str] = {
    "0": "success",
    "1": "error (message on stderr)",
    "2": "usage error (an unknown option, a number out of its range...)",
    "3": "another quiesce freeze (or run) holds the lock",
    "4": "a FIFREEZE failed; everything frozen before it was thawed",
    "5": "the guardian thawed before the release (deadline passed, or a FIFREEZE blocked)",
    "6": "a FITHAW failed: a filesystem may still be frozen (see `quiesce status`)",
    "7": "a named target cannot be frozen (missing, not a mount point, read-only, pseudo...)",
    "8": "a snapshot was taken, but only file-system- or crash-consistent",
    "9": "the backup failed (no snapshot, or a failure marked it failed)",
    "10": "a configuration file is missing, unsafe or invalid (the plugin config, its targets, "
    "the plugin host INI, vmbackup.conf); nothing ran and nothing was frozen",
    "128+N": "a stop signal N (SIGTERM 143, SIGINT 130, SIGHUP 129) arrived before the post "
    "steps; nothing was left frozen, the post steps ran, the result says whether the snapshot ran",
    "130": "interrupted by SIGINT (143: SIGTERM); partial results printed",
}

#: The exit codes each subcommand can return.
COMMAND_EXITS: dict[str, tuple[str, ...]] = {
    "run": ("0", "1", "2", "3", "8", "9", "10", "128+N"),
    "check": ("0", "1", "2", "10"),
    "mounts": ("0", "1", "2", "7", "10"),
    "freeze": ("0", "1", "2", "3", "4", "5", "6", "7", "10"),
    "thaw": ("0", "1", "2", "3", "5", "6"),
    "recover": ("0", "1", "2", "3", "6"),
    "status": ("0", "1", "2"),
    "bench": ("0", "1", "2", "3", "4", "6", "7", "10", "130"),
    "demo": ("0", "1", "2"),
}


def exit_help(command: str | None = None) -> str:
    """The "exit status" epilog of ``command``'s help (every code for the top-level help)."""
    codes = COMMAND_EXITS[command] if command else [c for c in EXIT_MEANINGS if c != "130"]
    lines = ["exit status:"]
    for code in codes:
        lines.append(f"  {code:>5}  {EXIT_MEANINGS[code]}")
    return "\n".join(lines) + "\n"


#: The top-level help's epilog (every exit code).
EXIT_HELP = exit_help()


class UsageError(Exception):
    """The command line could not be parsed; ``parser`` is the (sub)parser that said so."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised, so that ``--json`` can report them as JSON."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


# -- formatting -------------------------------------------------------------


def human_ns(ns: int | None) -> str:
    """A duration for a terminal: 812 us, 3.4 ms, 1.25 s."""
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def emit_json(data: Any, out: TextIO) -> None:
    """One JSON document, one line."""
    out.write(json.dumps(data, sort_keys=True) + "\n")
    out.flush()


def print_plan(plan: Plan, out: TextIO) -> None:
    """What would be frozen, in order, and every skipped mount with its reason."""
    if plan.targets:
        out.write("freeze order (thawed in reverse):\n")
        for i, t in enumerate(plan.targets, 1):
            m = t.mount
            extra = f"  [loop on {escape_path(t.backing_target)}]" if t.backing_target else ""
            where = f"{escape_path(m.mount_point)}  {m.fstype}  {m.dev}  {escape_path(m.source)}"
            out.write(f"  {i:2}. {where}{extra}\n")
    else:
        out.write("nothing would be frozen\n")
    if plan.skipped:
        out.write("skipped:\n")
        for s in plan.skipped:
            m = s.mount
            out.write(f"  {escape_path(m.mount_point)}  {m.fstype}  {s.reason.value}: {s.detail}\n")
    for pattern in plan.unmatched:
        out.write(f"no mount matches {escape_path(pattern)}\n")


def print_report(report: FreezeReport, out: TextIO) -> None:
    """A freeze report for a terminal."""
    out.write(f"run {report.run_id}: window {human_ns(report.window_ns)}")
    out.write(f", pre-flush {human_ns(report.preflush_ns)}\n")
    for t in report.targets:
        line = (
            f"  {escape_path(t.mount_point):<24} {t.fstype:<6} {t.state:<18} "
            f"freeze {human_ns(t.freeze_ns):>9}  thaw {human_ns(t.thaw_ns):>9}"
        )
        if t.freeze_errno:
            line += f"  freeze errno {t.freeze_errno} ({os.strerror(t.freeze_errno)})"
        if t.thaw_errno:
            line += f"  thaw errno {t.thaw_errno} ({os.strerror(t.thaw_errno)})"
        out.write(line + "\n")
    if report.guardian_reason:
        out.write(
            f"  guardian acted ({report.guardian_reason}) "
            f"{human_ns(report.guardian_fired_at_ns)} after the first FIFREEZE\n"
        )
    if report.error:
        out.write(f"  error: {report.error}\n")


# -- mounts -----------------------------------------------------------------


def _plan_from(args: argparse.Namespace, targets: Sequence[str]) -> Plan:
    return make_plan(
        targets,
        exclude=args.exclude,
        exclude_fstypes=args.exclude_fstype,
        extra_fstypes=args.fstype,
        loop_backing_fstypes=args.loop_backing_fstype,
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
    )


def cmd_mounts(args: argparse.Namespace) -> int:
    """``quiesce mounts``: a named target that cannot be frozen is an error (7), as for ``freeze``."""
    plan = _plan_from(args, args.targets)
    problems = target_problems(plan, args.targets)
    if problems:
        raise TargetError("cannot freeze: " + "; ".join(problems))
    if args.json:
        emit_json(plan.to_dict(), sys.stdout)
    else:
        print_plan(plan, sys.stdout)
    return Exit.OK


# -- freeze -------------------------------------------------------------------


def _freeze_options(args: argparse.Namespace) -> FreezeOptions:
    return FreezeOptions(
        timeout_s=args.timeout,
        step_timeout_s=args.step_timeout,
        preflush=not args.no_preflush,
        run_dir=args.run_dir,
        expedite_rcu=args.expedite_rcu,
        parallel=args.parallel,
    )


def _report_exit(report: FreezeReport, err: BaseException | None, released_by: str | None = None) -> int:
    if isinstance(err, ThawError):
        return Exit.THAW_FAILED
    if isinstance(err, FreezeError):
        return Exit.FREEZE_FAILED
    if err is not None:
        return Exit.ERROR
    # Held to the deadline: whoever thawed first, no release came in time.
    if report.guardian_reason is not None or released_by == "deadline":
        return Exit.GUARDIAN_THAWED
    return Exit.OK if report.ok else Exit.ERROR


def _save_report(
    run_dir: RunDir | None, report: FreezeReport, released_by: str | None, mode: str, acknowledged: bool
) -> None:
    data = report.to_dict() | {
        "released_by": released_by,
        "mode": mode,
        "pid": os.getpid(),
        "acknowledged": acknowledged,
    }
    if run_dir is not None:
        with contextlib.suppress(OSError):
            save_last_report(run_dir, data)


def hold(
    plan: Plan,
    options: FreezeOptions,
    announce: Callable[[Freeze], None],
    use_stdin: bool,
    mode: str = FOREGROUND,
) -> tuple[FreezeReport, str | None, BaseException | None]:
    """Freeze, announce, wait for the release, thaw. Returns the report, what released it and the error.

    The outcome is saved as the run directory's last report before the
    ledger goes (see quiesce.hold); one whose caller never heard "frozen"
    is saved as already told.
    """
    release = Release()
    released_by: str | None = None
    err: BaseException | None = None
    announced = saved = False
    f = Freeze(plan.targets, options)

    def save(report: FreezeReport) -> None:
        nonlocal saved
        saved = True
        _save_report(f.run_dir, report, released_by, mode, acknowledged=not announced)

    try:
        with f:
            f.prepare()
            if mode == DETACHED and f.run_dir is not None:
                with contextlib.suppress(OSError):
                    mark_holding(f.run_dir, f.run_id, os.getpid())
            f.freeze()
            try:
                announce(f)
            except OSError as e:
                # Nobody learnt it is frozen: nothing can be taken in this window; end it now.
                released_by = f"announcement failed: {describe(e)}"
            else:
                announced = True
                released_by = release.wait(f.remaining_ns, use_stdin)
            f.close(on_report=save)
    except (FreezeError, ThawError) as e:
        err = e
    finally:
        release.close()
    if not saved:
        with contextlib.suppress(OSError, QuiesceError):
            run_dir = RunDir.open_existing(options.run_dir)
            if run_dir is not None:
                with run_dir:
                    _save_report(run_dir, f.report, released_by, mode, acknowledged=not announced)
    return f.report, released_by, err


def _frozen_event(f: Freeze) -> dict[str, Any]:
    return {
        "event": "frozen",
        "run_id": f.run_id,
        "pid": os.getpid(),
        "targets": [t.mount.mount_point for t in f.targets],
        "remaining_ns": f.remaining_ns(),
    }


def _write_line(fd: int, text: str) -> None:
    os.write(fd, (text + "\n").encode())


def cmd_freeze(args: argparse.Namespace) -> int:
    """``quiesce freeze``."""
    plan = _plan_from(args, args.targets)
    check_explicit(plan, args.targets)
    options = _freeze_options(args)
    if args.hold:
        return _hold_detached(args, plan, options)

    out = SafeStream("stdout", sys.stdout)

    def announce(f: Freeze) -> None:
        # stdout may be a file on a frozen target: one small write, and the
        # guardian's deadline bounds even that. If it fails, raise: the hold ends.
        if args.json:
            emit_json(_frozen_event(f), cast(TextIO, out))
        else:
            how = "a line or EOF on stdin, " if not args.no_stdin else ""
            out.write(
                f"frozen: {' '.join(escape_path(t.mount.mount_point) for t in f.targets)}; "
                f"release with {how}SIGTERM/SIGINT, or `quiesce thaw`; "
                f"the guardian thaws in {human_ns(f.remaining_ns())}\n"
            )
        if out.failure is not None:
            raise OSError(f"stdout: {out.failure}")

    report, released_by, err = hold(plan, options, announce, use_stdin=not args.no_stdin)
    if args.json:
        emit_json(report.to_dict() | {"event": "thawed", "released_by": released_by}, cast(TextIO, out))
    else:
        print_report(report, cast(TextIO, out))
        if released_by:
            out.write(f"  released by {released_by}\n")
    if out.failure is not None:
        SafeStream("stderr", sys.stderr).write(f"quiesce: output to stdout failed: {out.failure}\n")
    code = _report_exit(report, err, released_by)
    if code == Exit.OK and released_by is not None and released_by.startswith("announcement failed"):
        return Exit.ERROR
    return code


def _holder_main(w: int, plan: Plan, options: FreezeOptions) -> int:
    """The detached holder of ``freeze --hold``: reports to the pipe ``w``, returns its exit code.

    It writes one JSON line: ``frozen`` once frozen (then closes the pipe, so
    the waiting command returns), or ``failed`` with the error.
    """
    failure: dict[str, Any] | None = None
    code: int = Exit.ERROR
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)

        def announce(f: Freeze) -> None:
            _write_line(w, json.dumps(_frozen_event(f)))
            os.close(w)

        report, released_by, err = hold(plan, options, announce, use_stdin=False, mode=DETACHED)
        code = _report_exit(report, err, released_by)
        if err is not None:
            failure = {"error": str(err), "report": report.to_dict()}
    except BaseException as e:  # the holder must always say why it ends
        code = exit_code_for(e)
        failure = {"error": f"{type(e).__name__}: {e}" if not isinstance(e, QuiesceError) else str(e)}
    if failure is not None:
        with contextlib.suppress(OSError):
            _write_line(w, json.dumps({"event": "failed", "exit": int(code), **failure}))
    return int(code)


def _hold_detached(args: argparse.Namespace, plan: Plan, options: FreezeOptions) -> int:
    """Fork a holder that keeps the freeze; return once it reports frozen (or failed)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the holder
        os.close(r)
        os._exit(_holder_main(w, plan, options))
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    text = b"".join(chunks).decode().strip()
    if not text:
        os.waitpid(pid, 0)
        print("quiesce: the holder exited before freezing", file=sys.stderr)
        return Exit.ERROR
    event = json.loads(text.splitlines()[0])
    if event["event"] == "frozen":
        if args.json:
            emit_json(event, sys.stdout)
        else:
            print(
                f"frozen: {' '.join(escape_path(t) for t in event['targets'])} (holder pid {event['pid']}); "
                f"release with `quiesce thaw`; the guardian thaws in "
                f"{human_ns(event['remaining_ns'])}"
            )
        return Exit.OK
    os.waitpid(pid, 0)
    if args.json:
        emit_json(event, sys.stdout)
    else:
        print(f"quiesce: {event.get('error')}", file=sys.stderr)
    return int(event.get("exit", Exit.ERROR))


# -- thaw -------------------------------------------------------------------------


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
    from quiesce.native import thaw_fd  # loaded only when thawing

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


def _restore_rcu(value: str) -> bool:
    from quiesce.rcu import RCU_EXPEDITED

    try:
        with open(RCU_EXPEDITED, "w") as f:
            f.write(value)
    except OSError:
        return False
    return True


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
            out["rcu_expedited_restored"] = _restore_rcu(led_now.rcu_expedited_restore)
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
    out["leftover_cgroups_killed"] = _kill_leftover_cgroups()
    if args.json:
        emit_json(out, sys.stdout)
    else:
        if "error" in out:
            print(f"quiesce: {out['error']}", file=sys.stderr)
        _print_thaw(out)
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


def _kill_leftover_cgroups() -> list[str]:
    from quiesce.cgroups import kill_orphaned_run_cgroups

    return kill_orphaned_run_cgroups()


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
        _print_thaw(out)
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


def _print_thaw(out: dict[str, Any]) -> None:
    for r in out.get("forced", []):
        print(f"{escape_path(r['mount_point'])}: {r['outcome']}")
    if "message" in out:
        print(out["message"])
    if "released" in out:
        print(f"released the freeze held by pid {out['released']}")
        rep = out.get("report")
        if rep:
            print(f"  window {human_ns(rep.get('window_ns'))}; ", end="")
            print(", ".join(f"{escape_path(t['mount_point'])} {t['state']}" for t in rep["targets"]))
    for r in out.get("recovered", []):
        print(f"{escape_path(r['mount_point'])} ({r['dev']}): {r['outcome']}")


# -- status -------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``quiesce status``."""
    status: dict[str, Any] = {
        "run_dir": args.run_dir,
        "lock_held": False,
        "lock_holder": None,
        "ledger": None,
        "last_hold": None,
    }
    led: ledger_mod.Ledger | None = None
    run_dir = RunDir.open_existing(args.run_dir)
    if run_dir is not None:
        with run_dir:
            # The holder's pid is shown only while it holds the lock: after, it names no one.
            status["lock_held"], status["lock_holder"] = lock_mod.held_by(run_dir)
            try:
                led = ledger_mod.read(run_dir)
            except LedgerError as err:
                status["ledger_error"] = str(err)
            last = read_last_report(run_dir)
            in_progress = led is not None and last is not None and last.get("run_id") == led.run_id
            status["last_hold"] = _last_hold(last, in_progress)
    if led is not None:
        status["ledger"] = led.to_dict()
        status["holder_alive"] = _proven_alive(led.pid, led.pid_start, led)
        status["guardian_alive"] = _proven_alive(led.guardian_pid, led.guardian_start, led)
        status["deadline_in_s"] = round(led.deadline_unix - time.time(), 3)
    if args.json:
        emit_json(status, sys.stdout)
        return Exit.OK
    if "ledger_error" in status:
        print(f"quiesce: {status['ledger_error']}")
    if led is None:
        print(f"no freeze in progress (no ledger in {args.run_dir})")
        if status["lock_held"]:
            print(f"the lock is held by pid {status['lock_holder']}")
    else:
        alive = "alive" if status["holder_alive"] else "gone"
        print(
            f"freeze {led.run_id} by pid {led.pid} ({alive}); guardian pid {led.guardian_pid} "
            f"({'alive' if status['guardian_alive'] else 'gone'})"
        )
        for e in led.filesystems:
            print(f"  {escape_path(e.mount_point)}  {e.fstype}  {e.dev}")
        if status["holder_alive"]:
            print(f"  the guardian thaws within {max(status['deadline_in_s'], 0):.1f} s at the latest")
        else:
            print("  its process is gone: run `quiesce thaw` to thaw what the ledger lists")
    last = status["last_hold"]
    if last is not None:
        print(
            f"last freeze {last['run_id']}: {last['outcome']}, window {human_ns(last['window_ns'])}"
            + (f", released by {last['released_by']}" if last["released_by"] else "")
        )
    return Exit.OK


def _proven_alive(pid: int, started: int, led: ledger_mod.Ledger) -> bool:
    pidfd = open_proven(pid, started, led.token, led.proof_fd)
    if pidfd is None:
        return False
    os.close(pidfd)
    return True


def _last_hold(data: dict[str, Any] | None, in_progress: bool) -> dict[str, Any] | None:
    """The outcome of the last ``quiesce freeze`` (``--hold`` or not), for ``status``."""
    if data is None:
        return None
    if data.get("state") == HOLDING:
        outcome = "holding" if in_progress else "ended without its holder's report (killed?)"
    elif data.get("guardian_reason"):
        outcome = f"thawed by the guardian ({data['guardian_reason']}) before its release"
    elif data.get("released_by") == "deadline":
        outcome = "thawed at its deadline, before any release"
    elif data.get("ok"):
        outcome = "released and thawed"
    else:
        outcome = f"failed ({data.get('error') or 'see the report'})"
    return {
        "run_id": data.get("run_id"),
        "mode": data.get("mode"),
        "outcome": outcome,
        "ok": bool(data.get("ok")),
        "guardian_reason": data.get("guardian_reason"),
        "released_by": data.get("released_by"),
        "window_ns": data.get("window_ns"),
        "ended_unix": data.get("ended_unix"),
        "acknowledged": bool(data.get("acknowledged")),
    }


# -- run ----------------------------------------------------------------------


class _ProgressLine:
    """A live "elapsed / timeout" indicator on a terminal; paced lines otherwise.

    Off a terminal (journald, a log file) one line per ``pace_s`` seconds of
    a step, each naming the step: "pre-script", "hook 10-db pre", "session
    hook 10-db.session: waiting for READY", "post-script". The pace is
    ``ScriptsExecutionPollTimeSeconds`` once the config is read. Nothing is
    written inside the frozen window (the snapshot command runs there).
    """

    def __init__(self, out: TextIO, pace_s: float) -> None:
        self.out = out
        self.tty = out.isatty()
        self.pace_ns = int(pace_s * 1e9)
        self._last = 0
        self._step: tuple[str, int] | None = None

    def set_pace(self, pace_s: float) -> None:
        """Pace the lines written off a terminal every ``pace_s`` seconds."""
        self.pace_ns = int(pace_s * 1e9)

    def __call__(self, label: str, attempt: int, elapsed_ns: int, timeout_ns: int) -> None:
        if (label, attempt) != self._step:
            self._step, self._last = (label, attempt), 0
        text = f"{label}: attempt {attempt}, {human_ns(elapsed_ns)} of {human_ns(timeout_ns)}"
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
        elif elapsed_ns - self._last >= self.pace_ns:
            self._last = elapsed_ns
            self.out.write(text + "\n")
            self.out.flush()

    def clear(self) -> None:
        """Erase the live line before a result line is printed."""
        if self.tty:
            self.out.write("\r\033[K")
            self.out.flush()
        self._step = None


def _run_exit(result: RunResult) -> int:
    if result.interrupted_by is not None:
        return 128 + int(signal.Signals[result.interrupted_by])
    if result.consistency == APPLICATION:
        return Exit.OK
    if result.consistency in (FILESYSTEM, CRASH):
        return Exit.DEGRADED
    return Exit.BACKUP_FAILED


def print_run(result: RunResult, out: TextIO) -> None:
    """A run's result for a terminal: one line per phase, then the verdict."""
    for p in result.phases:
        detail = f"  ({p.detail})" if p.detail else ""
        out.write(f"{p.name:<18} {p.status:<10} {human_ns(p.duration_ns):>10}{detail}\n")
    for res in (result.pre, result.post):
        if res is None:
            continue
        for a in res.attempts:
            how = f"exit {a.exit_code}" if a.exit_code is not None else f"signal {a.signal}"
            out.write(
                f"  {res.phase}-script attempt {a.number}: {a.outcome}, {how}, "
                f"{human_ns(a.duration_ns)}, cpu {a.cpu_user_us + a.cpu_system_us} us\n"
            )
            if a.outcome != "ok" and a.stderr.strip():
                for line in a.stderr.strip().splitlines()[-5:]:
                    out.write(f"    | {line}\n")
    if result.freeze is not None and result.freeze.window_ns is not None:
        out.write(f"frozen window {human_ns(result.freeze.window_ns)}\n")
    for w in result.warnings:
        out.write(f"warning: {w}\n")
    verdict = result.consistency
    if result.error_name:
        verdict += f" ({result.error_name}, code {result.error_code}: {result.message})"
    out.write(f"result: {verdict}\n")


def _hold_line(news: HoldAnnouncement) -> str:
    """The hold's announcement for a terminal or a script reading stdout."""
    release = "release with a line or EOF on stdin, SIGTERM, or `quiesce thaw`"
    if news.frozen:
        return f"frozen: {' '.join(escape_path(m) for m in news.frozen)}; {release}"
    not_frozen = " ".join(escape_path(m) for m in news.not_frozen) or "-"
    return f"frozen: nothing ({news.reason}); not frozen: {not_frozen}; take the snapshot now, then {release}"


def cmd_run(args: argparse.Namespace) -> int:
    """``quiesce run``.

    Its own output never decides the run: a failed write to stdout or
    stderr (closed, EPIPE, ENOSPC) is recorded in the result's warnings and
    the log lines; thaw, post steps and exit status stay those of the run.
    """
    from quiesce.run import RunOptions, run

    out = SafeStream("stdout", sys.stdout)
    err = SafeStream("stderr", sys.stderr)
    progress = None if args.json else _ProgressLine(cast(TextIO, err), DEFAULT_POLL_S)

    def on_hold(news: HoldAnnouncement) -> None:
        # The hold step: the external snapshotter waits for this line. If it
        # cannot be told, raising ends the hold at once (not trusted).
        if progress is not None:
            progress.clear()
        if args.json:
            emit_json(news.to_event(), cast(TextIO, out))
        else:
            out.write(_hold_line(news) + "\n")
        if out.failure is not None:
            raise OSError(f"stdout: {out.failure}")

    options = RunOptions(
        config_path=args.config,
        pluginhost_path=None if args.no_pluginhost else args.pluginhost,
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
        run_dir=args.run_dir,
        progress=progress,
        on_hold=on_hold,
        hold_stdin=not args.no_stdin,
        handle_signals=True,
        on_config=None if progress is None else (lambda cfg: progress.set_pace(cfg.poll_s)),
    )
    result = run(options)
    if progress is not None:
        progress.clear()
    _note_output_failures(result, out, err)
    if args.json:
        emit_json(result.to_dict(), cast(TextIO, out))
    else:
        print_run(result, cast(TextIO, out))
    if out.failure is not None and err.ok:
        err.write(f"quiesce: the result could not be written to stdout: {out.failure}\n")
    _note_output_failures(result, out)
    _write_logs_and_metrics(args, result, err)
    return _run_exit(result)


def _note_output_failures(result: RunResult, *streams: SafeStream) -> None:
    """Record each stream's failure once in the result (for the log lines and metrics after)."""
    for stream in streams:
        note = f"output: {stream.label}: {stream.failure}"
        if stream.failure is not None and note not in result.warnings:
            result.warnings.append(note)


def _write_logs_and_metrics(args: argparse.Namespace, result: RunResult, err: SafeStream) -> None:
    """After the run: event lines on stderr (journald) and the Prometheus textfile.

    A failure of either is reported where output still works, never fatal.
    """
    from quiesce.logs import log_lines, write_metrics

    fmt = args.log_format or ("none" if err.isatty() else "plain")
    if fmt != "none" and err.ok:
        for line in log_lines(result, fmt):
            err.write(f"quiesce: {line}\n" if fmt == "plain" else line + "\n")
    if args.metrics:
        if err.failure is not None:
            # The log lines could not say it; the metrics can.
            _note_output_failures(result, err)
        # A metrics failure is reported, never a failed run: the run's work stands.
        try:
            write_metrics(args.metrics, result)
        except QuiesceError as error:
            err.write(f"quiesce: {error}\n")
        except OSError as error:
            err.write(f"quiesce: cannot write metrics to {args.metrics}: {error.strerror}\n")


# -- check ------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """``quiesce check``: what ``run`` would check, and the plan; runs and freezes nothing."""
    from quiesce.check import check_setup

    report = check_setup(
        args.config,
        None if args.no_pluginhost else args.pluginhost,
        None if args.no_vmbackup_conf else args.vmbackup_conf,
    )
    code = Exit.OK if report.ok else Exit.CONFIG
    if args.json:
        emit_json(report.to_dict() | {"exit": int(code)}, sys.stdout)
        return code
    for f in report.findings:
        where = f" {f.path}" if f.path else ""
        out = "ok" if f.ok else "PROBLEM"
        print(f"{f.what}{where}: {out}: {f.message}")
    for w in report.warnings:
        print(f"warning: {w}")
    if not report.fs_freeze_enabled:
        print("fsFreezeEnabled is false: nothing would be frozen")
    elif report.plan is not None:
        print_plan(report.plan, sys.stdout)
    problems = len(report.problems)
    print("all checks passed" if report.ok else f"{problems} problem{'s' if problems > 1 else ''} found")
    return code


# -- demo -------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``quiesce demo``."""
    from quiesce.demo import run_demo

    result, outcome = run_demo(timeout_s=args.timeout)
    if args.json:
        emit_json(result.to_dict(), sys.stdout)
        return Exit.OK if result.consistent else Exit.ERROR
    print("sandbox: a host xfs holding two disk images, loop-mounted as guests db (ext4) and logs (xfs);")
    print("         an application appends numbered records to both, fsync after each")
    print("quiesce run: pre-script asks for a checkpoint, freeze, reflink both disks, thaw, post-script")
    print_run(outcome, sys.stdout)
    if outcome.freeze is not None:
        for t in outcome.freeze.targets:
            print(
                f"  {t.mount_point:<44} {t.fstype:<5} freeze {human_ns(t.freeze_ns):>9}"
                f"  thaw {human_ns(t.thaw_ns):>9}  {t.state}"
            )
    for res in (outcome.pre, outcome.post):
        if res is not None and res.attempts:
            print(f"  {res.phase}-script said: {res.attempts[-1].stdout.strip()}")
    resumed = result.records_after - result.records_before
    print(f"application resumed after thaw: {resumed} more records in 0.3 s")
    for s in result.snapshots:
        fsck = "clean" if s.fsck_ok else f"NOT CLEAN ({s.fsck_output})"
        name = os.path.basename(s.image)
        print(f"snapshot {name} ({s.fstype}) restored: fsck {fsck}; ends with {s.last_line!r}")
    verdict = "both end at the same checkpoint" if result.consistent else "NOT consistent"
    print(f"snapshots: {verdict}")
    return Exit.OK if result.consistent else Exit.ERROR


# -- parser -------------------------------------------------------------------


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="MOUNT",
        help="skip a mount point or glob (repeatable); excluding any mount of a "
        "filesystem excludes the filesystem",
    )
    p.add_argument(
        "--exclude-fstype",
        action="append",
        default=[],
        metavar="TYPE",
        help="skip every filesystem of this type (repeatable)",
    )
    p.add_argument(
        "--fstype",
        action="append",
        default=[],
        metavar="TYPE",
        help="treat this filesystem type as freezable (repeatable)",
    )
    p.add_argument(
        "--loop-backing-fstype",
        action="append",
        default=[],
        metavar="TYPE",
        help="freeze a loop-mounted filesystem even when its image lives on this filesystem type "
        "(FUSE or network; a glob such as 'fuse.*'; repeatable). Skipped by default: the FUSE "
        "daemon, or the network, can block its FIFREEZE",
    )
    p.add_argument(
        "--vmbackup-conf",
        default=VMBACKUP_CONF,
        metavar="PATH",
        help=f"Azure's vmbackup.conf whose [SnapshotThread] MountsToSkip is honoured "
        f"(default {VMBACKUP_CONF}; a missing file is fine)",
    )
    p.add_argument("--no-vmbackup-conf", action="store_true", help="ignore vmbackup.conf")


_positive_seconds = seconds(0, MAX_SECONDS, low_open=True)
_wait_seconds = seconds(0, MAX_SECONDS)


def _add_config_files(p: argparse.ArgumentParser) -> None:
    """``run``'s and ``check``'s files: the config, the plugin host INI, vmbackup.conf."""
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the JSON config (default {DEFAULT_CONFIG_PATH}); must be root-owned, mode 600",
    )
    p.add_argument(
        "--pluginhost",
        default=DEFAULT_PLUGINHOST_PATH,
        metavar="PATH",
        help=f"Azure's plugin host INI, optional (default {DEFAULT_PLUGINHOST_PATH}); "
        "must be root-owned, mode 600",
    )
    p.add_argument("--no-pluginhost", action="store_true", help="ignore the plugin host INI")
    p.add_argument(
        "--vmbackup-conf",
        default=VMBACKUP_CONF,
        metavar="PATH",
        help=f"Azure's vmbackup.conf, for MountsToSkip (default {VMBACKUP_CONF}; optional); "
        "must be root-owned and writable by no one else",
    )
    p.add_argument("--no-vmbackup-conf", action="store_true", help="ignore vmbackup.conf")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``quiesce``."""
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--run-dir",
        default=os.environ.get("QUIESCE_RUN_DIR", RUN_DIR),
        metavar="DIR",
        help=f"where the lock, ledger and guardian log live (default {RUN_DIR}, "
        "or $QUIESCE_RUN_DIR); it must be root's alone (refused if anyone else can write it or a "
        "directory above it), is made mode 700 if missing, and must not be on a filesystem that "
        "gets frozen",
    )
    parser = _Parser(
        prog="quiesce",
        description="Application-consistent snapshots: freeze filesystems (FIFREEZE) for "
        "as short a window as the kernel allows, with a guardian process that always thaws.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"quiesce {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        parents=[common],
        help="the whole job: pre-script, freeze, snapshot, thaw, post-script (Azure config)",
        description="Read Azure Backup's VMSnapshotScriptPluginConfig.json, check it and the "
        "scripts (owner root, safe modes and directories), run the pre-script, freeze the "
        "filesystems, take the snapshot, thaw, run the post-script, and classify the result "
        "application-consistent, file-system-consistent, crash-consistent or failed.",
        epilog=exit_help("run"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_files(p)
    p.add_argument(
        "--no-stdin",
        action="store_true",
        help='snapshot mode "hold": do not release on stdin (only a signal, `quiesce thaw`, the deadline)',
    )
    p.add_argument(
        "--log-format",
        choices=("plain", "json", "none"),
        default=None,
        help="event lines on stderr after the run, with the run ID: plain key=value lines "
        "(journald-friendly; the default when stderr is not a terminal), JSON lines, or none "
        "(the default on a terminal)",
    )
    p.add_argument(
        "--metrics",
        metavar="FILE",
        help="write Prometheus metrics of the run (last window, status, durations) to FILE, "
        "atomically; point node_exporter's textfile collector at its directory, which only root "
        "may write (else the metrics are refused, the run stands)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check",
        parents=[common],
        help="check the config, scripts, hooks and plan as `run` would, running and freezing nothing",
        description="Check everything `quiesce run` checks, without running or freezing anything: "
        "the config (owner, mode, directories, every key), the plugin host INI, both scripts "
        "(permissions, existence, whether their #! interpreter can start), the hook directory and "
        "every hook, the snapshot command, and the plan (what would be frozen, in which order, what "
        "is skipped and why). Exits 0 when all is well, 10 when anything is wrong.",
        epilog=exit_help("check"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_files(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "mounts",
        parents=[common],
        help="show what would be frozen, in which order, and what is skipped",
        epilog=exit_help("mounts"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List the filesystems quiesce would freeze, in freeze order, and every "
        "skipped mount with its reason (pseudo, network, fuse, read-only, duplicate, excluded, "
        "unsupported, not-included).",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="limit to these mount points or globs")
    _add_selection(p)
    p.set_defaults(func=cmd_mounts)

    p = sub.add_parser(
        "freeze",
        parents=[common],
        help="freeze filesystems until released",
        description="Freeze the named mount points (in a safe order), announce 'frozen', wait "
        "for the release, then thaw and report. Released by a line or EOF on stdin (unless "
        "--no-stdin), SIGTERM/SIGINT/SIGHUP, or `quiesce thaw`; the guardian thaws on its own "
        "at --timeout, or if quiesce dies. With --hold the command returns as soon as the "
        "filesystems are frozen and a background holder keeps them frozen until `quiesce thaw` "
        "or the timeout.",
        epilog=exit_help("freeze"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="+", metavar="TARGET", help="mount points (or globs) to freeze")
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"longest time frozen: the guardian thaws at this deadline (default {DEFAULT_TIMEOUT_S:g}; "
        f"more than 0, at most {MAX_SECONDS:g})",
    )
    p.add_argument(
        "--step-timeout",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help=f"longest one FIFREEZE may block before the guardian thaws the rest "
        f"(default {DEFAULT_STEP_TIMEOUT_S:g}; more than 0, at most {MAX_SECONDS:g}; "
        "never longer than --timeout)",
    )
    p.add_argument("--hold", action="store_true", help="return once frozen; release with `quiesce thaw`")
    p.add_argument("--no-stdin", action="store_true", help="do not release on stdin")
    p.add_argument("--no-preflush", action="store_true", help="skip the parallel syncfs() before freezing")
    p.add_argument(
        "--expedite-rcu",
        action="store_true",
        help="expedite RCU grace periods for the window (/sys/kernel/rcu_expedited, system-wide, "
        "restored after): a freeze after a quiet spell costs ~1 ms per filesystem instead of tens",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="freeze independent filesystems at once, one thread each (loop-stacked ones still in "
        "order, / last): their cold-freeze waits overlap",
    )
    _add_selection(p)
    p.set_defaults(func=cmd_freeze)

    p = sub.add_parser(
        "thaw",
        parents=[common],
        help="release or thaw what quiesce froze",
        description="Release a running freeze (foreground or --hold) and show its report. If the "
        "process that froze is gone, thaw exactly the filesystems its ledger lists, and only if "
        "they are still the same mounts. If the guardian already ended the last --hold at its "
        "deadline, say so and exit 5 (once). --force thaws a named mount point regardless of any "
        "ledger (also one frozen by another tool).",
        epilog=exit_help("thaw"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--force", action="append", default=[], metavar="MOUNT", help="FITHAW this mount point")
    p.add_argument(
        "--wait",
        type=_wait_seconds,
        default=10.0,
        metavar="S",
        help=f"how long to wait for the holder (default 10; 0 to {MAX_SECONDS:g})",
    )
    p.set_defaults(func=cmd_thaw)

    benchmark.add_parser(sub, common)
    qga_command.add_parser(sub, common)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on a sandbox of loop filesystems (root; never touches this machine's)",
        epilog=exit_help("demo"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build loop-mounted disks in a private mount namespace, run a writing "
        "application, freeze, take reflink snapshots of the disk images inside the window, thaw, "
        "and check the snapshots: fsck-clean and consistent with each other. Needs root, "
        "xfsprogs and e2fsprogs.",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="S",
        help=f"guardian deadline (default 10; more than 0, at most {MAX_SECONDS:g})",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "recover",
        parents=[common],
        help="after a crash: thaw what the ledger says quiesce froze, kill leftover script processes",
        description="Safe to run at any time (at boot, after quiesce.service stops): if a freeze's "
        "process and guardian are both gone but its ledger remains, thaw exactly the filesystems "
        "it lists (only if still the same mounts), restore rcu_expedited if it was changed, and "
        "kill script processes left in the cgroups of runs that are no longer alive. A freeze in "
        "progress is left alone.",
        epilog=exit_help("recover"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--wait",
        type=_wait_seconds,
        default=10.0,
        metavar="S",
        help=f"how long to wait for a guardian (default 10; 0 to {MAX_SECONDS:g})",
    )
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="is anything frozen by quiesce?",
        epilog=exit_help("status"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show the freeze in progress (from the ledger), whether its process and "
        "guardian are alive, the lock (and its holder while held), and how the last freeze ended.",
    )
    p.set_defaults(func=cmd_status)

    fleet_cli.add_parsers(sub, common)
    return parser


def exit_code_for(err: BaseException) -> Exit:
    """The exit status for an error that ended a command."""
    for kind, code in (
        (ConfigError, Exit.CONFIG),
        (LockHeldError, Exit.LOCKED),
        (TargetError, Exit.BAD_TARGET),
        (ThawError, Exit.THAW_FAILED),
        (FreezeError, Exit.FREEZE_FAILED),
        (ValueError, Exit.USAGE),
    ):
        if isinstance(err, kind):
            return code
    return Exit.ERROR


def _error_json(err: BaseException, code: int, message: str | None = None) -> dict[str, Any]:
    return {
        "error": message or str(err),
        "error_type": type(err).__name__,
        "error_name": getattr(err, "azure_name", None),
        "error_code": getattr(err, "azure_code", None),
        "exit": code,
    }


def _report_error(
    want_json: bool, err: BaseException, code: int, message: str | None = None, prefix: str = "quiesce: "
) -> int:
    """Say why a command ended: a line on stderr and, with --json, one JSON object on stdout."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{prefix}{message or err}", file=sys.stderr)
    if want_json:
        # stdout may be gone (a closed pipe); the exit status still says it.
        with contextlib.suppress(OSError, ValueError):
            emit_json(_error_json(err, code, message), sys.stdout)
    return code


def _wants_json(argv: Sequence[str]) -> bool:
    words = list(argv)
    if "--" in words:
        words = words[: words.index("--")]
    return "--json" in words


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quiesce`` command.

    With ``--json``, every outcome prints one JSON object on stdout (after
    any events the command streams): a usage error and an unexpected
    error too, each with ``error``, ``error_type`` and ``exit``.
    """
    # A closed stdin, stdout or stderr must not be inherited by the next file opened.
    reopen_closed_std_fds()
    words = sys.argv[1:] if argv is None else list(argv)
    want_json = _wants_json(words)
    parser = build_parser()
    try:
        args = parser.parse_args(words)
    except UsageError as err:
        with contextlib.suppress(OSError, ValueError):
            err.parser.print_usage(sys.stderr)
        return _report_error(want_json, err, Exit.USAGE, f"{err.parser.prog}: error: {err}", prefix="")
    want_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args))
    except (QuiesceError, SandboxError, ValueError) as err:
        return _report_error(want_json, err, int(exit_code_for(err)))
    except KeyboardInterrupt as err:
        return _report_error(want_json, err, 130, "interrupted (SIGINT)")
    except Exception as err:  # a bug or an unforeseen OS error: still one answer, and the traceback
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc(file=sys.stderr)
        return _report_error(want_json, err, Exit.ERROR, f"unexpected error: {type(err).__name__}: {err}")
