"""How a freeze ended, as ``quiesce thaw`` and ``status`` read its last report (no root needed)."""

from __future__ import annotations

import pytest

from quiesce.engine.lastreport import DETACHED, FOREGROUND, HOLDING, RUN, cut_short, expired_hold

EXTERNAL_B = {"mount_point": "/b", "state": "thawed-externally"}


def report(**keys: object) -> dict[str, object]:
    """A ``freeze --hold``'s last report, released by ``quiesce thaw`` unless ``keys`` say otherwise."""
    base: dict[str, object] = {
        "run_id": "r1",
        "mode": DETACHED,
        "ok": True,
        "guardian_reason": None,
        "released_by": "signal SIGUSR1",
        "acknowledged": False,
        "targets": [{"mount_point": "/a", "state": "thawed"}, {"mount_point": "/b", "state": "thawed"}],
    }
    return base | keys


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ({"state": HOLDING, "ok": False, "released_by": None}, "killed"),
        ({"guardian_reason": "deadline", "released_by": "deadline", "ok": False}, "guardian"),
        ({"released_by": "deadline"}, "deadline"),
        ({"released_by": "signal SIGTERM"}, "signal SIGTERM"),
        ({"released_by": "signal SIGHUP"}, "signal SIGHUP"),
        ({"released_by": "error: waiting for the release: EBADF"}, "wait"),
        (
            {"ok": False, "targets": [{"mount_point": "/a", "state": "thawed"}, EXTERNAL_B]},
            "someone else while held: /b",
        ),
        ({"ok": False, "error": "boom"}, "boom"),
    ],
)
def test_a_hold_that_ended_before_any_thaw_is_named(keys, said):
    """Every end of a ``--hold`` but a ``quiesce thaw``'s release is told to the next ``thaw`` (exit 5)."""
    why = expired_hold(report(**keys))
    assert why is not None and said in why


@pytest.mark.parametrize(
    "data",
    [
        None,
        report(),
        report(acknowledged=True, released_by="signal SIGTERM"),
        report(mode=FOREGROUND, released_by="deadline"),
        report(mode=RUN, state=HOLDING, ok=False, acknowledged=True),
        report(mode=RUN, released_by="stdin"),
        report(mode=RUN, released_by="signal SIGTERM"),
    ],
)
def test_a_released_told_or_unheld_hold_has_nothing_to_say(data):
    """Released by ``quiesce thaw``, already told, or not a ``--hold``: nothing for the next ``thaw``."""
    assert expired_hold(data) is None


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ({"state": HOLDING, "ok": False, "released_by": None}, "killed"),
        ({"guardian_reason": "deadline", "released_by": "deadline", "ok": False}, "guardian"),
        ({"released_by": "deadline"}, "deadline"),
    ],
)
def test_a_runs_hold_cut_short_is_named(keys, said):
    """A run's hold ended by the guardian or its deadline, or whose run was killed, is news for ``thaw``."""
    why = expired_hold(report(mode=RUN, **keys))
    assert why is not None and said in why


def test_cut_short_names_a_window_that_ended_before_its_release():
    """A release by ``quiesce thaw`` is clean; the guardian, the deadline, an outside thaw are not."""
    assert cut_short(report()) is None
    assert cut_short(report(released_by="stdin")) is None
    assert "guardian" in (cut_short(report(guardian_reason="blocked-freeze")) or "")
    external = report(targets=[{"mount_point": "/x", "state": "thawed-externally"}])
    assert "/x" in (cut_short(external) or "")
