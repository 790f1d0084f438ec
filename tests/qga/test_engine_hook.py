"""The engine hook the guest agent relies on: ``RunOptions.on_frozen`` before an embedded snapshot.

``quiesce.run(..., snapshot=callable)`` calls ``options.on_frozen(freeze)``
once the filesystems are frozen and before the callable, so an embedding
tool learns what is frozen and the guardian's deadline; it is never called
when the snapshot is taken unfrozen after a failed freeze.
"""

from __future__ import annotations

import subprocess

import pytest

import quiesce

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def _options(node) -> quiesce.RunOptions:
    return quiesce.RunOptions(
        config_path=node.config_path, pluginhost_path=None, vmbackup_conf=None, run_dir=node.run_dir
    )


def test_on_frozen_called_before_the_callable_with_the_freeze(node, lfs):
    """on_frozen gets the Freeze (targets, deadline) while frozen, then the callable runs."""
    a, b = str(lfs["a"].mount_point), str(lfs["b"].mount_point)
    node.config([a, b])
    seen: list[object] = []

    def on_frozen(freeze: quiesce.Freeze) -> None:
        seen.append(("frozen", sorted(t.mount.mount_point for t in freeze.targets), freeze.remaining_ns()))

    def snapshot() -> None:
        seen.append("snapshot")

    opts = _options(node)
    opts = quiesce.RunOptions(**{**opts.__dict__, "on_frozen": on_frozen})
    result = quiesce.run(snapshot=snapshot, options=opts)
    assert result.consistency == quiesce.APPLICATION
    assert len(seen) == 2 and seen[1] == "snapshot"
    tag, mounts, remaining = seen[0]  # type: ignore[misc]
    assert tag == "frozen" and mounts == sorted([a, b])
    assert 0 < remaining <= 20e9


def test_on_frozen_not_called_when_the_snapshot_is_taken_unfrozen(node, lfs):
    """A failed freeze with continueBackupOnFailure: the callable runs unfrozen, on_frozen never."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    calls: list[str] = []
    opts = quiesce.RunOptions(**{**_options(node).__dict__, "on_frozen": lambda f: calls.append("frozen")})
    subprocess.run(["fsfreeze", "-f", str(a.mount_point)], check=True)
    try:
        result = quiesce.run(snapshot=lambda: calls.append("snapshot"), options=opts)
    finally:
        subprocess.run(["fsfreeze", "-u", str(a.mount_point)], check=True)
    assert calls == ["snapshot"]
    assert result.consistency == quiesce.CRASH and result.error_name == "FsFreezeFailed"
