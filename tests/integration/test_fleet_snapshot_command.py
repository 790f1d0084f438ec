"""A fleet node's snapshot command runs under the same supervision as a single-node run's.

Its own cgroup, the tail of its output, its timeout, and nothing it started
left running; and ``QUIESCE_TARGETS`` escaped as in mountinfo.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from quiesce.fleet.noderun import FleetAbort, NodeRun
from quiesce.fleet.nodestep import DETAIL_TAIL, prepare, run_command
from quiesce.fleet.protocol import Keys, RunSpec
from tests.processes import alive_with, unique_sleep


def _run(
    argv: tuple[str, ...],
    timeout_s: float = 5.0,
    env: dict[str, str] | None = None,
) -> tuple[bool, str]:
    """As a node runs it: the cgroup and pipes made first (before its freeze), then the command."""
    with prepare("test") as launch:
        return run_command(launch, argv, timeout_s, env or {}, "test")


def _sh(script: str, timeout_s: float = 5.0, env: dict[str, str] | None = None) -> tuple[bool, str]:
    return _run(("/bin/sh", "-c", script), timeout_s, env)


def test_what_the_command_did_is_said():
    assert _sh("exit 0") == (True, "snapshot command ok")
    assert _sh("echo no room >&2; exit 3") == (False, "snapshot command exited 3: no room")
    ok, detail = _sh("kill -9 $$")
    assert not ok and detail.startswith("snapshot command killed by SIGKILL")
    assert _sh(f"sleep {unique_sleep()}", timeout_s=0.3) == (False, "snapshot command timed out after 0.3 s")
    ok, detail = _sh("head -c 10000000 /dev/zero | tr '\\0' x >&2; exit 1")
    assert not ok and detail == f"snapshot command exited 1: {'x' * DETAIL_TAIL}"
    ok, detail = _run(("/nonexistent/snap",), 1.0)
    assert not ok and detail.startswith("snapshot command spawn-failed: ") and "/nonexistent/snap" in detail


def test_nothing_the_command_started_is_left_running():
    """A daemon in a session of its own (which a process-group kill misses) ends with the command."""
    marker = unique_sleep()
    assert _sh(f"setsid sleep {marker} >/dev/null 2>&1 &\nexit 0") == (True, "snapshot command ok")
    assert alive_with(marker) == []


def test_the_environment_names_the_run_and_escapes_the_targets(tmp_path):
    part = NodeRun(None, Keys("g"), "n1", "r1", RunSpec(("n1",)), None, lambda: True, lambda _ev: None)  # type: ignore[arg-type]
    freeze: Any = SimpleNamespace(
        targets=[SimpleNamespace(mount=SimpleNamespace(mount_point=p)) for p in ("/data", "/odd\nname")]
    )
    env = part._command_env(freeze)
    assert env["QUIESCE_TARGETS"] == "/data\n/odd\\012name"
    out = tmp_path / "env"
    assert _sh(f'env > "{out}"', env=env)[0]
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    want = {"QUIESCE_FLEET_RUN": "r1", "QUIESCE_FLEET_GROUP": "g", "QUIESCE_NODE": "n1"}
    want["QUIESCE_PHASE"] = "snapshot"
    assert {k: seen.get(k) for k in want} == want


def test_a_command_others_could_change_aborts_the_node_before_it_is_ready(tmp_path):
    """A snapshot command in a directory others can write (here /tmp) is refused before the freeze."""
    program = tmp_path / "snap"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    reports: list[str] = []
    watch: Any = SimpleNamespace(get=lambda _timeout: None)
    part = NodeRun(None, Keys("g"), "n1", "r1", RunSpec(("n1",)), watch, lambda: True, lambda _ev: None)  # type: ignore[arg-type]
    part.spec_argv = (str(program),)
    part._report = lambda step, extra=None: reports.append(step)  # type: ignore[method-assign]
    freeze: Any = SimpleNamespace(targets=[])
    with pytest.raises(FleetAbort, match="is not safe to run as root") as err:
        part.before_freeze(freeze)
    assert str(tmp_path) in str(err.value)
    assert reports == [] and part._launch is None
