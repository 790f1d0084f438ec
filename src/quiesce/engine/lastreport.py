"""The last report of a ``quiesce freeze`` or ``quiesce run``: what ``thaw`` and ``status`` read.

A freeze marks itself "holding" before its first FIFREEZE and saves its
outcome as the last report in the run directory before it drops its
ledger, so ``quiesce thaw`` and ``quiesce status`` can tell a hold the
guardian ended at its deadline, or whose holder was killed, from one that
was released: the first ``quiesce thaw`` after a ``--hold`` that ended
before it says so and exits 5. Kept apart from :mod:`quiesce.cli.holder`
(which freezes) so that ``quiesce thaw`` loads none of the freezing
machinery.
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
#: ``mode`` of the last report of a ``quiesce run``'s freeze (its own result tells its caller).
RUN = "run"
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


class HoldNotRecorded(QuiesceError):
    """A freeze could not mark itself "holding" in its run directory (full, say): see :func:`mark_holding`."""


def mark_holding(
    run_dir: RunDir, run_id: str, pid: int, mode: str = DETACHED, acknowledged: bool = False
) -> None:
    """Before a freeze freezes: its last report says "holding" until its end replaces it.

    So a freeze whose holder was killed (the guardian then thaws and drops
    the ledger, but cannot write a report) is not taken for a clean one,
    and no earlier freeze's outcome is taken for the last one.
    ``acknowledged``: nobody will ask ``quiesce thaw`` about it (a run
    whose snapshot step is not a hold).

    When it cannot be written, the earlier freeze's report is removed (an
    unlink needs no space), so that it is never shown as this one's, and
    :class:`HoldNotRecorded` is raised: a hold that a later ``quiesce thaw``
    must judge cannot go on without it (that thaw would find nothing and
    exit 0 whatever became of the window).
    """
    try:
        save_last_report(
            run_dir,
            {
                "run_id": run_id,
                "mode": mode,
                "state": HOLDING,
                "pid": pid,
                "ok": False,
                "guardian_reason": None,
                "released_by": None,
                "window_ns": None,
                "acknowledged": acknowledged,
            },
        )
    except OSError as err:
        with contextlib.suppress(OSError):
            run_dir.unlink(LAST_REPORT)
        raise HoldNotRecorded(
            f"cannot record the freeze in {run_dir.path_of(LAST_REPORT)}: {err.strerror}"
        ) from err


#: How ``quiesce thaw`` releases a holder: the one release a ``freeze --hold`` expects.
RELEASED_BY_THAW = "signal SIGUSR1"


def cut_short(data: dict[str, Any]) -> str | None:
    """Why a freeze's window ended before its release, or None.

    The guardian thawed (its deadline, a blocked FIFREEZE), the holder's
    wait ran out or failed, or someone else thawed a target while it was
    held: a snapshot taken while it was held is not trusted.
    """
    if data.get("guardian_reason") is not None:
        return f"the guardian thawed ({data['guardian_reason']})"
    released_by = data.get("released_by")
    if released_by == "deadline":
        return "its deadline passed"
    external = thawed_externally(data)
    if external:
        return f"thawed by someone else while held: {', '.join(external)}"
    if isinstance(released_by, str) and released_by.startswith("error"):
        return f"its wait for the release failed ({released_by})"
    return None


def thawed_externally(data: dict[str, Any]) -> list[str]:
    """The mount points of a report's targets that someone else thawed while they were held."""
    targets = data.get("targets")
    if not isinstance(targets, list):
        return []
    return [
        str(t.get("mount_point"))
        for t in targets
        if isinstance(t, dict) and t.get("state") == "thawed-externally"
    ]


def expired_hold(data: dict[str, Any] | None) -> str | None:
    """Why a ``freeze --hold`` (or a run's ``hold`` step) ended before any ``quiesce thaw``, or None.

    The guardian thawed at its deadline (or a FIFREEZE blocked), the holder
    was killed and never reported, someone else thawed a target, or (for a
    ``freeze --hold``, whose one release is ``quiesce thaw``) the holder was
    stopped by a signal (SIGTERM, SIGINT, SIGHUP): either way the window
    ended before the release the snapshot script asks for, and the next
    ``quiesce thaw`` must say so.
    """
    if data is None or data.get("mode") not in (DETACHED, RUN) or data.get("acknowledged"):
        return None
    if data.get("state") == HOLDING:
        return "its holder was killed, or could not save how it ended (a full run directory?)"
    why = cut_short(data)
    if why is not None or data.get("mode") == RUN:
        # A run's hold is also released by a line on stdin or a stop signal: only a cut is news.
        return why
    if not data.get("ok"):
        return f"the freeze failed ({data.get('error') or 'see the report'})"
    released_by = data.get("released_by")
    if released_by != RELEASED_BY_THAW:
        return f"its holder was stopped ({released_by}) before any `quiesce thaw`"
    return None
