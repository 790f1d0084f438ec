"""Holding a freeze from the command line: ``quiesce freeze`` in the foreground and ``--hold``'s holder.

``quiesce freeze --hold`` forks a detached holder (:func:`hold_detached`):
it keeps the freeze until ``quiesce thaw`` or the deadline, and tells the
command, over a pipe, once frozen (or why not), so the command can return.

A ``quiesce freeze`` saves its outcome as the last report in the run
directory before it drops its ledger (:mod:`quiesce.engine.lastreport`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO, cast

from quiesce.cli.exits import Exit, exit_code_for
from quiesce.cli.output import SafeStream, describe
from quiesce.cli.render import emit_json, human_ns
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.lastreport import DETACHED, FOREGROUND, HoldNotRecorded, mark_holding, save_last_report
from quiesce.engine.mountinfo import escape_path
from quiesce.engine.plan import Plan
from quiesce.engine.report import FreezeReport
from quiesce.engine.rundir import RunDir
from quiesce.errors import FreezeError, FreezeTimeoutError, QuiesceError, ThawError
from quiesce.runner.hold import Release


class StoppedBeforeFreeze(QuiesceError):
    """A stop or release signal came while the freeze was preparing (its pre-flush): nothing was frozen."""


class HolderDied(QuiesceError):
    """The holder of ``freeze --hold`` ended (killed, say) before it said whether it froze: nothing held."""


def _error_fields(err: BaseException) -> dict[str, Any]:
    """The fields every ``--json`` error carries besides ``error`` and ``exit`` (as the command line's)."""
    return {
        "error_type": type(err).__name__,
        "error_name": getattr(err, "azure_name", None),
        "error_code": getattr(err, "azure_code", None),
    }


def report_exit(report: FreezeReport, err: BaseException | None, released_by: str | None = None) -> int:
    """The exit status of a ``quiesce freeze``: how its window ended, or its error."""
    if isinstance(err, ThawError):
        return Exit.THAW_FAILED
    if isinstance(err, FreezeTimeoutError) or (isinstance(err, FreezeError) and report.guardian_reason):
        # A FIFREEZE blocked (or the deadline passed while freezing): the guardian thawed.
        return Exit.GUARDIAN_THAWED
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
    told_fd: int | None = None,
) -> tuple[FreezeReport, str | None, BaseException | None]:
    """Freeze, announce, wait for the release, thaw. Returns the report, what released it and the error.

    The outcome is saved as the run directory's last report before the
    ledger goes (see this module's docstring); one whose caller never heard "frozen"
    is saved as already told. ``told_fd`` (``freeze --hold``'s holder, which
    owns it): the pipe on which its command says it printed "frozen" (see
    :meth:`Release.watch_told`).
    """
    release = Release()
    if told_fd is not None:
        release.watch_told(told_fd)
    released_by: str | None = None
    err: BaseException | None = None
    announced = saved = False
    # Release's handler takes SIGUSR1 from now on: the ledger tells `quiesce thaw` to signal.
    f = Freeze(plan.targets, replace(options, release_on_sigusr1=True))

    def save(report: FreezeReport) -> None:
        nonlocal saved
        saved = True
        _save_report(f.run_dir, report, released_by, mode, acknowledged=not announced)

    try:
        with f:
            f.prepare()
            if f.run_dir is not None:
                # A foreground freeze's caller sees its end (or its death) itself: nothing for a `thaw`.
                try:
                    mark_holding(f.run_dir, f.run_id, os.getpid(), mode, acknowledged=mode != DETACHED)
                except HoldNotRecorded as e:
                    if mode == DETACHED:
                        # The `quiesce thaw` that follows would find no word of this hold and exit 0.
                        raise HoldNotRecorded(
                            f"{e}: a later `quiesce thaw` could not tell how the "
                            "hold ended; nothing was frozen"
                        ) from e
            if release.received is not None:
                # The pre-flush can take seconds: a stop during it must not freeze, then release.
                name = signal.Signals(release.received).name
                released_by = f"signal {name} before the freeze"
                raise StoppedBeforeFreeze(f"stopped by {name} while preparing: nothing was frozen")
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
    except (FreezeError, ThawError, StoppedBeforeFreeze, HoldNotRecorded) as e:
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


def frozen_event(f: Freeze) -> dict[str, Any]:
    """The ``frozen`` event a hold announces (JSON, and the detached holder's pipe)."""
    return {
        "event": "frozen",
        "run_id": f.run_id,
        "pid": os.getpid(),
        "targets": [t.mount.mount_point for t in f.targets],
        "remaining_ns": f.remaining_ns(),
    }


