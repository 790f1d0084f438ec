"""Fixtures for privileged tests: loop filesystems in a private mount namespace.

The whole test process moves into its own mount namespace before the first
privileged test, so the loop mounts are invisible to the machine and vanish
with the process. Every fixture thaws what it built in its finalizer, before
unmounting, even when the test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.azure.planning import make_plan
from quiesce.engine.fdwait import wait_readable
from quiesce.engine.plan import Target
from quiesce.runner.types import RunOptions
from quiesce.sandbox import LoopFs, Sandbox, enter_private_mount_namespace, thaw_quietly

pytestmark = pytest.mark.privileged

_namespace_entered = False


@pytest.fixture(scope="session", autouse=True)
def private_namespace() -> None:
    """Enter a private mount namespace once for the test process."""
    global _namespace_entered
    if os.geteuid() != 0:
        pytest.skip("privileged test: needs root")
    if not _namespace_entered:
        enter_private_mount_namespace()
        _namespace_entered = True


@pytest.fixture(scope="session", autouse=True)
def no_leftover_run_cgroups():
    """After the session, remove the cgroups of runs the tests SIGKILLed (what `quiesce recover` does)."""
    yield
    from quiesce.supervise.cgroups import kill_orphaned_run_cgroups

    kill_orphaned_run_cgroups()


@pytest.fixture(scope="session")
def world(private_namespace: None) -> Iterator[Sandbox]:
    """ext4, xfs and btrfs loop filesystems, plus an ext4 stacked on an xfs."""
    with Sandbox() as sb:
        for fstype in ("ext4", "xfs", "btrfs"):
            sb.add(fstype, name=fstype)
        outer = sb.add("xfs", name="outer")
        sb.add("ext4", on=outer, name="inner")
        yield sb


@pytest.fixture
def fs(world: Sandbox) -> Iterator[dict[str, LoopFs]]:
    """The world's filesystems by name; fails the test if it left any frozen."""
    yield {f.mount_point.name: f for f in world.filesystems}
    left = world.thaw_all()
    assert not left, f"left frozen by the test: {[str(f) for f in left]}"


