"""Micro-benchmarks of script supervision: spawn + supervise, and the whole run_script.

Run as root: ``python -m pytest bench -q --benchmark-only``. Nothing is
frozen. They assert behaviour only (every child exited 0, the script ran in
its own cgroup), never a timing threshold. bench/supervise.py has the side
by side comparisons (completion latency, timeout precision).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest

from quiesce.engine import native
from quiesce.supervise.cgroups import ScriptCgroup, cgroup2_root
from quiesce.supervise.checked import CheckedScript, open_script
from quiesce.supervise.scripts import ScriptPolicy, run_script

ROUNDS = 200
TRUE = "/bin/true"
ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
DEADLINE_NS = 10_000_000_000
GRACE_NS = 1_000_000_000
KILL_WAIT_NS = 5_000_000_000
#: Resident memory added to the benchmark process for the big-parent variants.
BALLAST_MB = 256

_names = itertools.count()


def unique_name() -> str:
    """A cgroup or run id no other round or process uses."""
    return f"bench-{os.getpid()}-{next(_names)}"


def spawn_and_supervise(cgroup: bool) -> int | None:
    """native.spawn of /bin/true (own session, cgroup if asked) + Supervision to its exit.

    stdin, stdout and stderr on /dev/null; with ``cgroup`` a new cgroup is
    created before and removed after, as ``scripts.run_attempt`` does per
    attempt. Returns the exit code.
    """
    cg = ScriptCgroup.create(unique_name()) if cgroup else None
    if cgroup and cg is None:
        raise RuntimeError("could not create a cgroup")
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        child = native.spawn(
            [TRUE],
            ENV,
            path=TRUE,
            cgroup_fd=cg.fd if cg is not None else -1,
            stdin_fd=devnull,
            stdout_fd=devnull,
            stderr_fd=devnull,
        )
        try:
            sup = native.Supervision(
                child,
                deadline_ns=child.start_ns + DEADLINE_NS,
                grace_ns=GRACE_NS,
                kill_wait_ns=KILL_WAIT_NS,
                cgroup_fd=cg.fd if cg is not None else -1,
                out_cap=1,
                err_cap=1,
            )
            while not sup.step():
                pass
        finally:
            child.close()
        return sup.result().exit_code
    finally:
        os.close(devnull)
        if cg is not None:
            cg.close()


def subprocess_run_true() -> int:
    """subprocess.run of /bin/true with /dev/null for its streams: the Python reference."""
    return subprocess.run(
        [TRUE], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    ).returncode


@pytest.fixture
def big_parent() -> Iterator[int]:
    """BALLAST_MB MiB made resident in this process for the test, then freed."""
    ballast = bytearray(BALLAST_MB << 20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page
    yield len(ballast)
    del ballast


@pytest.fixture(scope="module")
def script_path() -> Iterator[str]:
    """A root-owned ``exit 0`` script in a root-only directory under /run, removed after."""
    base = tempfile.mkdtemp(prefix="quiesce-bench-", dir="/run")
    try:
        path = os.path.join(base, "pre.sh")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
        try:
            os.write(fd, b"#!/bin/sh\nexit 0\n")
        finally:
            os.close(fd)
        yield path
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def checked_script(script_path: str) -> Iterator[CheckedScript]:
    """The script, through every permission check, held open for the test."""
    with open_script(script_path, "pre") as script:
        yield script


def resident_kb() -> int:
    """This process's resident memory (VmRSS), in kB: what a non-vfork spawn copies tables for."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_rounds(benchmark, call: Callable[[], int | None]) -> list[int | None]:
    """Benchmark ``call`` for ROUNDS rounds; return every exit code it gave.

    The parent's resident memory goes into extra_info (``parent_rss_mb``).
    """
    codes: list[int | None] = []
    benchmark.pedantic(lambda: codes.append(call()), rounds=ROUNDS, warmup_rounds=5)
    benchmark.extra_info["parent_rss_mb"] = resident_kb() / 1024
    return codes


@pytest.mark.parametrize("cgroup", [False, True], ids=["no-cgroup", "cgroup"])
def test_spawn_supervise_true(benchmark, report_figures, cgroup: bool) -> None:
    """native.spawn + Supervision of /bin/true, with or without a new cgroup per run."""
    if cgroup:
        probe = ScriptCgroup.create(unique_name())
        if probe is None:
            pytest.skip("no writable cgroup v2 hierarchy")
        probe.close()
    codes = run_rounds(benchmark, lambda: spawn_and_supervise(cgroup))
    assert codes and set(codes) == {0}
    report_figures(benchmark.extra_info)


def test_spawn_supervise_true_big_parent(benchmark, report_figures, big_parent: int) -> None:
    """The same without a cgroup, from a parent with BALLAST_MB MiB more resident memory.

    The native spawn is a clone3 without CLONE_VM: it copies the parent's
    page tables, so its cost grows with the parent's size (compare the
    subprocess.run references, which use vfork).
    """
    codes = run_rounds(benchmark, lambda: spawn_and_supervise(False))
    assert codes and set(codes) == {0}
    benchmark.extra_info["ballast_mb"] = big_parent >> 20
    report_figures(benchmark.extra_info)


def test_subprocess_run_true_reference(benchmark, report_figures) -> None:
    """subprocess.run of /bin/true: the Python reference for the spawn benchmarks."""
    codes = run_rounds(benchmark, subprocess_run_true)
    assert codes and set(codes) == {0}
    report_figures(benchmark.extra_info)


def test_subprocess_run_true_big_parent_reference(benchmark, report_figures, big_parent: int) -> None:
    """subprocess.run of /bin/true from the same big parent."""
    codes = run_rounds(benchmark, subprocess_run_true)
    assert codes and set(codes) == {0}
    benchmark.extra_info["ballast_mb"] = big_parent >> 20
    report_figures(benchmark.extra_info)


def test_run_script_trivial(benchmark, checked_script: CheckedScript) -> None:
    """scripts.run_script of a trivial script: cgroup, pipes, clean environment, leftovers check."""
    policy = ScriptPolicy(timeout_s=10.0, grace_s=1.0)
    isolations: list[str] = []

    def once() -> int | None:
        result = run_script(checked_script, [], policy, run_id=unique_name())
        assert result.ok, result.to_dict()
        isolations.append(result.attempts[-1].isolation)
        return result.attempts[-1].exit_code

    codes = run_rounds(benchmark, once)
    assert codes and set(codes) == {0}
    assert set(isolations) == ({"cgroup"} if cgroup2_root() is not None else {"process-group"})


def test_open_script_run_script_trivial(benchmark, script_path: str) -> None:
    """open_script (every permission check) + run_script + close, as a run does per script."""
    policy = ScriptPolicy(timeout_s=10.0, grace_s=1.0)

    def once() -> int | None:
        with open_script(script_path, "pre") as script:
            result = run_script(script, [], policy, run_id=unique_name())
        assert result.ok, result.to_dict()
        return result.attempts[-1].exit_code

    codes = run_rounds(benchmark, once)
    assert codes and set(codes) == {0}
