"""Fixtures for the database tests: a private mount namespace, one database world per module.

The test process enters its own mount namespace before the first database test, so the
loop filesystems and the servers' view of them stay invisible to the machine. Each test
module builds one world (host xfs, guest ext4, a real server on it) and tears it down,
server stopped first, when the module ends; each test gets its own load. The per-cycle
figures go into the terminal summary, and to $QUIESCE_DB_REPORT (bench/db-consistency.md
for the published copy) when it is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.sandbox import enter_private_mount_namespace

from . import cycles, report, servers

_namespace_entered = False


@pytest.fixture(scope="session")
def db_namespace() -> None:
    """Enter a private mount namespace once for the test process."""
    global _namespace_entered
    if os.geteuid() != 0:
        pytest.skip("database tests need root: loop devices, mounts, server users")
    if not _namespace_entered:
        enter_private_mount_namespace()
        _namespace_entered = True


def make_world(kind: str) -> Iterator[servers.World]:
    """A module's world: skipped with the reason when the servers are not installed."""
    reason = servers.missing_servers(kind)
    if reason is not None:
        pytest.skip(reason)
    with servers.world(kind) as w:
        yield w


@pytest.fixture
def load(world: servers.World, tmp_path: Path) -> Iterator[servers.Load]:
    """The load generator on fresh tables, stopped after the test."""
    running = servers.Load(world.server, tmp_path / "acks")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session", autouse=True)
def db_report() -> Iterator[None]:
    """Write every cycle of the session to $QUIESCE_DB_REPORT (e.g. bench/db-consistency.md), if set.

    The test output always has them; the file in bench/ is rewritten only on
    purpose, so a test run leaves the tree clean.
    """
    yield
    target = os.environ.get("QUIESCE_DB_REPORT")
    if report.REPORT and target:
        settings = f"QUIESCE_DB_CYCLES={cycles.CYCLES}, expediteRcu {str(cycles.EXPEDITE_RCU).lower()}"
        report.write_markdown(Path(target), report.REPORT, settings)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every cycle's figures in the test output, with or without -s."""
    if not report.REPORT:
        return
    terminalreporter.section("database consistency cycles")
    for line in report.summary(report.REPORT):
        terminalreporter.write_line(line)
    terminalreporter.write_line("  ".join(report.COLUMNS))
    for c in report.REPORT:
        terminalreporter.write_line("  ".join(report.row(c)))
