"""A fleet node's own snapshot step: its config's command, run inside the window, and its deadline.

The node's snapshot command runs after the cut, inside the node's window, in
its own session (killed with its process group at its timeout). The node's
freeze deadline is its config's, capped at the fleet run's.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess

import quiesce


def run_command(argv: tuple[str, ...], timeout_s: float, env: dict[str, str]) -> tuple[bool, str]:
    """Run the node's snapshot command in its own session; killed with its group at the timeout."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as err:
        return False, f"cannot start {argv[0]}: {err.strerror}"
    try:
        _, err_text = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"snapshot command timed out after {timeout_s:.1f} s"
    if proc.returncode != 0:
        tail = err_text.decode(errors="replace").strip()[-300:]
        return False, f"snapshot command exited {proc.returncode}: {tail}"
    return True, "snapshot command ok"


def with_deadline(config: quiesce.LoadedConfig, deadline_s: float) -> quiesce.LoadedConfig:
    """The node's config with its freeze deadline capped at the fleet's.

    The node's snapshot command is run by :class:`NodeRun` inside the window
    (after the cut): the engine gets a callable, so its own mode is unused.
    """
    ext = config.config.quiesce
    timeout = min(ext.freeze_timeout_s, deadline_s)
    cfg = dataclasses.replace(config.config, quiesce=dataclasses.replace(ext, freeze_timeout_s=timeout))
    return dataclasses.replace(config, config=cfg)
