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


#: How many open files the ``many_fds`` fixture holds: well past select()'s FD_SETSIZE of 1024.
MANY_FDS = 2000


@pytest.fixture
def many_fds() -> Iterator[list[int]]:
    """2,000 open file descriptors for the test's duration, as a process embedding quiesce may hold.

    Every fd quiesce opens meanwhile (pidfds, pipes, sockets) is numbered above
    1024, where ``select()`` fails. The soft RLIMIT_NOFILE is raised if needed.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = MANY_FDS + 1024
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(MANY_FDS)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def fallback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The fallback paths of ``request.param`` forced for the test (see tests/fallbacks.py); "" for none.

    Use with ``@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)``.
    """
    from tests.fallbacks import forced

    yield from forced(getattr(request, "param", ""), monkeypatch)
