"""Shared test configuration: where each kind of test may run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
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


#: The writer of the hog: 1 MiB written and fsynced at a time, over a 64 MiB file of its own.
_HOG_WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
block = os.urandom(1 << 20)
i = 0
while True:
    os.pwrite(fd, block, (i % 64) << 20)
    os.fsync(fd)
    i += 1
"""


@pytest.fixture(scope="session", autouse=True)
def hog() -> Iterator[None]:
    """With ``QUIESCE_TEST_HOG=1``, the whole suite runs beside a CPU and an I/O hog.

    A ``dd`` copying /dev/zero to /dev/null spins a CPU in the kernel, and a
    writer fsyncs 1 MiB at a time into a file of its own on the root
    filesystem (/var/tmp): the load a busy database VM puts on quiesce. Both
    are killed, and the file removed, when the session ends. See
    tests/RELIABILITY.md.
    """
    if os.environ.get("QUIESCE_TEST_HOG") != "1":
        yield
        return
    fd, path = tempfile.mkstemp(prefix="quiesce-test-hog-", dir="/var/tmp")
    os.close(fd)
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    hogs = [
        subprocess.Popen(["dd", "if=/dev/zero", "of=/dev/null", "bs=64k"], start_new_session=True, **quiet),
        subprocess.Popen([sys.executable, "-c", _HOG_WRITER, path], start_new_session=True, **quiet),
    ]
    try:
        yield
    finally:
        for proc in hogs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.unlink(path)


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
