"""Fixtures for the fleet tests: a lab of agents in namespaces, with etcd (see quiesce.fleet.lab).

The lab tests need root, etcd (Debian's etcd-server), pyroute2 and etcd3gw;
without them they are skipped. The test process enters a private mount
namespace once, so the lab's loop mounts never show on the machine.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest

_entered = False


def lab_available() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("etcd", "nsenter", "mkfs.xfs", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import etcd3gw  # noqa: F401
        import pyroute2  # noqa: F401
    except ImportError as err:
        return f"the fleet extra is not installed: {err}"
    return None


def _already_private() -> bool:
    """True when another suite's fixture already moved this process into a private mount namespace."""
    for name in ("tests.db.conftest", "tests.privileged.conftest"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "_namespace_entered", False):
            return True
    return False


@pytest.fixture(scope="session")
def lab_namespace() -> None:
    """Skip without the lab's parts; enter a private mount namespace once."""
    global _entered
    why = lab_available()
    if why is not None:
        pytest.skip(f"fleet lab: {why}")
    if not _entered:
        from quiesce.sandbox import enter_private_mount_namespace

        # Another suite's fixture may have moved the process already: one private namespace
        # is enough, and a second unshare while threads run would split them across two.
        if not _already_private():
            enter_private_mount_namespace()
        _entered = True


@pytest.fixture(scope="module")
def lab3(lab_namespace: None) -> Iterator[object]:
    """Three agents with reflink snapshot commands and the writer; shared by a module's tests."""
    from quiesce.fleet.lab import Lab

    with Lab(3, deadline_s=5.0) as lab:
        yield lab
