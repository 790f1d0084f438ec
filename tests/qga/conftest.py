"""Fixtures for the guest-agent tests: loop filesystems in a private mount namespace.

Like the privileged tests, these freeze only loop filesystems built by
:mod:`quiesce.sandbox`, inside a mount namespace private to the test
process, and thaw them in finalizers. They use quiesce's public API, the
sandbox, and the ``quiesce`` command line, nothing else of quiesce.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from quiesce.sandbox import LoopFs, Sandbox, enter_private_mount_namespace

pytestmark = pytest.mark.privileged

#: The mount namespace the test process started in: if it has changed, another
#: fixture (the privileged tests') already moved the process into a private one.
_START_NS = os.readlink("/proc/self/ns/mnt")

SAMPLE = {
    "pluginName": "ScriptRunner",
    "preScriptParams": [],
    "postScriptParams": [],
    "preScriptNoOfRetries": 0,
    "postScriptNoOfRetries": 0,
    "timeoutInSeconds": 30,
    "continueBackupOnFailure": True,
    "fsFreezeEnabled": True,
}


@pytest.fixture(scope="session")
def private_ns() -> None:
    """Enter a private mount namespace once for the test process (root only)."""
    if os.geteuid() != 0:
        pytest.skip("privileged test: needs root")
    if os.readlink("/proc/self/ns/mnt") == _START_NS:
        enter_private_mount_namespace()


@pytest.fixture(scope="module")
def loops(private_ns: None) -> Iterator[Sandbox]:
    """Two ext4 loop filesystems (``a``, ``b``) and an xfs (``c``), private to this process."""
    with Sandbox() as sb:
        for name in ("a", "b"):
            sb.add("ext4", name=name)
        sb.add("xfs", name="c")
        yield sb


@pytest.fixture
def lfs(loops: Sandbox) -> Iterator[dict[str, LoopFs]]:
    """The sandbox filesystems by name; fails the test if it left any frozen."""
    yield {f.mount_point.name: f for f in loops.filesystems}
    left = loops.thaw_all()
    assert not left, f"left frozen by the test: {[str(f) for f in left]}"


class Node:
    """A root-only directory on /run holding a node's quiesce config, scripts, hooks and run dir."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.run_dir = os.path.join(base, "run")
        os.mkdir(self.run_dir, 0o700)
        self.config_path = os.path.join(base, "VMSnapshotScriptPluginConfig.json")
        self.log = os.path.join(base, "events.log")
        self.hooks = os.path.join(base, "hooks.d")
        os.mkdir(self.hooks, 0o755)

    def script(self, name: str, body: str = "exit 0\n", mode: int = 0o700) -> str:
        """An executable that appends "<name> <args>" to the event log, then runs ``body``."""
        path = os.path.join(self.base, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\necho "{name} $*" >> {self.log}\n{body}')
        os.chmod(path, mode)
        return path

    def config(
        self, targets: list[str], pre: str = "exit 0\n", post: str = "exit 0\n", **keys: object
    ) -> str:
        """Write the JSON config (mode 600) with logging pre/post scripts; ``quiesce`` keys merge."""
        cfg: dict[str, object] = dict(SAMPLE)
        cfg["preScriptLocation"] = self.script("pre.sh", pre)
        cfg["postScriptLocation"] = self.script("post.sh", post)
        ext: dict[str, object] = {"targets": targets, "freezeTimeoutSeconds": 20, "hookDirectory": self.hooks}
        ext.update(keys.pop("quiesce", {}))  # type: ignore[call-overload]
        cfg["quiesce"] = ext
        cfg.update(keys)
        with open(self.config_path, "w") as f:
            json.dump(cfg, f)
        os.chmod(self.config_path, 0o600)
        return self.config_path

    def hook(self, name: str, body: str = "exit 0\n") -> str:
        """A hook in the node's hook directory (logs "<name> <phase>")."""
        path = os.path.join(self.hooks, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\necho "{name} $1" >> {self.log}\n{body}')
        os.chmod(path, 0o700)
        return path

    def events(self) -> list[str]:
        """The event log's lines, in order."""
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def node(lfs: dict[str, LoopFs]) -> Iterator[Node]:
    """A fresh node directory under /run (never frozen), removed after the test."""
    base = tempfile.mkdtemp(dir="/run", prefix="quiesce-qga-test-")
    os.chmod(base, 0o700)
    yield Node(base)
    shutil.rmtree(base, ignore_errors=True)
