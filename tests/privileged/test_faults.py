"""Faults around the run: quiesce's own files on a frozen filesystem, a full or unusable run dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.azure.verdict import APPLICATION
from quiesce.engine import ledger as ledger_mod
from quiesce.runner.run import run
from quiesce.runner.types import RunOptions
from quiesce.sandbox import Sandbox
from tests.privileged.conftest import SAMPLE, Writer

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


@pytest.fixture
def root_only_fs(private_namespace):
    """An ext4 loop filesystem mounted in a root-only tree under /run (scripts may live on it)."""
    base = tempfile.mkdtemp(dir="/run", prefix="quiesce-faults-")
    try:
        with Sandbox(base=base) as sb:
            yield sb.add("ext4", 64, name="own")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _script(path: str, body: str) -> str:
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o700)
    return path


def test_own_files_on_the_frozen_filesystem_do_not_deadlock(root_only_fs):
    """Config, scripts, run dir (ledger, lock, guardian log) all on the target: no deadlock, no deadline."""
    home = root_only_fs.mount_point / "quiesce"
    home.mkdir(mode=0o700)
    log = home / "events"
    cfg = dict(SAMPLE)
    cfg["preScriptLocation"] = _script(str(home / "pre.sh"), f"echo pre >> {log}\n")
    cfg["postScriptLocation"] = _script(str(home / "post.sh"), f"echo post >> {log}\n")
    (home / "hooks.d").mkdir(mode=0o755)
    cfg["quiesce"] = {
        "targets": [str(root_only_fs.mount_point)],
        "freezeTimeoutSeconds": 5,
        "hookDirectory": str(home / "hooks.d"),
    }
    config = home / "config.json"
    config.write_text(json.dumps(cfg))
    os.chmod(config, 0o600)
    options = RunOptions(
        config_path=str(config), pluginhost_path=None, vmbackup_conf=None, run_dir=str(home / "run")
    )
    r = run(options)
    assert r.consistency == APPLICATION, r.message
    assert r.freeze is not None and r.freeze.guardian_reason is None, "only the guardian's deadline ended it"
    assert log.read_text().split() == ["pre", "post"]
    assert ledger_mod.read(str(home / "run")) is None


@pytest.fixture
def root_base() -> Iterator[Path]:
    """A root-only directory under /run (a run dir below /tmp would be refused as unsafe)."""
    base = tempfile.mkdtemp(dir="/run", prefix="quiesce-faults-")
    yield Path(base)
    shutil.rmtree(base, ignore_errors=True)


def test_run_dir_that_cannot_be_created_freezes_nothing(fs, root_base):
    """A run dir under a regular file: a clear error naming it, exit non-zero, nothing frozen."""
    blocker = root_base / "file"
    blocker.write_text("")
    run_dir = str(blocker / "run")
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "freeze", "--run-dir", run_dir, str(fs["ext4"].mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0 and run_dir in done.stderr
    w = Writer(fs["ext4"])
    assert w.finished_within(5)
    w.finish()


def test_full_run_dir_freezes_nothing(fs, private_namespace, root_base):
    """No space for the ledger: the freeze is refused before any FIFREEZE, with the reason."""
    full = root_base / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs", str(full)], check=True)
    try:
        (full / "run").mkdir()
        fd = os.open(full / "ballast", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "quiesce",
                "freeze",
                "--run-dir",
                str(full / "run"),
                str(fs["xfs"].mount_point),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode != 0
        assert "ledger" in done.stderr and "No space left" in done.stderr
        w = Writer(fs["xfs"])
        assert w.finished_within(5), "frozen although the ledger could not be written"
        w.finish()
    finally:
        subprocess.run(["umount", str(full)], check=True)
