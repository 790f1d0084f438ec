"""The last report of a ``quiesce freeze``: what ``quiesce thaw`` and ``quiesce status`` read.

A ``quiesce freeze`` saves its outcome as the last report in the run
directory before it drops its ledger, so ``quiesce thaw`` and ``quiesce
status`` can tell a hold the guardian ended at its deadline from one that
was released: the first ``quiesce thaw`` after a ``--hold`` the guardian
ended says so and exits 5. Kept apart from :mod:`quiesce.cli.holder` (which
freezes) so that ``quiesce thaw`` loads none of the freezing machinery.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from quiesce.engine.rundir import RunDir
from quiesce.errors import QuiesceError

LAST_REPORT = "last-report.json"
#: ``mode`` of a last report: a ``freeze --hold`` (a later ``quiesce thaw`` releases it) or not.
DETACHED = "hold"
FOREGROUND = "foreground"
#: ``state`` of the last report of a ``freeze --hold`` still holding (or killed while it held).
HOLDING = "holding"


def save_last_report(run_dir: RunDir, data: dict[str, Any]) -> None:
    """Save a freeze's outcome (its report plus how it ended) as the run directory's last report.

    ``data`` carries the report's keys and ``released_by``, ``mode``
    (:data:`DETACHED` or :data:`FOREGROUND`) and ``acknowledged`` (its
    outcome was already told to its caller). Written atomically, mode 600.
    """
    record = dict(data)
    record.setdefault("ended_unix", time.time())
    run_dir.write(LAST_REPORT, json.dumps(record, sort_keys=True).encode())


def read_last_report(run_dir: RunDir, run_id: str | None = None) -> dict[str, Any] | None:
    """The last report (of ``run_id`` if given), or None if there is none or it is not trusted."""
    try:
        raw = run_dir.read_trusted(LAST_REPORT)
        data = json.loads(raw) if raw is not None else None
    except (OSError, ValueError, QuiesceError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        return None
    return data if run_id is None or data["run_id"] == run_id else None


def acknowledge_last_report(run_dir: RunDir, data: dict[str, Any]) -> None:
    """Mark the last report as told to a ``quiesce thaw``: later ones find nothing to say."""
    if not data.get("acknowledged"):
        # On failure it is told once more next time: better than never.
        with contextlib.suppress(OSError):
            save_last_report(run_dir, {**data, "acknowledged": True})


def mark_holding(run_dir: RunDir, run_id: str, pid: int) -> None:
    """Before a ``freeze --hold`` freezes: its last report says "holding" until its end replaces it.

    So a hold whose holder was killed (the guardian then thaws and drops the
    ledger, but cannot write a report) is not taken for a clean one.
    """
    save_last_report(
        run_dir,
        {
            "run_id": run_id,
            "mode": DETACHED,
            "state": HOLDING,
            "pid": pid,
            "ok": False,
            "guardian_reason": None,
            "released_by": None,
            "window_ns": None,
            "acknowledged": False,
        },
    )


def expired_hold(data: dict[str, Any] | None) -> str | None:
    """Why a ``freeze --hold`` ended before any ``quiesce thaw`` released it, or None.

    The guardian thawed at its deadline (or a FIFREEZE blocked), or the
    holder was killed and never reported: either way the window ended
    unannounced, and the next ``quiesce thaw`` must say so.
    """
    if data is None or data.get("mode") != DETACHED or data.get("acknowledged"):
        return None
    if data.get("state") == HOLDING:
        return "its holder was killed; the guardian thawed"
    if data.get("guardian_reason") is not None:
        return f"the guardian thawed ({data['guardian_reason']})"
    if data.get("released_by") == "deadline":
        return "its deadline passed"
    return None
