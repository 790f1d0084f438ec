"""``with frozen(targets):`` the API's freeze for a block, and the error when its window expired early."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence

from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.plan import Target
from quiesce.engine.report import WindowExpiredError, expiry
from quiesce.engine.targets import check_explicit, plan_targets

#: What names a target: a planned Target, or a mount point's path.
TargetLike = Target | str | bytes | os.PathLike[str] | os.PathLike[bytes]


def _planned(targets: Iterable[TargetLike]) -> Sequence[Target]:
    """``targets`` read once, whole; paths (str, bytes or path objects) planned and checked."""
    if isinstance(targets, (str, bytes, os.PathLike)):
        raise TypeError(f"targets are a list of mount points, not one path: write [{targets!r}]")
    try:
        items = list(targets)
    except TypeError:
        raise TypeError(
            f"targets must be an iterable of mount points, not {type(targets).__name__}"
        ) from None
    for t in items:
        if not isinstance(t, (Target, str, bytes, os.PathLike)):
            raise TypeError(
                f"a target is a mount point's path or a planned Target, not {type(t).__name__} {t!r}"
            )
    if all(isinstance(t, Target) for t in items):
        return [t for t in items if isinstance(t, Target)]
    paths = [t.mount.mount_point if isinstance(t, Target) else os.fsdecode(t) for t in items]
    plan = plan_targets(paths)
    check_explicit(plan, paths)
    return plan.targets


@contextlib.contextmanager
def frozen(
    targets: Iterable[TargetLike],
    options: FreezeOptions | None = None,
    *,
    timeout: float | None = None,
    allow_expired: bool = False,
) -> Iterator[Freeze]:
    """Freeze ``targets`` for the body of a ``with`` block, then thaw.

    ``targets`` are planned :class:`Target` objects or mount point paths
    (``str``, ``bytes`` or path objects; planned here, in a safe order; a
    path that cannot be frozen raises TargetError). It is read once, whole;
    a single path instead of a list is a TypeError. ``timeout`` (seconds)
    overrides ``options.timeout_s``. The guardian thaws on its own if the
    block outlives the timeout or the process dies. The report is in
    ``freeze.report`` after the block.

    If the window ended before the block did (the guardian's deadline, or
    someone else's thaw), leaving the block raises :class:`WindowExpiredError`
    (with the report): a snapshot taken inside is not trusted. Pass
    ``allow_expired=True`` to check ``freeze.report`` yourself instead. An
    exception from the body is never replaced by that error; it gets a note
    instead. A failed thaw is never hidden: its ThawError is raised, with
    the body's exception as its ``__context__``.
    """
    # The options first: a bad timeout is refused before the mount table is read.
    if timeout is not None:
        options = dataclasses.replace(options or FreezeOptions(), timeout_s=timeout)
    planned = _planned(targets)
    f = Freeze(planned, options)
    try:
        with f:
            f.prepare()
            f.freeze()
            yield f
    except BaseException as err:
        why = expiry(f.report)
        if why is not None and not allow_expired:
            err.add_note(f"quiesce: the window had also expired: {why}")
        raise
    why = expiry(f.report)
    if why is not None and not allow_expired:
        raise WindowExpiredError(f"the frozen window expired before the end of the block: {why}", f.report)
