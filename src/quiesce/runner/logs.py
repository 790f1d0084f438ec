"""Structured logs and Prometheus metrics of a run, written after it.

Nothing is logged while filesystems are frozen (the log may live on one of
them): the run keeps its record in memory and these functions turn it into
lines and a metrics file once it is over.

- :func:`log_lines`: one line per event, with the run ID. ``plain`` is
  journald-friendly (``key=value``, no timestamp: journald adds its own);
  ``json`` is JSON lines.
- :func:`write_metrics`: the Prometheus textfile-collector format, written
  atomically (a random temp name + rename) so node_exporter never reads
  half a file. quiesce writes it as root, so the directory must be root's
  alone (no other user can plant a link or swap the directory), and the
  file is reached through the directory's fd, never following a link.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from quiesce.azure.verdict import APPLICATION, CRASH, FAILED, FILESYSTEM
from quiesce.engine.rundir import atomic_write, open_safe_dir
from quiesce.errors import UnsafeRunDirError
from quiesce.runner.types import RunResult

CONSISTENCIES = (APPLICATION, FILESYSTEM, CRASH, FAILED)


def events(result: RunResult) -> Iterator[dict[str, Any]]:
    """The run as a sequence of events: phases, script attempts, filesystems, the result."""
    base = {"run_id": result.run_id}
    for p in result.phases:
        yield {
            **base,
            "event": "phase",
            "phase": p.name,
            "status": p.status,
            "duration_ns": p.duration_ns,
            **({"detail": p.detail} if p.detail else {}),
        }
    for res in [result.pre, *result.hooks_pre, *result.hooks_post, result.post]:
        if res is None:
            continue
        for a in res.attempts:
            yield {
                **base,
                "event": "attempt",
                "phase": res.phase,
                "script": res.path,
                "attempt": a.number,
                "outcome": a.outcome,
                "exit_code": a.exit_code,
                "signal": a.signal,
                "duration_ns": a.duration_ns,
                "isolation": a.isolation,
            }
    if result.freeze is not None:
        for t in result.freeze.targets:
            yield {
                **base,
                "event": "filesystem",
                "mount_point": t.mount_point,
                "state": t.state,
                "freeze_ns": t.freeze_ns,
                "thaw_ns": t.thaw_ns,
            }
    for w in (result.freeze.warnings if result.freeze is not None else []) + result.warnings:
        yield {**base, "event": "warning", "message": w}
    yield {
        **base,
        "event": "result",
        "consistency": result.consistency,
        "error_name": result.error_name,
        "error_code": result.error_code,
        "window_ns": None if result.freeze is None else result.freeze.window_ns,
        "duration_ns": result.duration_ns,
    }


# A value with any of these (or any control character) is written as a JSON string.
_NEEDS_QUOTES = frozenset(' "=\\\x7f')


def _plain_value(v: Any) -> str:
    text = str(v)
    if not text or any(c in _NEEDS_QUOTES or c < " " for c in text):
        return json.dumps(text)
    return text


def log_lines(result: RunResult, fmt: str) -> list[str]:
    """The run's events as ``plain`` (key=value) or ``json`` lines."""
    if fmt not in ("plain", "json"):
        raise ValueError(f"log format must be plain or json, not {fmt!r}")
    out = []
    for e in events(result):
        if fmt == "json":
            out.append(json.dumps(e, sort_keys=True))
        else:
            out.append(" ".join(f"{k}={_plain_value(v)}" for k, v in e.items() if v is not None))
    return out


def metrics_text(result: RunResult, now: float | None = None) -> str:
    """The Prometheus text exposition of the last run."""
    now = time.time() if now is None else now
    lines = [
        "# HELP quiesce_last_run_timestamp_seconds When the last quiesce run ended (Unix time).",
        "# TYPE quiesce_last_run_timestamp_seconds gauge",
        f"quiesce_last_run_timestamp_seconds {now:.3f}",
        "# HELP quiesce_last_run_duration_seconds How long the last run took.",
        "# TYPE quiesce_last_run_duration_seconds gauge",
        f"quiesce_last_run_duration_seconds {result.duration_ns / 1e9:.6f}",
        "# HELP quiesce_last_run_status 1 for the result class of the last run, 0 for the others.",
        "# TYPE quiesce_last_run_status gauge",
    ]
    lines += [
        f'quiesce_last_run_status{{consistency="{c}"}} {int(result.consistency == c)}' for c in CONSISTENCIES
    ]
    window = None if result.freeze is None else result.freeze.window_ns
    lines += [
        "# HELP quiesce_last_window_seconds Frozen window of the last run (first FIFREEZE to last FITHAW).",
        "# TYPE quiesce_last_window_seconds gauge",
        f"quiesce_last_window_seconds {'NaN' if window is None else f'{window / 1e9:.9f}'}",
        "# HELP quiesce_last_phase_duration_seconds Duration of each phase of the last run.",
        "# TYPE quiesce_last_phase_duration_seconds gauge",
    ]
    lines += [
        f'quiesce_last_phase_duration_seconds{{phase="{p.name}"}} {p.duration_ns / 1e9:.6f}'
        for p in result.phases
    ]
    return "\n".join(lines) + "\n"


class UnsafeMetricsDirError(UnsafeRunDirError):
    """The ``--metrics`` file's directory can be changed by someone but root: nothing written."""


def write_metrics(path: str, result: RunResult) -> None:
    """Write the metrics file atomically, mode 644, into a directory only root can change.

    Raises :class:`UnsafeMetricsDirError` for a directory another user can
    write (or below one), ``OSError`` when it cannot be written.
    """
    directory, name = os.path.split(os.path.abspath(path))
    if not name or path.endswith("/"):
        raise IsADirectoryError(21, "a metrics file name is needed, not a directory", path)
    try:
        _, fd = open_safe_dir(directory, create=False, what="metrics directory")
    except UnsafeRunDirError as err:
        raise UnsafeMetricsDirError(f"{err}; metrics not written") from err
    try:
        atomic_write(fd, name, metrics_text(result).encode(), 0o644)
    finally:
        os.close(fd)
