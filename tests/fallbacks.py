"""Forcing quiesce's fallback paths in a test, the way ``QUIESCE_FALLBACK`` forces them in production.

``no-pidfd``: children and the guardian start without pidfds and are
watched by pid, as on a kernel before 5.3. ``no-cgroup``: no cgroup v2 for
scripts and hooks, the process-group fallback. Set in this process (the
native switch, read at import) and in the environment (for the
subprocesses a test starts, ``python -m quiesce ...``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from quiesce.engine import native

#: Every combination the twin tests run under: "" is the normal path.
FALLBACKS = ["", "no-pidfd", "no-cgroup", "no-pidfd,no-cgroup"]
#: Readable test ids for them.
IDS = ["normal", "no-pidfd", "no-cgroup", "no-pidfd+no-cgroup"]


def forced(value: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Force the fallbacks in ``value`` (comma-separated, added to any already forced) until the end."""
    already = os.environ.get(native.FALLBACK_ENV, "")
    wanted = ",".join(x for x in (*already.split(","), *value.split(",")) if x)
    before = native.no_pidfd()
    if wanted:
        monkeypatch.setenv(native.FALLBACK_ENV, wanted)
    native.set_no_pidfd("no-pidfd" in native.fallbacks())
    try:
        yield wanted
    finally:
        native.set_no_pidfd(before)
