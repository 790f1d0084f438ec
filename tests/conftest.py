"""Shared test configuration: where each kind of test may run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip privileged tests when not root: they need loop devices and mount."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="privileged test: needs root")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def root_run_dir() -> Iterator[str]:
    """A run directory quiesce accepts: root's, mode 700, under /run (the test needs root).

    quiesce refuses a run directory anyone but root can write, or one below
    such a directory (pytest's tmp_path is under the world-writable /tmp).
    """
    if os.geteuid() != 0:
        pytest.skip("a run directory must be root's: needs root")
    d = tempfile.mkdtemp(prefix="quiesce-test-run-", dir="/run")
    yield d
    shutil.rmtree(d, ignore_errors=True)
