"""Expedited RCU is on by default, so a knob that cannot be used must never fail a freeze.

Each case puts the real kernel's behaviour in the way, in the test's private
mount namespace: a read-only bind mount of the knob (a container's read-only
sysfs: EROFS), a read-only sysctl file bound over it (EACCES even for root), a
file with another content, ``rcu_normal`` reading 1. The freeze then runs
without expediting, succeeds, and its report names the reason.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from quiesce.engine import rcu as rcu_mod
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.rcu import RCU_EXPEDITED, RCU_NORMAL
from tests.privileged.conftest import targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

#: A sysctl no one may write, root included (mode 0444 in procfs).
READ_ONLY_SYSCTL = "/proc/sys/kernel/ngroups_max"


def _value(path: str = RCU_EXPEDITED) -> str:
    with open(path) as f:
        return f.read().strip()


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


@pytest.fixture
def over() -> Iterator[list[str]]:
    """Paths bind-mounted over in this private namespace; unmounted after, last first."""
    mounted: list[str] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", path], check=False, capture_output=True)


@pytest.fixture
def knob(tmp_path, over) -> str:
    """The knob as quiesce sees it: a private file reading 0 bound over it (the real one is shared)."""
    if not os.path.exists(RCU_EXPEDITED):
        pytest.skip("this kernel has no /sys/kernel/rcu_expedited")
    _mount("--bind", _file_with("0\n", str(tmp_path)), RCU_EXPEDITED)
    over.append(RCU_EXPEDITED)
    return "0"


def _read_only_knob(over: list[str]) -> None:
    """Make the knob read-only as a container's sysfs is: a read-only bind mount (EROFS)."""
    _mount("--bind", RCU_EXPEDITED, RCU_EXPEDITED)
    over.append(RCU_EXPEDITED)
    _mount("-o", "remount,bind,ro", RCU_EXPEDITED)


def _file_with(content: str, tmp: str, name: str = "knob") -> str:
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(content)
    return path


def _freeze_default(fs, run_dir):
    with frozen(targets(fs["ext4"], fs["xfs"]), FreezeOptions(timeout_s=20, run_dir=run_dir)) as f:
        inside = _value()
    return f.report, inside


def test_read_only_sysfs_runs_without_it(fs, run_dir, knob, over):
    """A read-only knob (EROFS, as in a container): the freeze succeeds, unexpedited, with the reason."""
    _read_only_knob(over)
    report, inside = _freeze_default(fs, run_dir)
    assert report.ok and not report.rcu_expedited
    assert inside == knob == _value()
    (warning,) = [w for w in report.warnings if w.startswith("expedite-rcu:")]
    assert f"cannot open {RCU_EXPEDITED}" in warning and "(EROFS)" in warning
    assert "running without expedited RCU" in warning


def test_no_permission_runs_without_it(fs, run_dir, knob, over):
    """A knob even root may not open for writing (EACCES): the freeze succeeds and says so."""
    _mount("--bind", READ_ONLY_SYSCTL, RCU_EXPEDITED)
    over.append(RCU_EXPEDITED)
    report, _ = _freeze_default(fs, run_dir)
    assert report.ok and not report.rcu_expedited
    assert any("(EACCES)" in w and RCU_EXPEDITED in w for w in report.warnings), report.warnings


def test_rcu_normal_is_reported_and_the_knob_left_alone(fs, run_dir, knob, over):
    """rcu_normal=1 (booted with rcupdate.rcu_normal) overrides the knob: left alone, reported."""
    with tempfile.TemporaryDirectory() as tmp:
        _mount("--bind", _file_with("1\n", tmp, "rcu_normal"), RCU_NORMAL)
        over.append(RCU_NORMAL)
        report, inside = _freeze_default(fs, run_dir)
    assert report.ok and not report.rcu_expedited
    assert inside == knob
    assert any("rcu_normal" in w and "is 1" in w for w in report.warnings), report.warnings


def test_unexpected_content_is_not_written(fs, run_dir, knob, over):
    """A knob reading neither 0 nor 1 is left as found (a ledger could not record it)."""
    with tempfile.TemporaryDirectory() as tmp:
        fake = _file_with("7\n", tmp, "seven")
        _mount("--bind", fake, RCU_EXPEDITED)
        over.append(RCU_EXPEDITED)
        report, inside = _freeze_default(fs, run_dir)
        assert inside == "7" and _value() == "7"
    assert report.ok and not report.rcu_expedited
    assert any("reads '7'" in w for w in report.warnings), report.warnings


def test_missing_knob_runs_without_it(fs, run_dir, monkeypatch):
    """No knob at all (an injected path that does not exist): ENOENT, reported, freeze fine."""
    monkeypatch.setattr(rcu_mod, "RCU_EXPEDITED", "/sys/kernel/no-such-knob")
    report, _ = _freeze_default(fs, run_dir)
    assert report.ok and not report.rcu_expedited
    assert any("no-such-knob" in w and "(ENOENT)" in w for w in report.warnings), report.warnings


def test_failed_write_at_enable_runs_without_it(fs, run_dir, knob, monkeypatch):
    """The write right before the first FIFREEZE fails (injected EPERM): frozen anyway, nothing to restore."""

    def refuse(self):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(rcu_mod.ExpeditedRcu, "enable", refuse)
    f = Freeze(targets(fs["ext4"]), FreezeOptions(timeout_s=20, run_dir=run_dir))
    with f:
        f.prepare()
        raw = f._require_session()._raw()
        # The guardian must not write a value back for a change that never happened.
        assert (int(raw.restore_fd), int(raw.restore_len)) == (-1, 0)
        f.freeze()
        f.thaw()
    assert f.report.ok and not f.report.rcu_expedited
    assert any("cannot write" in w and "(EPERM)" in w for w in f.report.warnings), f.report.warnings
    assert _value() == knob


def test_cli_reports_the_reason_in_json_and_text(fs, run_dir, knob, over):
    """``quiesce freeze`` with a read-only knob: exit 0, the warning in JSON and on the terminal."""
    _read_only_knob(over)
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    target = str(fs["btrfs"].mount_point)
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "freeze", "--json", target],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    thawed = json.loads(done.stdout.splitlines()[-1])
    assert thawed["ok"] and thawed["rcu_expedited"] is False
    assert any("(EROFS)" in w for w in thawed["warnings"]), thawed
    text = subprocess.run(
        [sys.executable, "-m", "quiesce", "freeze", target],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert text.returncode == 0, text.stderr
    assert "(EROFS)" in text.stdout + text.stderr
