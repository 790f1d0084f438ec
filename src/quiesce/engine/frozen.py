"""``with frozen(targets):`` the API's freeze for a block, and the error when its window expired early."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.plan import Target
from quiesce.engine.report import WindowExpiredError, expiry
from quiesce.engine.targets import check_explicit, plan_targets


@contextlib.contextmanager
def frozen(
    targets: Sequence[Target | str],
    options: FreezeOptions | None = None,
    *,
    timeout: float | None = None,
    allow_expired: bool = False,
) -> Iterator[Freeze]:
    """Freeze ``targets`` for the body of a ``with`` block, then thaw.

    ``targets`` are planned :class:`Target` objects or mount point paths
    (planned here, in a safe order; a path that cannot be frozen raises
    TargetError). ``timeout`` (seconds) overrides ``options.timeout_s``. The
    guardian thaws on its own if the block outlives the timeout or the
    process dies. The report is in ``freeze.report`` after the block.

    If the window ended before the block did (the guardian's deadline, or
    someone else's thaw), leaving the block raises :class:`WindowExpiredError`
    (with the report): a snapshot taken inside is not trusted. Pass
    ``allow_expired=True`` to check ``freeze.report`` yourself instead. An
    exception from the body is never replaced; it gets a note instead.
    """
    # The options first: a bad timeout is refused before the mount table is read.
    if timeout is not None:
        options = dataclasses.replace(options or FreezeOptions(), timeout_s=timeout)
    if any(isinstance(t, str) for t in targets):
        paths = [t if isinstance(t, str) else t.mount.mount_point for t in targets]
        plan = plan_targets(paths)
        check_explicit(plan, paths)
        planned: Sequence[Target] = plan.targets
    else:
        planned = [t for t in targets if not isinstance(t, str)]
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
