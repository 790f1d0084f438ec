"""qemu-ga's fsfreeze hook, kept working: called as qemu-ga calls it, but bounded and heard.

qemu-ga runs one executable (``/etc/qemu/fsfreeze-hook``; Debian's runs
every script in ``fsfreeze-hook.d`` in turn) with the argument ``freeze``
before freezing and ``thaw`` after thawing, waits for it without a limit,
and throws its output away. Here it gets the same arguments and the same
place in the sequence, but:

- a deadline: at ``timeout`` it gets SIGTERM, after ``grace`` its whole
  process group SIGKILL, and the command fails ("timed out") instead of
  hanging the agent;
- its output (stdout and stderr, interleaved, the last 64 KiB) is kept and
  logged, in memory until then (a file that outlives the hook is not read);
- it is refused unless root owns it and every directory and link on the way
  to it, and none of them can be written by anyone else (it runs as root);
- it gets a clean environment (``PATH``, ``HOME=/root``, ``LANG=C.UTF-8``),
  ``/`` as its current directory, umask 022, and no fd of the agent's.

Processes the hook leaves running after a successful exit are left alone,
as qemu-ga leaves them: a hook may hold a database lock until ``thaw``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass

from quiesce.supervise import shebang
from quiesce.supervise.launch import SCRIPT_PATH

#: qemu-ga's default hook path.
DEFAULT_HOOK = "/etc/qemu/fsfreeze-hook"
DEFAULT_HOOK_TIMEOUT_S = 30.0
DEFAULT_HOOK_GRACE_S = 5.0
OUTPUT_LIMIT = 64 * 1024
#: The status qemu-ga reports for a hook it cannot exec (its child's EXIT_FAILURE).
EXEC_FAILED_STATUS = 1
#: The hook's whole environment (qemu-ga's own, under systemd): nothing of the caller's.
HOOK_ENV = {"PATH": SCRIPT_PATH, "HOME": "/root", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class HookOutcome:
    """One call of the hook; ``error`` (qemu-ga's wording where it has one) is None on success."""

    path: str
    arg: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    duration_ns: int
    output: str
    error: str | None

    @property
    def ok(self) -> bool:
        """The hook exited 0 in time."""
        return self.error is None


def unsafe_reason(path: str) -> str | None:
    """Why root must not run ``path``, or None.

    The checks of :func:`quiesce.engine.trust.check_program`: a regular file
    owned by root, writable by no one else and executable, reached only
    through directories and links only root can change (a symlink planted
    in a directory a user can write is never followed). Then the path run
    right after it leads to the same file.
    """
    try:
        return shebang.untrusted_program(path)
    except ValueError:
        return "not an absolute path"
    except OSError as err:
        return f"{os.strerror(err.errno or 0)} at {err.filename or path}"


class FsfreezeHook:
    """The hook at ``path``; ``required`` when named explicitly (a missing default is no hook)."""

    def __init__(
        self,
        path: str = DEFAULT_HOOK,
        *,
        required: bool = False,
        timeout_s: float = DEFAULT_HOOK_TIMEOUT_S,
        grace_s: float = DEFAULT_HOOK_GRACE_S,
    ) -> None:
        self.path = path
        self.required = required
        self.timeout_s = timeout_s
        self.grace_s = grace_s

    def present(self) -> bool:
        """Whether there is a hook to run at all."""
        return self.required or os.path.lexists(self.path)

    def run(self, arg: str) -> HookOutcome:
        """Run the hook with ``arg`` (``freeze`` or ``thaw``) to completion or its deadline."""
        start = time.monotonic_ns()
        # Absolute from here on: a relative hook path would depend on the current directory.
        path = os.path.abspath(self.path)
        if not os.access(path, os.X_OK):
            why = os.strerror(_access_errno(path))
            return self._failed(arg, start, f"can't access fsfreeze hook '{self.path}': {why}")
        unsafe = unsafe_reason(path)
        if unsafe is not None:
            return self._failed(
                arg, start, f"fsfreeze hook '{self.path}' is not safe to run as root: {unsafe}"
            )
        out = os.memfd_create("quiesce-fsfreeze-hook", os.MFD_CLOEXEC)
        try:
            try:
                # The path just checked (only root can re-point it), as qemu-ga runs it ($0 is
                # the hook's path: Debian's finds fsfreeze-hook.d next to it); nothing of
                # quiesce's environment, current directory, umask or fds leaks in.
                proc = subprocess.Popen(
                    [path, arg],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    close_fds=True,
                    cwd="/",
                    env=HOOK_ENV,
                    umask=0o022,
                )
            except OSError as err:
                # qemu-ga's child exits 1 when its exec fails, and qemu-ga says so; the reason
                # goes to the log as the hook's output.
                return HookOutcome(
                    self.path,
                    arg,
                    EXEC_FAILED_STATUS,
                    None,
                    False,
                    time.monotonic_ns() - start,
                    f"can't execute fsfreeze hook '{self.path}': {err.strerror}",
                    f"fsfreeze hook has failed with status {EXEC_FAILED_STATUS}",
                )
            timed_out = _wait_or_kill(proc, self.timeout_s, self.grace_s)
            output = _tail(out)
        finally:
            os.close(out)
        rc = proc.returncode
        code, sig = (rc, None) if rc >= 0 else (None, -rc)
        if timed_out:
            error = f"fsfreeze hook timed out after {self.timeout_s:g} s and was killed"
        elif sig is not None:
            error = "fsfreeze hook has terminated abnormally"
        elif code:
            error = f"fsfreeze hook has failed with status {code}"
        else:
            error = None
        return HookOutcome(self.path, arg, code, sig, timed_out, time.monotonic_ns() - start, output, error)

    def _failed(self, arg: str, start: int, error: str) -> HookOutcome:
        return HookOutcome(self.path, arg, None, None, False, time.monotonic_ns() - start, "", error)


def _access_errno(path: str) -> int:
    """The errno access(2) gave for ``path``: why the lookup failed, else EACCES (not executable)."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno or errno.EACCES
    return errno.EACCES


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout_s: float, grace_s: float) -> bool:
    """Reap ``proc``; past ``timeout_s`` SIGTERM its group, after the grace SIGKILL. True: timed out."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if poller.poll(max(0, int(timeout_s * 1000))):
            proc.wait()
            return False
        _signal_group(proc.pid, signal.SIGTERM)
        poller.poll(max(0, int(grace_s * 1000)))
        # Whatever is left of the group goes, the leader too if it lingers. The
        # leader is not reaped yet, so its pid (the group's id) cannot be reused.
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    finally:
        os.close(pidfd)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _tail(fd: int) -> str:
    size = os.fstat(fd).st_size
    os.lseek(fd, max(0, size - OUTPUT_LIMIT), os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, OUTPUT_LIMIT)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)[-OUTPUT_LIMIT:].decode("utf-8", "replace")
