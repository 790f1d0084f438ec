"""A fleet node's own snapshot step: its config's command, run inside the window, and its deadline.

The node's snapshot command runs after the cut, inside the node's window,
under the same supervision as a single-node run's (:mod:`quiesce.supervise`):
its own cgroup (or process group), the tails of its output kept, anything
it leaves running killed. Its cgroup and pipes are made before the freeze
(:func:`prepare`): only its start and the wait for it are in the window.
The node's freeze deadline is its config's, capped at the fleet run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import quiesce
from quiesce.supervise.launch import Launch
from quiesce.supervise.snapshot_command import run_in

#: How much of the command's stderr a node's report quotes.
DETAIL_TAIL = 300


def prepare(run_id: str) -> Launch:
    """The snapshot command's cgroup and pipes, made before the freeze (close it after the run)."""
    return Launch(f"fleet-{run_id}-snapshot", None)


def run_command(
    launch: Launch, argv: tuple[str, ...], timeout_s: float, env: Mapping[str, str], run_id: str
) -> tuple[bool, str]:
    """Run the node's snapshot command in ``launch`` to its timeout (then SIGKILL): (succeeded, what it did).

    ``env`` is added to the environment every supervised process gets
    (``PATH``, ``LANG``, ``QUIESCE_PHASE``...).
    """
    # Checked before the freeze (NodeRun.before_freeze): nothing but the start inside the window.
    attempt = run_in(launch, argv, timeout_s=timeout_s, grace_s=0.0, env=env, run_id=f"fleet-{run_id}")
    if attempt.outcome == "ok":
        return True, "snapshot command ok"
    if attempt.error is not None:
        return False, f"snapshot command {attempt.outcome}: {attempt.error}"
    if attempt.timed_out:
        return False, f"snapshot command timed out after {timeout_s:.1f} s"
    tail = attempt.stderr.strip()[-DETAIL_TAIL:]
    how = f"exited {attempt.exit_code}" if attempt.signal is None else f"killed by {attempt.signal}"
    return False, f"snapshot command {how}: {tail}"


def with_deadline(config: quiesce.LoadedConfig, deadline_s: float) -> quiesce.LoadedConfig:
    """The node's config with its freeze deadline capped at the fleet's.

    The node's snapshot command is run by :class:`NodeRun` inside the window
    (after the cut): the engine gets a callable, so its own mode is unused.
    """
    ext = config.config.quiesce
    timeout = min(ext.freeze_timeout_s, deadline_s)
    cfg = dataclasses.replace(config.config, quiesce=dataclasses.replace(ext, freeze_timeout_s=timeout))
    return dataclasses.replace(config, config=cfg)
