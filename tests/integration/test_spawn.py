"""The native spawner and supervisor with real children (no root needed)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.engine import native
from quiesce.errors import QuiesceOSError

pytestmark = pytest.mark.timeout(60)


def _run(argv, *, deadline_s=10.0, grace_s=1.0, cap=65536, tick_ns=0, path=None):
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        child = native.spawn(
            argv,
            ["PATH=/usr/bin:/bin"],
            path=path or argv[0],
            stdin_fd=null,
            stdout_fd=out_w,
            stderr_fd=err_w,
        )
    finally:
        os.close(out_w)
        os.close(err_w)
        os.close(null)
    try:
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        sup = native.Supervision(
            child,
            deadline_ns=child.start_ns + int(deadline_s * 1e9),
            grace_ns=int(grace_s * 1e9),
            kill_wait_ns=5_000_000_000,
            tick_ns=tick_ns,
            out_fd=out_r,
            err_fd=err_r,
            out_cap=cap,
            err_cap=cap,
        )
        ticks = 0
        while not sup.step():
            ticks += 1
        return child, sup.result(), sup.tails(), ticks
    finally:
        child.close()
        os.close(out_r)
        os.close(err_r)


def test_exit_status_and_output():
    """Exit code, both streams and rusage come back."""
    child, res, (out, err), _ = _run(["/bin/sh", "-c", "echo o; echo e >&2; exit 7"])
    assert child.pidfd == -1  # closed after use
    assert res.finished and res.exited and res.exit_code == 7
    assert (out, err) == (b"o\n", b"e\n")
    assert res.maxrss_kb > 0 and not res.timed_out


def test_child_runs_in_its_own_session():
    """The child is a session leader (so its process group can be killed as one)."""
    _, res, (out, _), _ = _run([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"])
    assert out == b"True\n" and res.exit_code == 0


def test_exec_failure_is_an_errno_not_a_child():
    """A missing program fails qz_spawn with ENOENT instead of a child exiting 127."""
    with pytest.raises(QuiesceOSError) as info:
        _run(["/nonexistent/prog"])
    assert info.value.errno == errno.ENOENT


def test_sigpipe_is_default_in_the_child():
    """Python ignores SIGPIPE; the child gets the default disposition back."""
    _, res, (out, _), _ = _run(["/bin/sh", "-c", "grep SigIgn /proc/self/status"])
    assert out.split()[1] == b"0000000000000000"
    assert res.exit_code == 0


def test_ticks_return_before_exit():
    """With a tick the supervisor returns to the caller while the child runs."""
    _, res, _, ticks = _run(["/bin/sleep", "0.3"], tick_ns=50_000_000)
    assert res.exit_code == 0 and ticks >= 3


def test_no_caller_fds_leak_into_the_child():
    """Only stdin, stdout and stderr reach the child."""
    keep = os.open("/", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(keep, True)
    try:
        _, _, (out, _), _ = _run(["/bin/ls", "/proc/self/fd"])
    finally:
        os.close(keep)
    assert sorted(int(x) for x in out.split()) == [0, 1, 2, 3]  # 3: ls's own directory fd


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(0, 300_000), cap=st.integers(1, 70_000))
def test_ring_keeps_exactly_the_last_bytes(size, cap):
    """Whatever the sizes, the kept tail is the last `cap` bytes of the stream, in order."""
    code = "import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(int(sys.argv[1]))))"
    _, res, (out, _), _ = _run([sys.executable, "-c", code, str(size)], cap=cap)
    expected = bytes(i % 251 for i in range(size))
    assert res.stdout_bytes == size
    assert out == expected[-cap:] if size else out == b""


def test_sigterm_comes_at_the_deadline_not_later():
    """SIGTERM is sent within 10 ms of a 12 s deadline (an absolute timerfd, not poll's timeout)."""
    child, res, _, _ = _run(["/bin/sleep", "60"], deadline_s=12, grace_s=1)
    assert res.timed_out and res.term_signal is not None
    late = res.term_ns - (child.start_ns + 12_000_000_000)
    assert 0 <= late < 10_000_000, f"SIGTERM {late / 1e6:.2f} ms after the deadline"


LOW_ERRPIPE = """
import errno, os, resource, sys
from quiesce.engine import native
from quiesce.errors import QuiesceOSError
null = [os.open(os.devnull, os.O_RDWR) for _ in range(6)][3:]  # the child's stdio: fds above 3
for fd in (0, 1, 2, 3):
    os.close(fd)  # the error pipe lands on 0 and 1, the pidfd on 2
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # no fd >= 3 can be made: lifting the pipe fails
try:
    native.spawn(["/bin/true"], [], path="/bin/true", stdin_fd=null[0], stdout_fd=null[1], stderr_fd=null[2])
except QuiesceOSError as err:
    sys.exit(0 if err.errno == errno.EINVAL else 4)
sys.exit(3)  # reported a start although the child never ran the program
"""


def test_a_child_that_cannot_move_its_error_pipe_is_not_a_start():
    """If the child cannot lift the error pipe above fd 3, spawn fails with that errno, never "started"."""
    proc = subprocess.run([sys.executable, "-c", LOW_ERRPIPE], capture_output=True, timeout=30)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)


ZERO_PID = """
import os, sys
from quiesce.engine import native
null = os.open(os.devnull, os.O_RDWR)
child = native.spawn(
    ["/bin/sleep", "30"], [], path="/bin/sleep", stdin_fd=null, stdout_fd=null, stderr_fd=null
)
child._c.pid = 0  # a child record without a pid: only its pidfd may be used
sup = native.Supervision(child, deadline_ns=native.now_ns() - 1, grace_ns=5_000_000_000,
                         kill_wait_ns=5_000_000_000)
while not sup.step():
    pass
res = sup.result()
child.close()
sys.exit(0 if res.timed_out and res.term_signal == 15 else 4)
"""


def test_a_timeout_never_signals_pid_zero():
    """terminate() with no pid signals the child by its pidfd only, never kill(0): the caller's own group."""
    proc = subprocess.run(
        [sys.executable, "-c", ZERO_PID], capture_output=True, timeout=30, start_new_session=True
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
