"""``quiesce status`` on a live freeze: frozen yet or not, and when the guardian thaws at the latest.

The ledger is written before the pre-flush, which can take seconds; the
guardian's deadline counts from the first FIFREEZE. ``status`` reads that
deadline from the holder's proof, where it is written just before the first
FIFREEZE, so it neither says "frozen" while the holder prepares nor counts
the deadline from the ledger's time.
"""

from __future__ import annotations

import json
import time

import pytest

from quiesce.cli.exits import Exit
from tests.privileged.test_cli import quiesce
from tests.privileged.test_thaw_embedded import Holder

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def test_status_counts_the_deadline_from_the_freeze_not_from_the_ledger(fs, run_dir):
    """Prepared (ledger written), 4 s later frozen with a 20 s deadline: status says not frozen, then ~20 s.

    Counted from the ledger's time, it said "within 20 s at the latest" while
    nothing was frozen, and about 16 s once frozen: 4 s before the guardian
    would really thaw.
    """
    holder = Holder(str(fs["ext4"].mount_point), run_dir, timeout_s=20.0)
    try:
        preparing = json.loads(quiesce(run_dir, "status", "--json").stdout)
        assert preparing["holder_alive"] and preparing["freezing_begun"] is False, preparing
        assert preparing["deadline_in_s"] is None, preparing
        text = quiesce(run_dir, "status").stdout
        assert "not frozen yet (preparing)" in text and "at the latest" not in text, text
        time.sleep(4)
        holder.freeze()
        frozen = json.loads(quiesce(run_dir, "status", "--json").stdout)
        assert frozen["freezing_begun"] is True, frozen
        assert 17.0 < frozen["deadline_in_s"] <= 20.0, frozen
        assert "at the latest" in quiesce(run_dir, "status").stdout
    finally:
        holder.finish()
    assert holder.proc.returncode == 0


def test_status_of_a_hold_gives_the_guardians_deadline(fs, run_dir):
    """``quiesce freeze --hold``: frozen, and the deadline is at most its timeout away."""
    mount = str(fs["xfs"].mount_point)
    held = quiesce(run_dir, "freeze", "--hold", "--timeout", "30", mount)
    assert held.returncode == Exit.OK, held.stderr
    try:
        status = json.loads(quiesce(run_dir, "status", "--json").stdout)
        assert status["holder_alive"] and status["freezing_begun"] is True, status
        assert 20.0 < status["deadline_in_s"] <= 30.0, status
    finally:
        released = quiesce(run_dir, "thaw")
    assert released.returncode == Exit.OK, released.stdout + released.stderr
    after = json.loads(quiesce(run_dir, "status", "--json").stdout)
    assert after["ledger"] is None and after.get("deadline_in_s") is None, after
