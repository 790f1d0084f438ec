"""The native layer without freezing anything: session, guardian lifecycle, errno mapping."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quiesce.engine import native
from quiesce.engine.native.core import ffi, lib
from quiesce.errors import (
    FreezeError,
    FreezeNotSupportedError,
    FreezeTimeoutError,
    FrozenByOtherError,
    NotFrozenError,
    QuiesceError,
    ThawError,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def dir_fds(tmp_path):
    """Two open directories to stand in for targets (never frozen here)."""
    paths = [tmp_path / "a", tmp_path / "b"]
    fds = []
    for p in paths:
        p.mkdir()
        fds.append(os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    yield fds, [str(p) for p in paths]
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (errno.EBUSY, FrozenByOtherError),
        (errno.EOPNOTSUPP, FreezeNotSupportedError),
        (errno.ETIMEDOUT, FreezeTimeoutError),
        (errno.EPERM, FreezeError),
    ],
)
def test_freeze_errno_maps_to_exception(err, kind):
    """Each FIFREEZE errno becomes its exception, an OSError keeping errno and path."""
    exc = native.freeze_error(err, "/data")
    assert type(exc) is kind
    assert isinstance(exc, OSError) and isinstance(exc, QuiesceError)
    assert exc.errno == err and exc.filename == "/data"
    assert "/data" in str(exc) and errno.errorcode[err] in str(exc)


def test_thaw_einval_means_not_frozen():
    """FITHAW's EINVAL is NotFrozenError; other errnos are plain ThawError."""
    assert type(native.thaw_error(errno.EINVAL, "/x")) is NotFrozenError
    other = native.thaw_error(errno.EIO, "/x")
    assert type(other) is ThawError and other.errno == errno.EIO


def test_state_and_reason_names_cover_the_header_constants():
    """Every state and guardian reason defined in C has a report name."""
    header = (Path(__file__).parents[2] / "csrc" / "session.h").read_text()
    names = re.findall(r"^#define (QZ_\w+) \d+", header, re.MULTILINE)
    limits = ("QZ_FIRED_", "QZ_LEDGER", "QZ_MAX_")
    states = [getattr(lib, n) for n in names if not n.startswith(limits)]
    reasons = [getattr(lib, n) for n in names if n.startswith("QZ_FIRED_")]
    assert len(states) == 8 and len(reasons) == 4
    assert sorted(states) == sorted(native.STATE_NAMES)
    assert sorted(reasons) == sorted(native.GUARD_REASONS)


def test_session_rejects_bad_sizes(dir_fds):
    """A session needs 1..MAX fds and one label per fd."""
    fds, labels = dir_fds
    with pytest.raises(ValueError):
        native.Session([], [])
    with pytest.raises(ValueError):
        native.Session(fds, labels[:1])


def test_the_filesystem_limit_is_the_headers_and_both_sides_hold_to_it(dir_fds):
    """``MAX_FILESYSTEMS`` is session.h's ``QZ_MAX_FILESYSTEMS`` (through cffi); C refuses one more too."""
    header = (Path(__file__).parents[2] / "csrc" / "session.h").read_text()
    [written] = re.findall(r"^#define QZ_MAX_FILESYSTEMS (\d+)", header, re.MULTILINE)
    assert native.MAX_FILESYSTEMS == lib.QZ_MAX_FILESYSTEMS == int(written)
    fds, labels = dir_fds
    over = native.MAX_FILESYSTEMS + 1
    with pytest.raises(ValueError, match=f"not {over}"):
        native.Session([fds[0]] * over, [labels[0]] * over)
    # Below the Python check, the C allocator says the same: EINVAL, not a mapping.
    assert lib.qz_session_new(ffi.new("int[]", [fds[0]] * over), over) == ffi.NULL
    raw = lib.qz_session_new(ffi.new("int[]", [fds[0]] * native.MAX_FILESYSTEMS), native.MAX_FILESYSTEMS)
    assert raw != ffi.NULL
    lib.qz_session_free(raw)


def test_now_ns_is_the_monotonic_clock():
    """native.now_ns() reads the same clock as time.monotonic_ns()."""
    a = time.monotonic_ns()
    b = native.now_ns()
    c = time.monotonic_ns()
    assert a <= b <= c


