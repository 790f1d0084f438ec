"""What every freezing benchmark script does to freeze nothing but its own loop filesystems.

- :func:`enter_private_namespace` (``quiesce.sandbox.enter_private_mount_namespace()``,
  remembering the namespace left) and :func:`require_private_namespace`:
  refuse to build or freeze anything unless this process has left the
  machine's mount namespace, so the sandbox's mounts are invisible to the
  machine and nothing of the machine's is ours.
- :func:`sandbox_targets`: plan the sandbox's filesystems with
  ``quiesce.azure.planning.make_plan`` and check that every planned target is one of
  them: same mount point, mounted from the loop device the sandbox attached.
- :func:`rcu_left_as_found`: whatever happens, ``/sys/kernel/rcu_expedited``
  holds at the end the value it held at the start.
- :func:`claim_knob`: a script that sets ``rcu_expedited`` itself first takes
  the lock every quiesce freeze takes on it, so a freeze running meanwhile
  (another user's, or a contender's) never reads the script's 1 as the
  machine's value and puts it back after the script restored the knob.
- :func:`sigterm_exits`: SIGTERM unwinds like an exception (``SystemExit``), so
  the sandbox is thawed, unmounted and detached and the RCU knob restored
  even when a CI timeout stops the script.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from types import FrameType

from quiesce.azure.planning import make_plan
from quiesce.engine.plan import Target
from quiesce.engine.rcu import RCU_EXPEDITED, ExpeditedRcu
from quiesce.engine.targets import check_explicit
from quiesce.sandbox import LoopFs, enter_private_mount_namespace


class NotOurs(RuntimeError):
    """A planned target is not one of the sandbox's loop mounts, or the namespace is not private."""


#: The mount namespace this process started in, once it has left it.
_left_namespace: str | None = None


def _namespace() -> str:
    return os.readlink("/proc/self/ns/mnt")


def enter_private_namespace() -> None:
    """Move into a private mount namespace (once per process), remembering the one left."""
    global _left_namespace
    if _left_namespace is None:
        before = _namespace()
        enter_private_mount_namespace()
        _left_namespace = before


def require_private_namespace() -> None:
    """Raise unless :func:`enter_private_namespace` moved this process out of its namespace."""
    if _left_namespace is None or _namespace() == _left_namespace:
        raise NotOurs("still in the machine's mount namespace: call enter_private_namespace() first")


def sandbox_targets(made: Sequence[LoopFs]) -> list[Target]:
    """The sandbox's filesystems as planned targets (freeze order), each checked to be ours."""
    require_private_namespace()
    mounts = [str(fs.mount_point) for fs in made]
    plan = make_plan(mounts, vmbackup_conf=None)
    check_explicit(plan, mounts)
    devices = {str(fs.mount_point): fs.device for fs in made}
    targets = list(plan.targets)
    for t in targets:
        device = devices.get(t.mount.mount_point)
        # Freeze nothing but what this run created: same mount point, same loop device.
        if device is None or device != t.mount.source or not device.startswith("/dev/loop"):
            raise NotOurs(f"planned target {t.mount.mount_point} ({t.mount.source}) is not a sandbox mount")
    if len(targets) != len(made):
        raise NotOurs(f"planned {len(targets)} targets for {len(made)} filesystems")
    return targets


def _read_rcu() -> bytes | None:
    try:
        with open(RCU_EXPEDITED, "rb") as f:
            return f.read().strip()
    except OSError:
        return None


def claim_knob() -> ExpeditedRcu:
    """``rcu_expedited`` open and claimed from every quiesce freeze; close it to restore and release.

    Raises RuntimeError while a freeze holds it (its value is then that
    freeze's, not the machine's).
    """
    knob = ExpeditedRcu()
    if not knob.claim():
        knob.close()
        raise RuntimeError(f"{RCU_EXPEDITED} is held by a freeze under way: try again when it ends")
    return knob


@contextlib.contextmanager
def knob_claimed() -> Iterator[None]:
    """Within the block the script may write ``rcu_expedited``: it holds the freezes' lock on it."""
    if not os.path.exists(RCU_EXPEDITED):
        yield
        return
    knob = claim_knob()
    try:
        yield
    finally:
        knob.close()


@contextlib.contextmanager
def rcu_left_as_found() -> Iterator[None]:
    """Put ``rcu_expedited`` back to its value at entry on the way out, if it changed."""
    original = _read_rcu()
    try:
        yield
    finally:
        if original is not None and _read_rcu() != original:
            with open(RCU_EXPEDITED, "wb") as f:
                f.write(original)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit (cleanups run) instead of killing outright.

    Python runs the handler between bytecodes, so a native freeze-and-thaw
    call always completes (thawed) before the exception is raised.
    """
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def refusal(script: str, why_root: str, tools: Sequence[str]) -> str | None:
    """Why ``script`` cannot run here (not root, a tool missing), or None when it can."""
    if os.geteuid() != 0:
        return f"{script} must run as root: {why_root} (try: sudo python bench/{script})"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"{script}: missing tools: {', '.join(missing)}"
    return None
