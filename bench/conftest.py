"""Fixtures for the micro-benchmarks: one ext4 loop filesystem in a private mount namespace.

Like the privileged tests (but without importing them), the benchmark process
moves into its own mount namespace before building anything, so the loop
mount is invisible to the machine and can never be confused with one of its
filesystems. Every fixture thaws in its finalizer, before unmounting, even
when a benchmark failed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from floorprog import compile_floor

from quiesce.azure.planning import make_plan
from quiesce.engine.mountfd import open_target
from quiesce.engine.plan import Target
from quiesce.sandbox import LoopFs, Sandbox, enter_private_mount_namespace

_namespace_entered = False
_FIGURES = pytest.StashKey[list[tuple[str, dict[str, float]]]]()


@pytest.fixture(scope="session", autouse=True)
def private_namespace() -> None:
    """Skip unless root; enter a private mount namespace once for the process."""
    global _namespace_entered
    if os.geteuid() != 0:
        pytest.skip("freeze benchmarks need root (loop devices, mount, FIFREEZE)")
    if not _namespace_entered:
        enter_private_mount_namespace()
        _namespace_entered = True


@pytest.fixture(scope="session")
def sandbox(private_namespace: None) -> Iterator[Sandbox]:
    """The benchmarks' world: one ext4 on a loop device, torn down at the end."""
    with Sandbox() as sb:
        sb.add("ext4", 256, name="ext4")
        yield sb


@pytest.fixture
def ext4(sandbox: Sandbox) -> Iterator[LoopFs]:
    """The ext4 filesystem; fails the benchmark if it was left frozen."""
    yield sandbox.filesystems[0]
    left = sandbox.thaw_all()
    assert not left, f"left frozen by the benchmark: {[str(f) for f in left]}"


@pytest.fixture
def ext4_target(ext4: LoopFs) -> Target:
    """The ext4 filesystem as a planned target (checked to be the sandbox's loop device)."""
    plan = make_plan([str(ext4.mount_point)], vmbackup_conf=None)
    (target,) = plan.targets
    assert target.mount.source == ext4.device
    return target


@pytest.fixture
def root_run_dir(private_namespace: None) -> Iterator[str]:
    """A run directory quiesce accepts: root's, mode 700, under /run (never under /tmp)."""
    d = tempfile.mkdtemp(prefix="quiesce-bench-run-", dir="/run")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ext4_fd(ext4_target: Target) -> Iterator[int]:
    """An fd on the ext4 mount point, closed after the benchmark."""
    fd = open_target(ext4_target)
    yield fd
    os.close(fd)


@pytest.fixture(scope="session")
def floor_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bench/floor.c`` compiled into a temporary directory (never committed)."""
    return compile_floor(tmp_path_factory.mktemp("floor"))


@pytest.fixture
def report_figures(request: pytest.FixtureRequest) -> Callable[[dict[str, float]], None]:
    """Record a benchmark's extra figures to print after the benchmark table."""
    rows = request.config.stash.setdefault(_FIGURES, [])

    def record(figures: dict[str, float]) -> None:
        rows.append((request.node.name, dict(figures)))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print the figures the benchmarks put in extra_info (native windows, the floor)."""
    rows = config.stash.get(_FIGURES, [])
    if not rows:
        return
    terminalreporter.section("figures (extra_info)")
    for name, figures in rows:
        terminalreporter.write_line(name)
        for key, value in figures.items():
            terminalreporter.write_line(f"    {key:<32} {value:,.3f}")
