"""Whose CPU a fleet window takes: the whole machine sampled by ``perf``, attributed inside each window.

On the lab's one machine, etcd and every agent share the same CPUs, so the
fleet window can be no shorter than the CPU time the machine spends inside
it divided by the number of CPUs. :class:`Sampler` records the whole machine
(``perf record -a``, on CLOCK_MONOTONIC, the clock of the nodes' records)
while some fleet runs go; :func:`attribute` then counts, for each run, the
samples that fall between its first FIFREEZE and its last FITHAW, by
process: etcd, the agents, idle, and everything else (post-scripts and
guardians the agents start, the coordinator, kernel threads, anyone else's
work on the machine).

A sample stands for 1/``hz`` s of one CPU. ``perf`` costs the machine a
little itself, so the runs it samples are not the timed ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The processes a sample is counted for, in this order; a pid in none of them is "other".
GROUPS = ("etcd", "agents", "other", "idle")


def available() -> str | None:
    """Why ``perf`` cannot sample here, or None when it can."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: linux-perf)"
    if os.geteuid() != 0:
        return "sampling the whole machine needs root"
    return None


def process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants now (their pids, which are what ``perf script`` prints)."""
    found = {pid}
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                found |= process_tree(int(child))
    except OSError:
        pass  # gone meanwhile: what was found is kept
    return found


class Sampler:
    """``perf record -a`` into ``path`` for the duration of a ``with`` block."""

    def __init__(self, path: Path, hz: int = 999) -> None:
        self.path = path
        self.hz = hz
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sampler:
        argv = ["perf", "record", "-a", "-q", "-F", str(self.hz), "-k", "CLOCK_MONOTONIC"]
        argv += ["-o", str(self.path)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # perf opens its events before the first run starts
        if self._proc.poll() is not None:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            raise RuntimeError(f"perf record exited at once: {err.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def samples(self) -> list[tuple[int, int]]:
        """Every sample as (CLOCK_MONOTONIC ns, pid); pid 0 is an idle CPU."""
        out = subprocess.run(
            ["perf", "script", "-i", str(self.path), "-F", "pid,time", "--ns"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return parse_script(out.splitlines())


def parse_script(lines: Iterable[str]) -> list[tuple[int, int]]:
    """``perf script -F pid,time --ns`` lines ("  1234 65929.061114820:") as (ns, pid)."""
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) != 2 or not fields[1].endswith(":"):
            continue
        seconds, _, fraction = fields[1][:-1].partition(".")
        if not (fields[0].isdigit() and seconds.isdigit() and fraction.isdigit() and len(fraction) == 9):
            continue
        found.append((int(seconds) * 1_000_000_000 + int(fraction), int(fields[0])))
    return found


def attribute(
    samples: Sequence[tuple[int, int]],
    windows: Sequence[tuple[int, int]],
    pids: dict[str, set[int]],
    hz: int,
) -> list[dict[str, float]]:
    """Per window (start ns, end ns): ms of CPU per group of :data:`GROUPS`, and the window's length.

    ``pids`` names the etcd and agent processes; pid 0 is idle; any other is "other".
    """
    ms = 1000.0 / hz
    owner = {pid: group for group in ("etcd", "agents") for pid in pids.get(group, set())}
    ordered = sorted(samples)
    out = []
    for start, end in windows:
        row = dict.fromkeys(GROUPS, 0.0)
        row["window"] = (end - start) / 1e6
        lo = _first_at_or_after(ordered, start)
        for t, pid in ordered[lo:]:
            if t > end:
                break
            row["idle" if pid == 0 else owner.get(pid, "other")] += ms
        out.append(row)
    return out


def _first_at_or_after(ordered: Sequence[tuple[int, int]], t: int) -> int:
    lo, hi = 0, len(ordered)
    while lo < hi:
        mid = (lo + hi) // 2
        if ordered[mid][0] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo
