"""Log lines and Prometheus metrics of a run (pure formatting, no root)."""

from __future__ import annotations

import json
import re

import pytest

from quiesce.runner.logs import log_lines, metrics_text
from quiesce.runner.types import Phase, RunResult


def _result() -> RunResult:
    r = RunResult(
        run_id="20261122T000000Z-42",
        consistency="file-system-consistent",
        error_name="Pre-ScriptExecutionFailed",
        error_code=300,
        duration_ns=2_500_000_000,
    )
    r.phases = [Phase("checks", "ok", 100_000), Phase("pre-script", "failed", 1_000_000, "1 attempt(s)")]
    r.warnings = ['Pre-ScriptExecutionFailed: /x/pre.sh failed: exit status 1 "quoted" a=b']
    return r


def test_plain_lines_quote_what_needs_it():
    """key=value lines: values with spaces, quotes or = are JSON strings; every line has the run ID."""
    lines = log_lines(_result(), "plain")
    assert all(line.startswith("run_id=20261122T000000Z-42 ") for line in lines)
    warning = next(line for line in lines if "event=warning" in line)
    value = warning.split("message=", 1)[1]
    assert json.loads(value).endswith('"quoted" a=b')
    assert lines[-1].endswith("error_name=Pre-ScriptExecutionFailed error_code=300 duration_ns=2500000000")


def test_json_lines_round_trip():
    """JSON lines parse back to the events, the last being the result."""
    events = [json.loads(line) for line in log_lines(_result(), "json")]
    assert events[0] == {
        "run_id": "20261122T000000Z-42",
        "event": "phase",
        "phase": "checks",
        "status": "ok",
        "duration_ns": 100_000,
    }
    assert events[-1]["event"] == "result" and events[-1]["window_ns"] is None


def test_unknown_format_is_refused():
    """Only plain and json exist."""
    with pytest.raises(ValueError):
        log_lines(_result(), "xml")


def test_metrics_exposition():
    """Every sample line is valid exposition format; exactly one status is 1; no window is NaN."""
    text = metrics_text(_result(), now=1000.0)
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"\})? (NaN|[0-9.]+)$')
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(sample.match(line) for line in samples)
    statuses = [line for line in samples if line.startswith("quiesce_last_run_status")]
    assert [s.endswith(" 1") for s in statuses].count(True) == 1
    assert 'quiesce_last_run_status{consistency="file-system-consistent"} 1' in samples
    assert "quiesce_last_window_seconds NaN" in samples
    assert 'quiesce_last_phase_duration_seconds{phase="pre-script"} 0.001000' in samples
