"""The guardian and the watchdog run as quiesce-helper, their own program, not a copy of the caller."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quiesce.engine import native
from quiesce.engine.native import core
from quiesce.engine.native.core import lib
from quiesce.errors import GuardianError, QuiesceOSError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def dir_fds(tmp_path):
    """Two open directories to stand in for targets (never frozen here)."""
    fds = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        fds.append(os.open(tmp_path / name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    yield fds, [str(tmp_path / n) for n in ("a", "b")]
    for fd in fds:
        os.close(fd)


@pytest.fixture
def helper_fd():
    """Lets a test point the C side at another helper; the real one is set back afterwards."""
    yield lib.qz_set_helper_fd
    lib.qz_set_helper_fd(core.HELPER_FD)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_helper_is_built_next_to_the_extension():
    """An install carries the helper, executable, next to ``_native``: nothing is looked up at run time."""
    assert core.HELPER_PROBLEM is None
    assert core.HELPER_FD >= 0
    assert os.access(core.HELPER_PATH, os.X_OK)


def test_the_guardian_is_the_helper_not_a_copy_of_the_caller(dir_fds):
    """Its program is quiesce-helper; none of the caller's mappings (Python, the extension) are in it."""
    fds, labels = dir_fds
    with native.Session(fds, labels) as s:
        pid = s.arm(10_000_000_000)
        try:
            assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(core.HELPER_PATH)
            assert Path(f"/proc/{pid}/comm").read_text().strip() == "quiesce-guard"
            maps = _maps(pid)
            assert "_native" not in maps
            assert os.path.realpath(sys.executable) not in maps
            # Its only fds: stdio on /dev/null, its socket, and the targets (the memfd is closed once mapped).
            fd_targets = {os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
            assert set(labels) <= fd_targets
            assert not any("quiesce-session" in t for t in fd_targets)
        finally:
            s.disarm()
        assert s.guardian().exit_status == 0


def test_the_caller_takes_no_copy_on_write_faults_while_the_guardian_lives(dir_fds):
    """Rewriting 64 MiB of the caller's memory with a guardian armed faults no page in.

    A forked guardian shares every page copy-on-write: each first write
    after the fork faults and copies one page (16,384 here), inside the
    window when the caller is busy there.
    """
    fds, labels = dir_fds
    size = 64 << 20
    buf = bytearray(size)
    buf[:] = b"\x01" * size  # every page is the caller's own before the guardian starts
    with native.Session(fds, labels) as s:
        s.arm(10_000_000_000)
        try:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for off in range(0, size, 4096):
                buf[off] = 2
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        finally:
            s.disarm()
    assert faults < 1000, f"{faults} page faults rewriting {size >> 20} MiB"


def test_the_watchdog_is_the_helper_and_kills_when_its_owner_dies(tmp_path):
    """The watchdog runs quiesce-helper; when its owner dies it writes "1" to its kill file."""
    kill_file = tmp_path / "cgroup.kill"
    kill_file.write_bytes(b"")
    code = (
        "import os, sys\n"
        "from quiesce.engine import native\n"
        f"fd = os.open({str(kill_file)!r}, os.O_WRONLY | os.O_CLOEXEC)\n"
        "w = native.Watchdog(fd)\n"
        "print(w.pid, os.path.realpath(f'/proc/{w.pid}/exe'), flush=True)\n"
        "sys.stdin.readline()\n"
        "os._exit(0)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        pid_text, exe = proc.stdout.readline().split()
        assert exe == os.path.realpath(core.HELPER_PATH)
        assert Path(f"/proc/{pid_text}/comm").read_text().strip() == "quiesce-watch"
        assert kill_file.read_bytes() == b""
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while kill_file.read_bytes() != b"1" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kill_file.read_bytes() == b"1"


def test_without_a_helper_the_guardian_is_refused_and_says_why(dir_fds, helper_fd, monkeypatch):
    """No helper: arming fails before anything is frozen, naming what is missing."""
    fds, labels = dir_fds
    helper_fd(-1)
    monkeypatch.setattr(core, "HELPER_PROBLEM", "cannot open /x/quiesce-helper: No such file or directory")
    with native.Session(fds, labels) as s:
        with pytest.raises(GuardianError) as info:
            s.arm(10_000_000_000)
        assert info.value.errno == errno.ENOEXEC
        assert "/x/quiesce-helper" in str(info.value)
        assert s.guardian_pid is None
    with pytest.raises(QuiesceOSError, match="watchdog"):
        native.Watchdog(fds[0])


def test_a_helper_that_cannot_be_run_fails_the_start_with_its_errno(tmp_path, dir_fds, helper_fd):
    """A helper the kernel refuses to run: the exec's errno, no guardian; the real one works again after."""
    fds, labels = dir_fds
    plain = tmp_path / "not-a-program"
    plain.write_bytes(b"\x7fELF not really")
    plain.chmod(0o600)
    fd = os.open(plain, os.O_RDONLY | os.O_CLOEXEC)
    try:
        helper_fd(fd)
        with native.Session(fds, labels) as s:
            with pytest.raises(GuardianError) as info:
                s.arm(10_000_000_000)
            assert info.value.errno == errno.EACCES
            assert s.guardian_pid is None
            helper_fd(core.HELPER_FD)
            pid = s.arm(10_000_000_000)
            assert pid > 0
            s.disarm()
            assert s.guardian().exit_status == 0
    finally:
        os.close(fd)