def _write_line(fd: int, text: str) -> None:
    os.write(fd, (text + "\n").encode())


def _holder_main(w: int, told: int, plan: Plan, options: FreezeOptions) -> int:
    """The detached holder of ``freeze --hold``: reports to the pipe ``w``, returns its exit code.

    It writes one JSON line: ``frozen`` once frozen (then closes the pipe, so
    the waiting command returns), or ``failed`` with the error. ``told``
    brings the command's word that it printed "frozen": closed without it,
    the hold ends at once (nobody heard of it).
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
            _write_line(w, json.dumps(frozen_event(f)))
            os.close(w)

        report, released_by, err = hold(plan, options, announce, use_stdin=False, mode=DETACHED, told_fd=told)
        code = report_exit(report, err, released_by)
        if err is not None:
            failure = {"error": str(err), **_error_fields(err), "report": report.to_dict()}
    except BaseException as e:  # the holder must always say why it ends
        code = exit_code_for(e)
        failure = {
            "error": f"{type(e).__name__}: {e}" if not isinstance(e, QuiesceError) else str(e),
            **_error_fields(e),
        }
    if failure is not None:
        with contextlib.suppress(OSError):
            _write_line(w, json.dumps({"event": "failed", "exit": int(code), **failure}))
    return int(code)


def hold_detached(plan: Plan, options: FreezeOptions, want_json: bool) -> int:
    """Fork a holder that keeps the freeze; return once it reports frozen (or failed).

    Exit 0 means frozen and told: a closed stdout freezes nothing, and a
    "frozen" line that cannot be written (its reader gone, a full disk)
    releases the holder at once, as a foreground freeze does. So does this
    command's death before the line is out (killed while its stdout is
    blocked, say): the holder is told on a pipe of its own once the line is
    written, and one that closes without that word ends the hold.
    """
    out = SafeStream("stdout", sys.stdout)
    err = SafeStream("stderr", sys.stderr)
    if out.failure is not None:
        err.write("quiesce: stdout is closed: nobody could be told it is frozen; nothing was frozen\n")
        return Exit.ERROR
    r, w = os.pipe2(os.O_CLOEXEC)
    told_r, told_w = os.pipe2(os.O_CLOEXEC)
    out.flush()
    err.flush()
    pid = os.fork()
    if pid == 0:  # the holder
        os.close(r)
        os.close(told_w)
        os._exit(_holder_main(w, told_r, plan, options))
    os.close(w)
    os.close(told_r)
    try:
        return _report_hold(pid, r, told_w, out, err, want_json)
    finally:
        os.close(told_w)  # without TOLD first: the holder ends the hold


def _report_hold(pid: int, r: int, told_w: int, out: SafeStream, err: SafeStream, want_json: bool) -> int:
    """Read the holder's report from ``r`` and print it; tell it on ``told_w`` once "frozen" is out."""
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    text = b"".join(chunks).decode().strip()
    if not text:
        _, status = os.waitpid(pid, 0)
        how = (
            f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status)
            else f"exit status {os.waitstatus_to_exitcode(status)}"
        )
        # Raised: the command line says it as every error (one JSON object with --json).
        raise HolderDied(
            f"the holder (pid {pid}) ended before it said whether it froze ({how}): nothing is held "
            "(its guardian thaws whatever it froze)"
        )
    event = json.loads(text.splitlines()[0])
    if event["event"] == "frozen":
        if want_json:
            emit_json(event, cast(TextIO, out))
        else:
            out.write(
                f"frozen: {' '.join(escape_path(t) for t in event['targets'])} (holder pid {event['pid']}); "
                f"release with `quiesce thaw`; the guardian thaws in "
                f"{human_ns(event['remaining_ns'])}\n"
            )
        if out.failure is None:
            with contextlib.suppress(OSError):  # the holder is gone: its report says how it ended
                os.write(told_w, Release.TOLD)
            return Exit.OK
        # Nobody heard "frozen": nothing can be taken in this window; end it now. The holder
        # is this process's child, not yet reaped: its pid cannot name anyone else.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
        os.waitpid(pid, 0)
        err.write(f"quiesce: the frozen line could not be written ({out.failure}): released at once\n")
        return Exit.ERROR
    os.waitpid(pid, 0)
    if want_json:
        emit_json(event, cast(TextIO, out))
    else:
        err.write(f"quiesce: {event.get('error')}\n")
    return int(event.get("exit", Exit.ERROR))
