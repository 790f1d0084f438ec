"""Operations: log lines, Prometheus metrics, systemd units."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qga.agents import QEMU_GA

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

UNITS = Path(__file__).parents[2] / "systemd"


def _run_cli(setup, *args):
    return subprocess.run(
        setup.run_argv(*args), capture_output=True, text=True, timeout=50, stdin=subprocess.DEVNULL
    )


def test_json_log_lines_carry_the_run_id(setup):
    """--log-format json: one JSON event per line on stderr, every one with the same run ID."""
    setup.config()
    done = _run_cli(setup, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert len({e["run_id"] for e in events}) == 1
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "result" and "phase" in kinds and "attempt" in kinds and "filesystem" in kinds
    assert events[-1]["consistency"] == "application-consistent" and events[-1]["window_ns"] > 0


def test_plain_log_lines_are_key_value(setup):
    """The default off a terminal: journald-friendly key=value lines."""
    setup.config()
    done = _run_cli(setup)
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("quiesce: run_id=") for line in lines)
    assert any("event=result consistency=application-consistent" in line for line in lines)


def test_metrics_file_is_valid_prometheus_text(setup):
    """--metrics writes the textfile collector format: last window, status, durations."""
    setup.config()
    path = os.path.join(setup.base, "quiesce.prom")
    assert _run_cli(setup, "--metrics", path, "--log-format", "none").returncode == 0
    text = Path(path).read_text()
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"\})? (NaN|[0-9.e+-]+)$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert 'quiesce_last_run_status{consistency="application-consistent"} 1' in text
    window = float(re.search(r"^quiesce_last_window_seconds (\S+)$", text, re.M).group(1))
    assert 0 < window < 5
    assert not [f for f in os.listdir(setup.base) if f.endswith(".tmp")]


def test_systemd_units_verify_and_spare_the_guardian(tmp_path):
    """The shipped units pass systemd-analyze verify; stopping the service kills quiesce only."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = shutil.which("quiesce") or sys.executable
    # The forwarding unit runs Debian's qemu-ga: CI unpacks its binary only ($QEMU_GA).
    if not os.access(QEMU_GA, os.X_OK):
        pytest.skip(f"qemu-ga is not installed ({QEMU_GA}): quiesce-qga-forward.service names it")
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/quiesce", exe).replace("/usr/sbin/qemu-ga", QEMU_GA)
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    service = (UNITS / "quiesce.service").read_text()
    assert re.search(r"^KillMode=process$", service, re.M)
    assert re.search(r"^ExecStopPost=.*quiesce recover$", service, re.M)
    # Root-only files and run directory, kept after a stop; the service's cgroup is delegated.
    for line in (
        "UMask=0077",
        "RuntimeDirectory=quiesce",
        "RuntimeDirectoryMode=0700",
        "RuntimeDirectoryPreserve=yes",
        "Delegate=yes",
    ):
        assert re.search(rf"^{line}$", service, re.M), line
    assert re.search(r"^UMask=0077$", (UNITS / "quiesce-recover.service").read_text(), re.M)
