"""A fleet node's own snapshot step: its config's command, run inside the window, and its deadline.

The node's snapshot command runs after the cut, inside the node's window,
under the same supervision as a single-node run's (:mod:`quiesce.supervise`):
its own cgroup (or process group), the tails of its output kept, anything
it leaves running killed. The node's freeze deadline is its config's,
capped at the fleet run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import quiesce
from quiesce.supervise.snapshot_command import run_command as supervised

#: How much of the command's stderr a node's report quotes.
DETAIL_TAIL = 300


def run_command(
    argv: tuple[str, ...], timeout_s: float, env: Mapping[str, str], name: str
) -> tuple[bool, str]:
    """Run the node's snapshot command to its timeout (then SIGKILL): (succeeded, what it did).

    ``name`` names its cgroup; ``env`` is added to the environment every
    supervised process gets (``PATH``, ``LANG``, ``QUIESCE_PHASE``...).
    """
    attempt = supervised(argv, timeout_s=timeout_s, grace_s=0.0, env=env, run_id=name)
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