def test_guardian_arm_and_disarm_without_freezing(dir_fds):
    """An armed guardian runs in its own session and exits 0 when the window ends normally."""
    fds, labels = dir_fds
    with native.Session(fds, labels) as s:
        pid = s.arm(10_000_000_000, 1_000_000_000)
        assert s.guardian_pid == pid
        assert os.getsid(pid) == pid
        with open(f"/proc/{pid}/comm") as f:
            assert f.read().strip() == "quiesce-guard"
        s.disarm()
        assert s.guardian_pid is None
        g = s.guardian()
        assert g.reason is None and g.exit_status == 0
        assert [r.state for r in s.records()] == ["not-attempted"] * 2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_guardian_cannot_be_armed_twice(dir_fds):
    """A second arm on the same session is refused (EALREADY)."""
    fds, labels = dir_fds
    with native.Session(fds, labels) as s:
        s.arm(10_000_000_000)
        try:
            with pytest.raises(QuiesceError) as info:
                s.arm(10_000_000_000)
            assert info.value.errno == errno.EALREADY
        finally:
            s.disarm()


ORPHAN = """
import os, sys
from quiesce.engine import native
fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in sys.argv[3:]]
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
where = os.open(os.path.dirname(sys.argv[2]), os.O_RDONLY | os.O_DIRECTORY)
s = native.Session(fds, sys.argv[3:])
arm = s.arm(30_000_000_000, 0, report_fd=log, ledger_dirfd=where, ledger_name=os.path.basename(sys.argv[2]))
print(arm, flush=True)
os._exit(0)
"""


def test_orphaned_guardian_with_nothing_frozen_thaws_nothing(tmp_path, dir_fds):
    """When the orchestrator dies before freezing, the guardian removes the ledger and thaws nothing."""
    _, labels = dir_fds
    log, ledger = tmp_path / "guardian.log", tmp_path / "ledger.json"
    ledger.write_text("{}")
    out = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(log), str(ledger), *labels],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    pid = int(out.stdout)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "event=fired reason=orphaned" in lines[0]
    assert not ledger.exists()


def test_unclosed_session_warns(dir_fds):
    """Dropping a session without close() raises a ResourceWarning (and frees it)."""
    fds, labels = dir_fds
    s = native.Session(fds, labels)
    with pytest.warns(ResourceWarning):
        del s
        gc.collect()


STUCK_GUARDIAN = """
import errno, os, resource, signal, sys
from quiesce.engine import native
from quiesce.errors import QuiesceError
fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in sys.argv[2:]]
s = native.Session(fds, sys.argv[2:])
pid = s.arm(30_000_000_000)
print(pid, flush=True)
os.kill(pid, signal.SIGSTOP)  # a guardian that cannot exit when told the window ended
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if sys.argv[1] == "no-pidfd":
    os.close(s._raw().guardian_pidfd)
    s._raw().guardian_pidfd = -1
else:
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))  # ppoll() fails with EINVAL
try:
    s.disarm(300_000_000)
    code = 3
except QuiesceError as err:
    code = 0 if err.errno == errno.ETIMEDOUT else 4
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
os.kill(pid, signal.SIGCONT)
s.disarm()
s.close()
sys.exit(code)
"""


@pytest.mark.parametrize("how", ["ppoll-fails", "no-pidfd"])
def test_disarm_of_a_stuck_guardian_is_bounded(dir_fds, how):
    """Disarm ends with ETIMEDOUT at its wait, also if ppoll fails or no pidfd exists (no blocking wait)."""
    _, labels = dir_fds
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_GUARDIAN, how, *labels], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    guardian = os.pidfd_open(int(proc.stdout.readline()))
    try:
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, (proc.returncode, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(guardian, signal.SIGKILL)
        os.close(guardian)


def test_a_stopped_watchdog_never_hangs_the_end_of_a_run(tmp_path):
    """Disarming a watchdog that cannot answer (SIGSTOPped) returns by its bound; the watchdog is gone.

    It is killed, not left to act: it never writes to its kill file.
    """
    kill_file = tmp_path / "cgroup.kill"
    fd = os.open(kill_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        watchdog = native.Watchdog(fd)
        os.kill(watchdog.pid, signal.SIGSTOP)
        started = time.monotonic()
        watchdog.disarm(wait_ns=200_000_000)
        took = time.monotonic() - started
        with pytest.raises(ChildProcessError):
            os.waitpid(watchdog.pid, os.WNOHANG)  # reaped: no such child any more
    finally:
        os.close(fd)
    assert took < 3.0, f"the disarm took {took:.1f} s"
    assert kill_file.read_bytes() == b""