@pytest.fixture
def base(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A root-only directory under /run (every directory above it is root's alone), removed after."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    d = Path(tempfile.mkdtemp(prefix=f"quiesce-test-{module}-", dir="/run"))
    os.chmod(d, 0o755)  # so that another user can reach what is chowned to them inside
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run_dir() -> Iterator[str]:
    """A private run directory (lock, ledger, guardian log) for one test.

    Under /run, mode 700: quiesce refuses a run directory that anyone but
    root can write, or that sits below one (pytest's tmp_path is under /tmp).
    """
    d = tempfile.mkdtemp(prefix="quiesce-test-run-", dir="/run")
    yield d
    shutil.rmtree(d, ignore_errors=True)


SAMPLE = {
    "pluginName": "ScriptRunner",
    "preScriptLocation": "",
    "postScriptLocation": "",
    "preScriptParams": ["", ""],
    "postScriptParams": ["", ""],
    "preScriptNoOfRetries": 0,
    "postScriptNoOfRetries": 0,
    "timeoutInSeconds": 30,
    "continueBackupOnFailure": True,
    "fsFreezeEnabled": True,
}


class Setup:
    """A root-only directory with a config, a pre- and a post-script, and a run dir."""

    def __init__(self, base: str, targets: list[str]) -> None:
        self.base = base
        self.run_dir = os.path.join(base, "run")
        self.config_path = os.path.join(base, "VMSnapshotScriptPluginConfig.json")
        self.log = os.path.join(base, "events.log")
        self.targets = targets
        self.hooks = os.path.join(base, "hooks.d")
        os.mkdir(self.hooks, 0o755)

    def script(self, name: str, body: str) -> str:
        path = os.path.join(self.base, name)
        with open(path, "w") as f:
            record = f'echo "{name} $QUIESCE_ATTEMPT $QUIESCE_SNAPSHOT $QUIESCE_PRE_STATUS"'
            f.write(f"#!/bin/sh\n{record} >> {self.log}\n{body}")
        os.chmod(path, 0o700)
        return path

    def config(self, pre: str = "exit 0\n", post: str = "exit 0\n", **keys) -> str:
        cfg = dict(SAMPLE)
        cfg["preScriptLocation"] = self.script("pre.sh", pre)
        cfg["postScriptLocation"] = self.script("post.sh", post)
        cfg["quiesce"] = {"targets": self.targets, "freezeTimeoutSeconds": 20, "hookDirectory": self.hooks}
        for k, v in keys.items():
            if k == "quiesce":
                cfg["quiesce"].update(v)
            else:
                cfg[k] = v
        with open(self.config_path, "w") as f:
            json.dump(cfg, f)
        os.chmod(self.config_path, 0o600)
        return self.config_path

    def hook(self, name: str, body: str, mode: int = 0o700) -> str:
        """A hook in the hook directory that logs "<name> <arg>" and then runs ``body``."""
        path = os.path.join(self.hooks, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\necho "{name} $1" >> {self.log}\n{body}')
        os.chmod(path, mode)
        return path

    def events(self) -> list[str]:
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def options(self) -> RunOptions:
        return RunOptions(
            config_path=self.config_path, pluginhost_path=None, vmbackup_conf=None, run_dir=self.run_dir
        )

    def start_json_run(self) -> subprocess.Popen[str]:
        """``quiesce run --json --no-stdin`` in the background (stdin /dev/null; stdout and stderr piped)."""
        return subprocess.Popen(
            self.run_argv("--json", "--no-stdin"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_argv(self, *args: str) -> list[str]:
        """``python -m quiesce run`` on this setup's config and run dir, plus ``args``."""
        return [
            sys.executable,
            "-m",
            "quiesce",
            "run",
            "--config",
            self.config_path,
            "--no-pluginhost",
            "--no-vmbackup-conf",
            "--run-dir",
            self.run_dir,
            *args,
        ]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``quiesce run`` to the end."""
        return subprocess.run(
            self.run_argv(*args), capture_output=True, text=True, timeout=80, stdin=subprocess.DEVNULL
        )


@pytest.fixture
def setup(fs):
    """A Setup whose targets are the sandbox's ext4 and xfs."""
    base = tempfile.mkdtemp(dir="/run", prefix="quiesce-run-test-")
    yield Setup(base, [str(fs["ext4"].mount_point), str(fs["xfs"].mount_point)])
    shutil.rmtree(base, ignore_errors=True)


def targets(*filesystems: LoopFs) -> list[Target]:
    """Plan targets for the given filesystems, in the order given."""
    plan = make_plan([str(f.mount_point) for f in filesystems], vmbackup_conf=None)
    by_mount = {t.mount.mount_point: t for t in plan.targets}
    return [by_mount[str(f.mount_point)] for f in filesystems]


class Writer:
    """A child process that creates a file on a filesystem and exits.

    While the filesystem is frozen it sleeps in the kernel; its pidfd turns
    readable the moment it finishes.
    """

    def __init__(self, where: LoopFs, name: str = "probe") -> None:
        path = where.mount_point / f"{name}-{time.monotonic_ns()}"
        code = f"open({str(path)!r}, 'w').write('x' * 4096)"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.path = path

    def finished_within(self, seconds: float) -> bool:
        """True when the writer exits within ``seconds``."""
        return wait_readable(self.pidfd, seconds)

    def finish(self) -> int:
        """Reap the writer (it must be able to finish: nothing may be frozen)."""
        rc = self.proc.wait(timeout=30)
        os.close(self.pidfd)
        return rc


def external_freeze(f: LoopFs) -> None:
    """Freeze as another tool would (util-linux fsfreeze)."""
    subprocess.run(["fsfreeze", "-f", str(f.mount_point)], check=True)


def is_frozen(f: LoopFs) -> bool:
    """True if ``f`` was frozen; it is thawed as a side effect (cleanup use only)."""
    return thaw_quietly(str(f.mount_point))
