"""Session hooks: one process that holds the application quiesced across the frozen window.

A hook named ``*.session`` is a **session hook**: the pattern a database
lock needs (MySQL's ``FLUSH TABLES WITH READ LOCK``, PostgreSQL's
``pg_backup_start``: the session holding the lock must outlive the
snapshot). quiesce starts it with the argument ``session`` and waits, up to
``timeoutInSeconds``, for it to say it is ready the systemd way: a datagram
``READY=1`` on ``$NOTIFY_SOCKET`` (``systemd-notify --ready`` works from a
shell script), believed only from the hook itself
(:mod:`quiesce.supervise.notify`). After the thaw it releases it: closes
its stdin, waits ``graceSeconds``, sends SIGTERM, and after another grace
kills its tree. A session hook that exits 0 (or on that SIGTERM) was
released cleanly; one that dies before its release means the application
was not held quiesced during the snapshot.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import replace

from quiesce.engine import native
from quiesce.engine.fdwait import readable, wait_readable
from quiesce.supervise.checked import CheckedScript
from quiesce.supervise.hookdir import Hook
from quiesce.supervise.launch import Attempt, Launch, environment
from quiesce.supervise.notify import NotifyDir, in_cgroup, in_session
from quiesce.supervise.procs import PID_POLL_S, cgroup_of, child_exited
from quiesce.supervise.scripts import Progress, ScriptPolicy, script_argv

#: How often a waiting session hook's progress is reported (the caller paces the lines).
_PROGRESS_TICK_NS = 100_000_000


class SessionHook:
    """A started session hook: alive across the window until :meth:`release`."""

    def __init__(
        self,
        hook: Hook,
        checked: CheckedScript,
        policy: ScriptPolicy,
        env: Mapping[str, str],
        run_id: str,
        notify_dir: NotifyDir,
    ) -> None:
        self.hook = hook
        self.checked = checked
        self.policy = policy
        self.ready_ns: int | None = None
        self.released_ns: int | None = None
        self._stack = contextlib.ExitStack()
        self.launch = Launch(f"{run_id}-session-{hook.name}", policy.cgroup_parent, stdin_pipe=True)
        self._stack.callback(self.launch.close)
        self.cgroup = self.launch.cgroup
        self.isolation = self.launch.isolation
        self.out_r, self.err_r = self.launch.out_r, self.launch.err_r
        try:
            self.notify = notify_dir.socket()
            self._stack.callback(self.notify.close)
            self.notify_path = self.notify.path
            environ = environment(
                checked.phase,
                policy.timeout_s,
                {**env, "NOTIFY_SOCKET": self.notify_path},
                script=checked,
            )
            path, argv = script_argv(checked, ["session"])
            self.child = self.launch.spawn(argv, environ, path=path, script_fd=checked.fd)
        except BaseException:
            self._stack.close()
            raise
        # Only the hook's own processes may say READY=1: its cgroup, or its session.
        if self.cgroup is not None:
            self.notify.check = in_cgroup(cgroup_of(self.child.pid) or self.cgroup.relative_path)
        else:
            self.notify.check = in_session(self.child.pid)
        self._early: list[bytes] = [b"", b""]

    def _drain_early(self, fds: set[int]) -> set[int]:
        """Keep the output so far (small; it is reported with the rest); return the fds at EOF."""
        ended = set()
        for i, fd in enumerate((self.out_r, self.err_r)):
            if fd not in fds:
                continue
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 65536):
                    self._early[i] = (self._early[i] + chunk)[-self.policy.output_tail :]
                ended.add(fd)  # read returned b"": closed by every writer
        return ended

    def _receive(self) -> list[str]:
        """One notify datagram's assignments, if its sender is the hook (see quiesce.supervise.notify)."""
        return self.notify.receive()

    def _drain_notify(self, wait_s: float = 0.0) -> None:
        end = time.monotonic() + wait_s
        while True:
            left = max(0.0, end - time.monotonic())
            if not wait_readable(self.notify.fileno(), left):
                return
            if "BARRIER=1" in self._receive():
                return

    def wait_ready(self, progress: Progress | None = None) -> bool:
        """Wait for ``READY=1`` up to the timeout; False if it exited or timed out first."""
        timeout_ns = int(self.policy.timeout_s * 1e9)
        deadline = self.child.start_ns + timeout_ns
        # The pidfd turns readable when the hook exits; without one (-1, ignored) it is looked for by pid.
        watch = {self.notify.fileno(), self.child.pidfd, self.out_r, self.err_r}
        while True:
            now = native.now_ns()
            left = deadline - now
            if left <= 0:
                return False
            if progress is not None:
                progress(
                    f"session hook {self.hook.name}: waiting for READY",
                    1,
                    now - self.child.start_ns,
                    timeout_ns,
                )
                left = min(left, _PROGRESS_TICK_NS)
            if self.child.pidfd < 0:
                left = min(left, int(PID_POLL_S * 1e9))
            ready = readable(watch, left / 1e9)
            # An output pipe at EOF stays readable: it is not watched again.
            watch -= self._drain_early(ready)
            if self.notify.fileno() in ready and "READY=1" in self._receive():
                self.ready_ns = native.now_ns()
                # Answer systemd-notify's barrier, which follows at once.
                self._drain_notify(0.1)
                return True
            if self.child.pidfd in ready or (self.child.pidfd < 0 and child_exited(self.child)):
                return False

    def alive(self) -> bool:
        """True while the hook process has not exited."""
        return not child_exited(self.child)

    def release(self) -> Attempt:
        """Close its stdin, SIGTERM after the grace, kill the tree after another; collect it."""
        self._drain_notify()
        died_early = not self.alive()
        self.released_ns = native.now_ns()
        self.launch.close_stdin()
        grace_ns = int(self.policy.grace_s * 1e9)
        sup = self.launch.supervision(self.released_ns + grace_ns, grace_ns, self.policy.output_tail)
        while not sup.step():
            pass
        attempt = self.launch.finish(1, sup)
        early_out, early_err = (b.decode(errors="replace") for b in self._early)
        if died_early:
            outcome = "died-early"
        elif attempt.killed or attempt.outcome == "unkillable":
            outcome = "timeout"  # it ignored both its stdin closing and SIGTERM
        elif attempt.exit_code == 0 or (attempt.timed_out and attempt.signal == "SIGTERM"):
            outcome = "ok"  # ended on its own, or by the SIGTERM of its release, as asked
        else:
            outcome = "failed"
        tail = self.policy.output_tail
        return replace(
            attempt,
            outcome=outcome,
            stdout=(early_out + attempt.stdout)[-tail:],
            stderr=(early_err + attempt.stderr)[-tail:],
        )

    def close(self) -> None:
        """Kill it (its tree) if still running and free everything (idempotent)."""
        self._stack.close()
