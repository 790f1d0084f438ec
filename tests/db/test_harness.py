"""The database harness itself: a load that fails says why and leaves nothing open."""

from __future__ import annotations

import gc
import sys

import pytest

from . import servers


class _DeadServer:
    """A server whose clients fail at once, as a refused connection does."""

    kind = "postgresql"

    def reset_tables(self) -> None:
        """Nothing to reset."""

    def loader_argv(self) -> list[str]:
        """A client that says why it fails, then exits."""
        return ["/bin/sh", "-c", "echo 'connection refused' >&2; exit 2"]


def test_a_load_that_stops_says_why_and_leaks_nothing(tmp_path, monkeypatch):
    """The error names the loader's state and stderr, and the failed Load closes its process and pipes."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(servers.Load, "STALL_S", 1.0)
    with pytest.raises(RuntimeError) as info:
        servers.Load(_DeadServer(), tmp_path / "acks")  # type: ignore[arg-type]
    message = str(info.value)
    assert "the load stopped after 0 acknowledgements" in message
    assert "connection refused" in message
    gc.collect()
    assert [u.exc_value for u in unraisable] == []
