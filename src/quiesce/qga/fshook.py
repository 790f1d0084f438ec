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
- it is refused unless root owns it and every directory above it and none of
  them can be written by anyone else (it runs as root).

Processes the hook leaves running after a successful exit are left alone,
as qemu-ga leaves them: a hook may hold a database lock until ``thaw``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import stat
import subprocess
import time
from dataclasses import dataclass

#: qemu-ga's default hook path.
DEFAULT_HOOK = "/etc/qemu/fsfreeze-hook"
DEFAULT_HOOK_TIMEOUT_S = 30.0
DEFAULT_HOOK_GRACE_S = 5.0
OUTPUT_LIMIT = 64 * 1024


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
    """Why root must not run ``path`` (a file or directory writable by others), or None."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as err:
        return err.strerror
    if not stat.S_ISREG(st.st_mode):
        return f"{real} is not a regular file"
    here = real
    while True:
        st = os.stat(here)
        if st.st_uid != 0:
            return f"{here} is owned by uid {st.st_uid}, not root"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{here} can be written by group or others (mode {stat.S_IMODE(st.st_mode):o})"
        if here == "/":
            return None
        here = os.path.dirname(here)


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
        if not os.access(self.path, os.X_OK):
            why = os.strerror(errno.ENOENT if not os.path.lexists(self.path) else errno.EACCES)
            return self._failed(arg, start, f"can't access fsfreeze hook '{self.path}': {why}")
        unsafe = unsafe_reason(self.path)
        if unsafe is not None:
            return self._failed(
                arg, start, f"fsfreeze hook '{self.path}' is not safe to run as root: {unsafe}"
            )
        out = os.memfd_create("quiesce-fsfreeze-hook", os.MFD_CLOEXEC)
        try:
            try:
                proc = subprocess.Popen(
                    [self.path, arg],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as err:
                return self._failed(arg, start, f"can't execute fsfreeze hook '{self.path}': {err.strerror}")
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
