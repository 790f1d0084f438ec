"""The snapshot step as a command: inside the frozen window, or without a freeze.

With a freeze, :func:`run_snapshot_command` makes freeze, start, wait and
thaw one native call: no Python runs inside the window. Without one
(``fsFreezeEnabled`` false, or a failed freeze when failures may continue)
:func:`run_command` runs the same command under the same supervision, so
the snapshot step runs whenever the result says it did.

Either way the command runs like a script: own session and cgroup, stdin on
/dev/null, SIGTERM at its timeout, SIGKILL to its tree after the grace, a
clean environment plus ``QUIESCE_PHASE=snapshot``, ``QUIESCE_RUN_ID`` and
the caller's ``env``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence

from quiesce import native, shebang
from quiesce.cgroups import ScriptCgroup
from quiesce.errors import FreezeError, QuiesceOSError
from quiesce.freeze import Freeze
from quiesce.scripts import (
    KILL_WAIT_S,
    OUTPUT_TAIL,
    SCRIPT_PATH,
    Attempt,
    _attempt_from,
    _kill_if_running,
    _kill_leftovers,
    _reap,
    _spawn_failed,
)


def _start_error(program: str, err: OSError) -> str:
    """Why the command did not start: its ``#!`` interpreter when that is the cause, else ``err``."""
    problem = shebang.explain_exec_error(err, shebang.read_head(program), program)
    return str(err) if problem is None else f"did not start: {problem}"


def _environment(timeout_s: float, run_id: str, env: Mapping[str, str]) -> list[str]:
    return [
        f"{k}={v}"
        for k, v in {
            "PATH": SCRIPT_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "QUIESCE_PHASE": "snapshot",
            "QUIESCE_TIMEOUT_MS": str(int(timeout_s * 1000)),
            "QUIESCE_RUN_ID": run_id,
            **env,
        }.items()
    ]


def run_snapshot_command(
    freeze: Freeze,
    argv: Sequence[str],
    *,
    timeout_s: float,
    grace_s: float,
    env: Mapping[str, str],
    run_id: str,
    output_tail: int = OUTPUT_TAIL,
    cgroup_parent: str | None = None,
    release_fd: int = -1,
    release_sig: int = 0,
) -> Attempt:
    """Freeze, run the command, thaw, in one native call.

    Raises the freeze error if freezing failed (the command did not run). A
    thaw failure is in the freeze's records and raised by ``freeze.close()``;
    the command's attempt is returned either way. A ``release_sig`` byte on
    ``release_fd`` (a signal wake-up pipe) ends the window at once: the
    attempt's outcome is then "released" and the command is killed.
    """
    environ = _environment(timeout_s, run_id, env)
    cgroup = ScriptCgroup.create(f"{run_id}-snapshot", parent=cgroup_parent)
    isolation = "cgroup" if cgroup is not None else "process-group"
    cg_fd = cgroup.fd if cgroup is not None else -1
    with contextlib.ExitStack() as always:
        if cgroup is not None:
            always.callback(cgroup.close)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        always.callback(os.close, devnull)
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        for fd in (out_r, err_r, out_w, err_w):
            always.callback(os.close, fd)
        # The child's ends must block like any stdout; only ours are non-blocking.
        os.set_blocking(out_w, True)
        os.set_blocking(err_w, True)
        try:
            child, sup = freeze.command_window(
                argv,
                environ,
                path=argv[0],
                cgroup_fd=cg_fd,
                stdin_fd=devnull,
                stdout_fd=out_w,
                stderr_fd=err_w,
                out_fd=out_r,
                err_fd=err_r,
                timeout_ns=int(timeout_s * 1e9),
                grace_ns=int(grace_s * 1e9),
                kill_wait_ns=int(KILL_WAIT_S * 1e9),
                out_cap=output_tail,
                err_cap=output_tail,
                release_fd=release_fd,
                release_sig=release_sig,
            )
        except QuiesceOSError as err:
            if isinstance(err, FreezeError):
                raise
            return _spawn_failed(1, isolation, _start_error(argv[0], err))
        always.callback(child.close)
        if not sup.result().finished:
            # Released early, or it slept in the kernel (on a frozen
            # filesystem?): thawed now, it can die.
            child.kill_tree(cg_fd)
            _reap(child)
        leftovers = _kill_leftovers(child, cgroup)
        return _attempt_from(1, child, sup, leftovers, isolation)
    raise AssertionError("unreachable")  # pragma: no cover


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float,
    grace_s: float,
    env: Mapping[str, str],
    run_id: str,
    output_tail: int = OUTPUT_TAIL,
    cgroup_parent: str | None = None,
) -> Attempt:
    """Run the snapshot command without a freeze, under a script's supervision."""
    environ = _environment(timeout_s, run_id, env)
    cgroup = ScriptCgroup.create(f"{run_id}-snapshot", parent=cgroup_parent)
    isolation = "cgroup" if cgroup is not None else "process-group"
    cg_fd = cgroup.fd if cgroup is not None else -1
    with contextlib.ExitStack() as always:
        if cgroup is not None:
            always.callback(cgroup.close)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        always.callback(os.close, devnull)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        always.callback(os.close, out_r)
        always.callback(os.close, err_r)
        try:
            child = native.spawn(
                argv,
                environ,
                path=argv[0],
                cgroup_fd=cg_fd,
                stdin_fd=devnull,
                stdout_fd=out_w,
                stderr_fd=err_w,
            )
        except QuiesceOSError as err:
            return _spawn_failed(1, isolation, _start_error(argv[0], err))
        finally:
            os.close(out_w)
            os.close(err_w)
        always.callback(child.close)
        # Ended by an exception while it runs (KeyboardInterrupt in an API call): its tree goes too.
        always.callback(_kill_if_running, child, cg_fd)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        sup = native.Supervision(
            child,
            deadline_ns=child.start_ns + int(timeout_s * 1e9),
            grace_ns=int(grace_s * 1e9),
            kill_wait_ns=int(KILL_WAIT_S * 1e9),
            cgroup_fd=cg_fd,
            out_fd=out_r,
            err_fd=err_r,
            out_cap=output_tail,
            err_cap=output_tail,
        )
        # Like the frozen window, nothing interrupts the snapshot step: a
        # signal takes effect after it.
        while not sup.step():
            pass
        leftovers = _kill_leftovers(child, cgroup)
        return _attempt_from(1, child, sup, leftovers, isolation)
    raise AssertionError("unreachable")  # pragma: no cover
