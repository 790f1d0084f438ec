"""``quiesce thaw`` against a freeze held by a program using the Python API.

Such a holder keeps its own signal dispositions: SIGUSR1, ``quiesce thaw``'s
release of quiesce's own commands, would kill it. Its ledger says so, and
``quiesce thaw`` thaws its filesystems itself, only while it is frozen; the
holder lives on and finds them thawed when it ends its window.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quiesce.cli.exits import Exit
from quiesce.engine import ledger as ledger_mod
from tests.privileged.conftest import Writer
from tests.privileged.test_cli import quiesce

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

# The holder: an embedding program. It prepares (the ledger is written), says
# "prepared", freezes on a line from stdin, says "frozen", ends its window on
# the next line and prints its report.
HOLDER = r"""
import json, sys
import quiesce

mount, run_dir, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
targets = quiesce.plan([mount], vmbackup_conf=None).targets
f = quiesce.Freeze(targets, quiesce.FreezeOptions(timeout, run_dir=run_dir))
with f:
    f.prepare()
    print("prepared", flush=True)
    sys.stdin.readline()
    f.freeze()
    print("frozen", flush=True)
    sys.stdin.readline()
    try:
        f.thaw()
    except quiesce.QuiesceError as err:
        print("thaw:", type(err).__name__, flush=True)
print(json.dumps({"states": [t.state for t in f.report.targets], "ok": f.report.ok}), flush=True)
"""


class Holder:
    """The embedding program, driven line by line."""

    def __init__(self, mount: str, run_dir: str, timeout_s: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, mount, run_dir, str(timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.said() == "prepared"

    def said(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def freeze(self) -> None:
        """Let it freeze; back once it says so."""
        self.step()
        assert self.said() == "frozen"

    def step(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        """End its window (if still in it); what it printed after."""
        if self.proc.poll() is None:
            self.step()
        out, _ = self.proc.communicate(timeout=30)
        return out


def quiesce_thaw(run_dir: str) -> subprocess.CompletedProcess[str]:
    return quiesce(run_dir, "thaw", "--json")


def test_thaw_of_an_api_freeze_thaws_it_and_leaves_the_program_running(fs, run_dir):
    """The filesystems thaw, the program is not signalled (it lives), and its report says so."""
    mount = str(fs["ext4"].mount_point)
    holder = Holder(mount, run_dir)
    try:
        holder.freeze()
        led = ledger_mod.read(run_dir)
        assert led is not None and led.release == ledger_mod.RELEASE_THAW
        status = quiesce(run_dir, "status")
        assert "`quiesce thaw` thaws its filesystems itself" in status.stdout, status.stdout
        assert json.loads(quiesce(run_dir, "status", "--json").stdout)["ledger"]["release"] == "thaw"
        writer = Writer(fs["ext4"])
        assert not writer.finished_within(0.2), "not frozen"
        thawed = quiesce_thaw(run_dir)
        assert thawed.returncode == Exit.OK, thawed.stdout + thawed.stderr
        out = json.loads(thawed.stdout)
        assert out["holder"] == holder.proc.pid
        assert [r["outcome"] for r in out["thawed_for"]] == ["thawed"]
        assert writer.finished_within(5), "still frozen after quiesce thaw"
        writer.finish()
        assert holder.proc.poll() is None, f"the program was ended: {holder.proc.returncode}"
    finally:
        rest = holder.finish()
    assert holder.proc.returncode == 0
    # Its own thaw found the filesystem thawed: its window did not hold to its end.
    assert json.loads(rest.splitlines()[-1]) == {"states": ["thawed-externally"], "ok": False}
    assert ledger_mod.read(run_dir) is None


def test_thaw_before_the_program_froze_thaws_nothing_and_says_so(fs, run_dir):
    """Ledger written, not frozen yet: a thaw now would come before its FIFREEZE; exit 1, nothing done."""
    mount = str(fs["xfs"].mount_point)
    holder = Holder(mount, run_dir)
    try:
        early = quiesce_thaw(run_dir)
        assert early.returncode == Exit.ERROR, early.stdout + early.stderr
        out = json.loads(early.stdout)
        assert "not frozen" in out["message"] and "thawed_for" not in out
        assert holder.proc.poll() is None
        holder.freeze()
        writer = Writer(fs["xfs"])
        assert not writer.finished_within(0.2), "the freeze after the early thaw does not hold"
    finally:
        rest = holder.finish()
    assert writer.finished_within(5)
    writer.finish()
    assert json.loads(rest.splitlines()[-1]) == {"states": ["thawed"], "ok": True}


def test_thaw_after_the_guardian_ended_an_api_freeze_exits_5(fs, run_dir):
    """The guardian's deadline thawed it first: the thaw says the window had ended (5); no signal."""
    mount = str(fs["btrfs"].mount_point)
    holder = Holder(mount, run_dir, timeout_s=0.3)
    try:
        holder.freeze()
        writer = Writer(fs["btrfs"])
        assert writer.finished_within(5), "the guardian did not thaw"
        writer.finish()
        late = quiesce_thaw(run_dir)
        assert late.returncode == Exit.GUARDIAN_THAWED, late.stdout + late.stderr
        assert "already ended" in json.loads(late.stdout)["message"]
        assert holder.proc.poll() is None
    finally:
        rest = holder.finish()
    assert holder.proc.returncode == 0
    assert json.loads(rest.splitlines()[-1])["ok"] is False


def test_thaw_after_the_program_thawed_has_nothing_to_do(fs, run_dir):
    """Thawed by the program, ledger not yet gone: nothing thawed again, exit 0."""
    mount = str(fs["ext4"].mount_point)
    holder = Holder(mount, run_dir)
    try:
        holder.freeze()
        led = ledger_mod.read(run_dir)
        assert led is not None
        # What the program's proof says once it has thawed (its ledger goes right after).
        with open(f"/proc/{holder.proc.pid}/fd/{led.proof_fd}", "r+b") as proof:
            proof.write(b"T")
        again = quiesce_thaw(run_dir)
        assert again.returncode == Exit.OK, again.stdout + again.stderr
        assert "has thawed" in json.loads(again.stdout)["message"]
        writer = Writer(fs["ext4"])
        assert not writer.finished_within(0.2), "quiesce thaw thawed a filesystem it was told was thawed"
    finally:
        rest = holder.finish()
    writer.finish()
    assert json.loads(rest.splitlines()[-1]) == {"states": ["thawed"], "ok": True}
