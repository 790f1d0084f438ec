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
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from quiesce import benchmark
from quiesce import ledger as ledger_mod
from quiesce import lock as lock_mod
from quiesce.config import DEFAULT_CONFIG_PATH, DEFAULT_PLUGINHOST_PATH
from quiesce.errors import (
    ConfigError,
    FreezeError,
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
from quiesce.hold import Release
from quiesce.mounts import Plan, read_mountinfo
from quiesce.plan import VMBACKUP_CONF, check_explicit, make_plan
from quiesce.procs import is_alive, mount_id_of_fd
from quiesce.run import APPLICATION, CRASH, FILESYSTEM, RunResult
from quiesce.sandbox import SandboxError

LAST_REPORT = "last-report.json"


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


EXIT_HELP = """exit status:
  0  success
  1  error (message on stderr)
  2  usage error
  3  another quiesce freeze holds the lock
  4  a FIFREEZE failed; everything frozen before it was thawed
  5  the guardian thawed before the release (deadline passed, or a FIFREEZE blocked)
  6  a FITHAW failed: a filesystem may still be frozen (see `quiesce status`)
  7  a named target cannot be frozen (not a mount point, read-only, pseudo...)
  8  run: a snapshot was taken, but only file-system- or crash-consistent
  9  run: the backup failed (no snapshot, or a failure marked it failed)
 10  run: the configuration is invalid, missing or unsafe; nothing ran
 128+N  run: stopped by signal N (SIGTERM 143, SIGINT 130, SIGHUP 129) before the
     snapshot was done; everything was thawed and the post steps ran
"""


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
            extra = f"  [loop on {t.backing_target}]" if t.backing_target else ""
            out.write(f"  {i:2}. {m.mount_point}  {m.fstype}  {m.dev}  {m.source}{extra}\n")
    else:
        out.write("nothing would be frozen\n")
    if plan.skipped:
        out.write("skipped:\n")
        for s in plan.skipped:
            m = s.mount
            out.write(f"  {m.mount_point}  {m.fstype}  {s.reason.value}: {s.detail}\n")
    for pattern in plan.unmatched:
        out.write(f"no mount matches {pattern}\n")


def print_report(report: FreezeReport, out: TextIO) -> None:
    """A freeze report for a terminal."""
    out.write(f"run {report.run_id}: window {human_ns(report.window_ns)}")
    out.write(f", pre-flush {human_ns(report.preflush_ns)}\n")
    for t in report.targets:
        line = (
            f"  {t.mount_point:<24} {t.fstype:<6} {t.state:<18} "
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
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
    )


def cmd_mounts(args: argparse.Namespace) -> int:
    """``quiesce mounts``."""
    plan = _plan_from(args, args.targets)
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


def _report_exit(report: FreezeReport, err: BaseException | None) -> int:
    if isinstance(err, ThawError):
        return Exit.THAW_FAILED
    if isinstance(err, FreezeError):
        return Exit.FREEZE_FAILED
    if err is not None:
        return Exit.ERROR
    if report.guardian_reason is not None:
        return Exit.GUARDIAN_THAWED
    return Exit.OK if report.ok else Exit.ERROR


def _save_report(run_dir: str, report: FreezeReport, released_by: str | None) -> None:
    data = report.to_dict() | {"released_by": released_by}
    with contextlib.suppress(OSError):
        tmp = os.path.join(run_dir, f".{LAST_REPORT}.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.rename(tmp, os.path.join(run_dir, LAST_REPORT))


def hold(
    plan: Plan,
    options: FreezeOptions,
    announce: Callable[[Freeze], None],
    use_stdin: bool,
) -> tuple[FreezeReport, str | None, BaseException | None]:
    """Freeze, announce, wait for the release, thaw. Returns the report, what released it and the error."""
    release = Release()
    released_by: str | None = None
    err: BaseException | None = None
    f = Freeze(plan.targets, options)
    try:
        with f:
            f.prepare()
            f.freeze()
            announce(f)
            released_by = release.wait(f.remaining_ns, use_stdin)
    except (FreezeError, ThawError) as e:
        err = e
    finally:
        release.close()
    _save_report(options.run_dir, f.report, released_by)
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

    def announce(f: Freeze) -> None:
        # stdout may be a file on a frozen target: one small write, and the
        # guardian's deadline bounds even that.
        if args.json:
            emit_json(_frozen_event(f), sys.stdout)
        else:
            how = "a line or EOF on stdin, " if not args.no_stdin else ""
            sys.stdout.write(
                f"frozen: {', '.join(t.mount.mount_point for t in f.targets)}; "
                f"release with {how}SIGTERM/SIGINT, or `quiesce thaw`; "
                f"the guardian thaws in {human_ns(f.remaining_ns())}\n"
            )
            sys.stdout.flush()

    report, released_by, err = hold(plan, options, announce, use_stdin=not args.no_stdin)
    if args.json:
        emit_json(report.to_dict() | {"event": "thawed", "released_by": released_by}, sys.stdout)
    else:
        print_report(report, sys.stdout)
        if released_by:
            sys.stdout.write(f"  released by {released_by}\n")
    return _report_exit(report, err)


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

        report, _, err = hold(plan, options, announce, use_stdin=False)
        code = _report_exit(report, err)
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
                f"frozen: {', '.join(event['targets'])} (holder pid {event['pid']}); "
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


def _wait_exit(pid: int, started: int | None, timeout_s: float) -> bool:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        end = time.monotonic() + timeout_s
        while is_alive(pid, started):
            left = end - time.monotonic()
            if left <= 0:
                return False
            select.select([pidfd], [], [], min(left, 0.1))
        return True
    finally:
        os.close(pidfd)


def _read_last_report(run_dir: str, run_id: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, LAST_REPORT)) as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    return data if data.get("run_id") == run_id else None


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


def _recover_dead(run_dir: str, led: ledger_mod.Ledger, wait_s: float, out: dict[str, Any]) -> int:
    """Thaw what a dead freeze's ledger lists (after its guardian had its chance); exit code."""
    if led.guardian_pid and is_alive(led.guardian_pid, led.guardian_start):
        _wait_exit(led.guardian_pid, led.guardian_start, wait_s)
    led_now = ledger_mod.read(run_dir)
    if led_now is None:
        out["message"] = "the guardian of the dead freeze already thawed it"
        return Exit.OK
    with lock_mod.FreezeLock(run_dir):
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
    led = ledger_mod.read(args.run_dir)
    if led is None:
        out["message"] = f"nothing to recover (no ledger in {args.run_dir})"
    elif is_alive(led.pid, led.pid_start):
        out["message"] = f"a freeze is in progress (pid {led.pid}); nothing to recover"
    else:
        code = _recover_dead(args.run_dir, led, args.wait, out)
    out["leftover_cgroups_killed"] = _kill_leftover_cgroups()
    if args.json:
        emit_json(out, sys.stdout)
    else:
        _print_thaw(out)
        if out["leftover_cgroups_killed"]:
            print(f"killed leftover script cgroups: {', '.join(out['leftover_cgroups_killed'])}")
    return code


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
    led = ledger_mod.read(args.run_dir)
    if led is None:
        out["ledger"] = None
        if not args.force:
            out["message"] = f"nothing to thaw: no freeze in progress (no ledger in {args.run_dir})"
    elif is_alive(led.pid, led.pid_start):
        os.kill(led.pid, signal.SIGUSR1)
        if not _wait_exit(led.pid, led.pid_start, args.wait):
            out["message"] = f"holder pid {led.pid} did not finish within {args.wait} s"
            code = Exit.ERROR
        else:
            out["released"] = led.pid
            out["report"] = _read_last_report(args.run_dir, led.run_id)
            report = out["report"]
            if report is not None and not report.get("ok"):
                code = Exit.GUARDIAN_THAWED if report.get("guardian_reason") else Exit.ERROR
    else:
        code = max(code, _recover_dead(args.run_dir, led, args.wait, out))
    if args.json:
        emit_json(out, sys.stdout)
    else:
        _print_thaw(out)
    return code


def _print_thaw(out: dict[str, Any]) -> None:
    for r in out.get("forced", []):
        print(f"{r['mount_point']}: {r['outcome']}")
    if "message" in out:
        print(out["message"])
    if "released" in out:
        print(f"released the freeze held by pid {out['released']}")
        rep = out.get("report")
        if rep:
            print(f"  window {human_ns(rep.get('window_ns'))}; ", end="")
            print(", ".join(f"{t['mount_point']} {t['state']}" for t in rep["targets"]))
    for r in out.get("recovered", []):
        print(f"{r['mount_point']} ({r['dev']}): {r['outcome']}")


# -- status -------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``quiesce status``."""
    led = ledger_mod.read(args.run_dir)
    status: dict[str, Any] = {
        "run_dir": args.run_dir,
        "lock_held": lock_mod.is_held(args.run_dir),
        "lock_holder": lock_mod.read_holder(os.path.join(args.run_dir, "lock")),
        "ledger": None if led is None else led.to_dict(),
    }
    if led is not None:
        status["holder_alive"] = is_alive(led.pid, led.pid_start)
        status["guardian_alive"] = bool(led.guardian_pid and is_alive(led.guardian_pid, led.guardian_start))
        status["deadline_in_s"] = round(led.deadline_unix - time.time(), 3)
    if args.json:
        emit_json(status, sys.stdout)
        return Exit.OK
    if led is None:
        print(f"no freeze in progress (no ledger in {args.run_dir})")
        if status["lock_held"]:
            print(f"the lock is held by pid {status['lock_holder']}")
        return Exit.OK
    alive = "alive" if status["holder_alive"] else "gone"
    print(
        f"freeze {led.run_id} by pid {led.pid} ({alive}); guardian pid {led.guardian_pid} "
        f"({'alive' if status['guardian_alive'] else 'gone'})"
    )
    for e in led.filesystems:
        print(f"  {e.mount_point}  {e.fstype}  {e.dev}")
    if status["holder_alive"]:
        print(f"  the guardian thaws within {max(status['deadline_in_s'], 0):.1f} s at the latest")
    else:
        print("  its process is gone: run `quiesce thaw` to thaw what the ledger lists")
    return Exit.OK


# -- run ----------------------------------------------------------------------


class _ProgressLine:
    """A live "elapsed / timeout" indicator on a terminal; a paced line otherwise."""

    def __init__(self, out: TextIO, pace_s: float) -> None:
        self.out = out
        self.tty = out.isatty()
        self.pace_ns = int(pace_s * 1e9)
        self._last = 0
        self.phase = ""

    def __call__(self, attempt: int, elapsed_ns: int, timeout_ns: int) -> None:
        text = f"{self.phase}: attempt {attempt}, {human_ns(elapsed_ns)} of {human_ns(timeout_ns)}"
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
        self._last = 0


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


def cmd_run(args: argparse.Namespace) -> int:
    """``quiesce run``."""
    from quiesce.run import RunOptions, run

    progress = None if args.json else _ProgressLine(sys.stderr, 3.0)

    def on_frozen(f: Freeze) -> None:
        # The hold step: the external snapshotter waits for this line.
        if progress is not None:
            progress.clear()
        if args.json:
            emit_json(_frozen_event(f), sys.stdout)
        else:
            print(
                f"frozen: {', '.join(t.mount.mount_point for t in f.targets)}; release with a line "
                f"or EOF on stdin, SIGTERM, or `quiesce thaw`",
                flush=True,
            )

    options = RunOptions(
        config_path=args.config,
        pluginhost_path=None if args.no_pluginhost else args.pluginhost,
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
        run_dir=args.run_dir,
        progress=progress,
        on_frozen=on_frozen,
        hold_stdin=not args.no_stdin,
        handle_signals=True,
    )
    result = run(options)
    if progress is not None:
        progress.clear()
    if args.json:
        emit_json(result.to_dict(), sys.stdout)
    else:
        print_run(result, sys.stdout)
    _write_logs_and_metrics(args, result)
    return _run_exit(result)


def _write_logs_and_metrics(args: argparse.Namespace, result: RunResult) -> None:
    """After the run: event lines on stderr (journald) and the Prometheus textfile."""
    from quiesce.logs import log_lines, write_metrics

    fmt = args.log_format or ("none" if sys.stderr.isatty() else "plain")
    if fmt != "none":
        for line in log_lines(result, fmt):
            sys.stderr.write(f"quiesce: {line}\n" if fmt == "plain" else line + "\n")
        sys.stderr.flush()
    if args.metrics:
        try:
            write_metrics(args.metrics, result)
        except OSError as err:
            print(f"quiesce: cannot write metrics to {args.metrics}: {err.strerror}", file=sys.stderr)


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
        "--vmbackup-conf",
        default=VMBACKUP_CONF,
        metavar="PATH",
        help=f"Azure's vmbackup.conf whose [SnapshotThread] MountsToSkip is honoured "
        f"(default {VMBACKUP_CONF}; a missing file is fine)",
    )
    p.add_argument("--no-vmbackup-conf", action="store_true", help="ignore vmbackup.conf")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``quiesce``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--run-dir",
        default=os.environ.get("QUIESCE_RUN_DIR", RUN_DIR),
        metavar="DIR",
        help=f"where the lock, ledger and guardian log live (default {RUN_DIR}, "
        "or $QUIESCE_RUN_DIR); must not be on a filesystem that gets frozen",
    )
    parser = argparse.ArgumentParser(
        prog="quiesce",
        description="Application-consistent snapshots: freeze filesystems (FIFREEZE) for "
        "as short a window as the kernel allows, with a guardian process that always thaws.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        parents=[common],
        help="the whole job: pre-script, freeze, snapshot, thaw, post-script (Azure config)",
        description="Read Azure Backup's VMSnapshotScriptPluginConfig.json, check it and the "
        "scripts (owner root, safe modes and directories), run the pre-script, freeze the "
        "filesystems, take the snapshot, thaw, run the post-script, and classify the result "
        "application-consistent, file-system-consistent, crash-consistent or failed.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        help=f"Azure's plugin host INI, optional (default {DEFAULT_PLUGINHOST_PATH})",
    )
    p.add_argument("--no-pluginhost", action="store_true", help="ignore the plugin host INI")
    p.add_argument(
        "--vmbackup-conf",
        default=VMBACKUP_CONF,
        metavar="PATH",
        help=f"Azure's vmbackup.conf, for MountsToSkip (default {VMBACKUP_CONF})",
    )
    p.add_argument("--no-vmbackup-conf", action="store_true", help="ignore vmbackup.conf")
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
        "atomically; point node_exporter's textfile collector at its directory",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "mounts",
        parents=[common],
        help="show what would be frozen, in which order, and what is skipped",
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
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="+", metavar="TARGET", help="mount points (or globs) to freeze")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"longest time frozen: the guardian thaws at this deadline (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"longest one FIFREEZE may block before the guardian thaws the rest "
        f"(default {DEFAULT_STEP_TIMEOUT_S:g}, at most --timeout)",
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
        "they are still the same mounts. --force thaws a named mount point regardless of any "
        "ledger (also one frozen by another tool).",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--force", action="append", default=[], metavar="MOUNT", help="FITHAW this mount point")
    p.add_argument("--wait", type=float, default=10.0, metavar="S", help="how long to wait for the holder")
    p.set_defaults(func=cmd_thaw)

    benchmark.add_parser(sub, common)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on a sandbox of loop filesystems (root; never touches this machine's)",
        description="Build loop-mounted disks in a private mount namespace, run a writing "
        "application, freeze, take reflink snapshots of the disk images inside the window, thaw, "
        "and check the snapshots: fsck-clean and consistent with each other. Needs root, "
        "xfsprogs and e2fsprogs.",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="guardian deadline")
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
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--wait", type=float, default=10.0, metavar="S", help="how long to wait for a guardian")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="is anything frozen by quiesce?",
        description="Show the freeze in progress (from the ledger), whether its process and "
        "guardian are alive, and the lock.",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quiesce`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (QuiesceError, SandboxError, ValueError) as err:
        code = int(exit_code_for(err))
        print(f"quiesce: {err}", file=sys.stderr)
        if getattr(args, "json", False):
            emit_json(
                {
                    "error": str(err),
                    "error_type": type(err).__name__,
                    "error_name": getattr(err, "azure_name", None),
                    "error_code": getattr(err, "azure_code", None),
                    "exit": code,
                },
                sys.stdout,
            )
        return code
    except KeyboardInterrupt:
        return 130
