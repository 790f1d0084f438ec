"""``quiesce run``, ``quiesce check`` and ``quiesce demo``: the whole job, its checks, its sandbox."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TextIO, cast

from quiesce.azure.config import DEFAULT_POLL_S
from quiesce.azure.verdict import APPLICATION, CRASH, FILESYSTEM
from quiesce.cli.exits import Exit
from quiesce.cli.output import SafeStream
from quiesce.cli.render import emit_json, hold_line, human_ns, print_plan, print_run
from quiesce.errors import QuiesceError
from quiesce.runner.check import check_setup
from quiesce.runner.logs import log_lines, write_metrics
from quiesce.runner.run import run
from quiesce.runner.signals import ignore_stray_thaw_signals
from quiesce.runner.types import HoldAnnouncement, RunOptions, RunResult


class ProgressLine:
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


def run_exit(result: RunResult) -> int:
    """The exit status of ``quiesce run``: its result class, or 128+N after a stop signal."""
    if result.interrupted_by is not None:
        return 128 + int(signal.Signals[result.interrupted_by])
    if result.consistency == APPLICATION:
        return Exit.OK
    if result.consistency in (FILESYSTEM, CRASH):
        return Exit.DEGRADED
    return Exit.BACKUP_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    """``quiesce run``.

    Its own output never decides the run: a failed write to stdout or
    stderr (closed, EPIPE, ENOSPC) is recorded in the result's warnings and
    the log lines; thaw, post steps and exit status stay those of the run.
    """
    ignore_stray_thaw_signals()  # a `quiesce thaw` that comes late must not kill it after its window
    out = SafeStream("stdout", sys.stdout)
    err = SafeStream("stderr", sys.stderr)
    progress = None if args.json else ProgressLine(cast(TextIO, err), DEFAULT_POLL_S)

    def on_hold(news: HoldAnnouncement) -> None:
        # The hold step: the external snapshotter waits for this line. If it
        # cannot be told, raising ends the hold at once (not trusted).
        if progress is not None:
            progress.clear()
        if args.json:
            emit_json(news.to_event(), cast(TextIO, out))
        else:
            out.write(hold_line(news) + "\n")
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
    return run_exit(result)


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
        print(_one_line(f"{f.what}{where}: {out}: {f.message}"))
    for w in report.warnings:
        print(_one_line(f"warning: {w}"))
    if not report.fs_freeze_enabled:
        print("fsFreezeEnabled is false: nothing would be frozen")
    elif report.plan is not None:
        print_plan(report.plan, sys.stdout)
    problems = len(report.problems)
    print("all checks passed" if report.ok else f"{problems} problem{'s' if problems > 1 else ''} found")
    return code


def _one_line(text: str) -> str:
    """``text`` with every unprintable character escaped (``\\n``, ``\\x1b``, ``\\udc80``).

    A script path may hold a newline or a terminal escape: one finding stays
    one line, and the terminal shows the name instead of obeying it.
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# -- demo -------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``quiesce demo``."""
    # Imported here: the sandbox's machinery (subprocess, ctypes) is no part of `quiesce run`'s start.
    from quiesce.demo import run_demo
    from quiesce.supervise.launch import SCRIPT_PATH

    # The demo runs mount, cp, mkfs... as root: found on a fixed PATH, never on the caller's
    # (an empty or relative entry there would be the current directory).
    os.environ["PATH"] = SCRIPT_PATH
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
