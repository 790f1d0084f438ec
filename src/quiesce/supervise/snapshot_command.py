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

import os
from collections.abc import Mapping, Sequence

from quiesce.engine.freeze import Freeze
from quiesce.engine.trust import NOT_FOUND_ERRNOS
from quiesce.errors import FreezeError, QuiesceOSError
from quiesce.supervise import shebang
from quiesce.supervise.launch import KILL_WAIT_S, OUTPUT_TAIL, Attempt, Launch, environment
from quiesce.supervise.procs import reap_child


def _start_error(program: str, err: OSError) -> str:
    """Why the command did not start: its ``#!`` interpreter when that is the cause, else ``err``."""
    problem = shebang.explain_exec_error(err, shebang.read_head(program), program)
    return str(err) if problem is None else f"did not start: {problem}"


def unsafe_command(program: str) -> str | None:
    """Why root must not execute ``program`` (the command's ``argv[0]``), or None when it may.

    It runs as root inside the window, so it passes the checks of
    :func:`quiesce.engine.trust.check_program`: a root-owned file nobody
    else can write, reached only through directories and links only root
    can change. Checked just before it is started (and before the freeze),
    and executed by the same absolute path, which only root can re-point.
    """
    try:
        untrusted = shebang.untrusted_program(program)
    except ValueError:
        return "is not an absolute path"
    except OSError as err:
        if err.errno in NOT_FOUND_ERRNOS:
            return f"does not exist ({os.strerror(err.errno or 0)})"
        return f"cannot be checked: {os.strerror(err.errno or 0)}"
    return None if untrusted is None else f"is not safe to run as root: {untrusted}"


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
    environ = environment("snapshot", timeout_s, {"QUIESCE_RUN_ID": run_id, **env})
    # The window starts the command itself: the pipes are ready, non-blocking on our side.
    with Launch(f"{run_id}-snapshot", cgroup_parent, nonblocking=True) as launch:
        unsafe = unsafe_command(argv[0])
        if unsafe is not None:
            # Refused before the freeze: nothing is frozen for a command that cannot run.
            return launch.failed(1, f"snapshot command {argv[0]} {unsafe}")
        try:
            child, sup = freeze.command_window(
                argv,
                environ,
                path=argv[0],
                cgroup_fd=launch.cgroup_fd,
                stdin_fd=launch.stdin_fd,
                stdout_fd=launch.out_w,
                stderr_fd=launch.err_w,
                out_fd=launch.out_r,
                err_fd=launch.err_r,
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
            return launch.failed(1, _start_error(argv[0], err))
        launch.adopt(child)
        if not sup.result().finished:
            # Released early, or it slept in the kernel (on a frozen
            # filesystem?): thawed now, it can die.
            child.kill_tree(launch.cgroup_fd)
            reap_child(child, KILL_WAIT_S)
        return launch.finish(1, sup)


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
    with Launch(f"{run_id}-snapshot", cgroup_parent) as launch:
        unsafe = unsafe_command(argv[0])
        if unsafe is not None:
            return launch.failed(1, f"snapshot command {argv[0]} {unsafe}")
        return run_in(
            launch,
            argv,
            timeout_s=timeout_s,
            grace_s=grace_s,
            env=env,
            run_id=run_id,
            output_tail=output_tail,
        )


def run_in(
    launch: Launch,
    argv: Sequence[str],
    *,
    timeout_s: float,
    grace_s: float,
    env: Mapping[str, str],
    run_id: str,
    output_tail: int = OUTPUT_TAIL,
) -> Attempt:
    """Run the snapshot command in ``launch``, whose cgroup and pipes were made beforehand.

    A fleet node makes them before its freeze and runs the command inside
    its window, after the cut: only the start and the wait are in the window.
    The caller has checked the command already (:func:`unsafe_command`, before
    any freeze; only root could change it since).
    """
    environ = environment("snapshot", timeout_s, {"QUIESCE_RUN_ID": run_id, **env})
    try:
        child = launch.spawn(argv, environ, path=argv[0])
    except QuiesceOSError as err:
        return launch.failed(1, _start_error(argv[0], err))
    sup = launch.supervision(child.start_ns + int(timeout_s * 1e9), int(grace_s * 1e9), output_tail)
    # Like the frozen window, nothing interrupts the snapshot step: a
    # signal takes effect after it.
    while not sup.step():
        pass
    return launch.finish(1, sup)
