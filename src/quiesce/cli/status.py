"""``quiesce status``: is anything frozen by quiesce, who holds it, how the last freeze ended."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from quiesce.cli.exits import Exit
from quiesce.cli.output import guarded_stdout
from quiesce.cli.render import emit_json, human_ns
from quiesce.engine import ledger as ledger_mod
from quiesce.engine import lock as lock_mod
from quiesce.engine.lastreport import HOLDING, RUN, cut_short, read_last_report
from quiesce.engine.mountinfo import escape_path
from quiesce.engine.proof import open_proven, proof_deadline_ns
from quiesce.engine.rundir import RunDir
from quiesce.errors import LedgerError


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
    last: dict[str, Any] | None = None
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
    if led is not None:
        status["ledger"] = led.to_dict()
        status["holder_alive"] = _proven_alive(led.pid, led.pid_start, led)
        status["guardian_alive"] = _proven_alive(led.guardian_pid, led.guardian_start, led)
        # The guardian's own deadline, counted from the first FIFREEZE: none yet while preparing.
        live = led.pid if status["holder_alive"] else led.guardian_pid if status["guardian_alive"] else None
        deadline = None if live is None else proof_deadline_ns(live, led.proof_fd)
        status["freezing_begun"] = None if live is None else deadline is not None
        left = None if deadline is None else (deadline - time.monotonic_ns()) / 1e9
        status["deadline_in_s"] = None if left is None else round(left, 3)
    if last is not None:
        # Its ledger still names it: in progress, or its holder died before it could end it.
        listed = led is not None and last is not None and last.get("run_id") == led.run_id
        status["last_hold"] = _last_hold(last, listed, bool(status.get("holder_alive")))
    # A closed stdout or a reader gone is no error of status's: it still exits 0.
    with guarded_stdout() as stdout:
        if args.json:
            emit_json(status, stdout)
        else:
            _print_status(status, led, args.run_dir)
    return Exit.OK


def _print_status(status: dict[str, Any], led: ledger_mod.Ledger | None, run_dir: str) -> None:
    """``status`` for a terminal."""
    if "ledger_error" in status:
        print(f"quiesce: {status['ledger_error']}")
        # A ledger is there: what it lists may be frozen, whatever can be read of it.
        print("whether a freeze is in progress is unknown: its ledger cannot be used")
        if status["lock_held"]:
            print(f"the lock is held by pid {status['lock_holder']}")
    elif led is None:
        print(f"no freeze in progress (no ledger in {run_dir})")
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
            if status["freezing_begun"]:
                print(f"  the guardian thaws within {max(status['deadline_in_s'], 0):.1f} s at the latest")
            else:
                print(
                    f"  not frozen yet (preparing): the guardian's {led.timeout_s:g} s deadline "
                    "counts from the first FIFREEZE"
                )
            if led.release == ledger_mod.RELEASE_SIGNAL:
                print("  `quiesce thaw` releases it (its holder ends its window and reports)")
            else:
                # A program using the API, `quiesce qga`, `quiesce agent`: never signalled.
                print("  `quiesce thaw` thaws its filesystems itself (its holder is not signalled)")
        else:
            print("  its process is gone: run `quiesce thaw` to thaw what the ledger lists")
    last = status["last_hold"]
    if last is not None:
        print(
            f"last freeze {last['run_id']}: {last['outcome']}, window {human_ns(last['window_ns'])}"
            + (f", released by {last['released_by']}" if last["released_by"] else "")
        )


def _proven_alive(pid: int, started: int, led: ledger_mod.Ledger) -> bool:
    pidfd = open_proven(pid, started, led.token, led.proof_fd)
    if pidfd is None:
        return False
    os.close(pidfd)
    return True


def _last_hold(data: dict[str, Any] | None, listed: bool, holder_alive: bool) -> dict[str, Any] | None:
    """The outcome of the last freeze (``quiesce freeze`` or ``quiesce run``), for ``status``."""
    if data is None:
        return None
    if data.get("state") == HOLDING:
        if listed and holder_alive:
            outcome = "holding"
        elif listed:
            outcome = "its holder died while it held: still frozen unless its guardian thawed"
        else:
            outcome = "ended without its holder's report (killed?)"
    elif data.get("guardian_reason"):
        outcome = f"thawed by the guardian ({data['guardian_reason']}) before its release"
    elif data.get("released_by") == "deadline":
        outcome = "thawed at its deadline, before any release"
    elif (why := cut_short(data)) is not None:
        outcome = f"ended before its release: {why}"
    elif data.get("ok"):
        run = data.get("mode") == RUN
        outcome = "thawed by quiesce after the snapshot step" if run else "released and thawed"
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
