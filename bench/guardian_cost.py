"""What the guardian costs the process it guards: quiesce-helper against a forked child, in one run.

    python bench/guardian_cost.py [--reps 20] [--extra-mib 0,256] [--json out.json]

The guardian used to be a fork of the freezing process. A fork copies the
page tables, makes every page the parent writes afterwards fault and be
copied (while frozen, too), and tears that copy down when the child exits
after the thaw. It is now ``quiesce-helper``, started vfork-style and
exec'd, which maps only the freeze's shared state. This measures both in
the same run, from a process with ``--extra-mib`` more resident (a large
orchestrator, or one that embeds quiesce):

- ``helper``: ``Session.arm()`` and ``Session.disarm()`` on two open
  directories (nothing is frozen: arming needs no filesystem);
- ``fork``: ``os.fork()`` of a child that waits on a pipe and exits when
  told, which is what the guardian was.

Per repetition: the start (to the child's "ready"), the parent rewriting
every page of its extra memory while the child lives (its minor faults and
time), and the end (tell it, reap it), with the child's own CPU, exit
included (``RUSAGE_CHILDREN`` across the reap). Medians; needs no root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from quiesce.bench.stats import median
from quiesce.engine import native

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_cpu_ns() -> int:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((r.ru_utime + r.ru_stime) * 1e9)


def _rewrite(buf: bytearray) -> tuple[int, int]:
    """Write one byte of every page of ``buf``: (minor faults, ns)."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter_ns()
    for off in range(0, len(buf), PAGE):
        buf[off] = (buf[off] + 1) & 0xFF
    took = time.perf_counter_ns() - t0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, took


def _measure(start: Callable[[], object], end: Callable[[], object], buf: bytearray) -> dict[str, int]:
    """Time ``start()``, rewrite ``buf`` while the child lives, time ``end()`` with the child's CPU."""
    t0 = time.perf_counter_ns()
    start()
    started = time.perf_counter_ns() - t0
    faults, rewrite = _rewrite(buf)
    cpu = _children_cpu_ns()
    t0 = time.perf_counter_ns()
    end()
    ended = time.perf_counter_ns() - t0
    return {
        "start_ns": started,
        "faults": faults,
        "rewrite_ns": rewrite,
        "end_ns": ended,
        "child_cpu_ns": _children_cpu_ns() - cpu,
    }


def helper_once(fds: list[int], labels: list[str], buf: bytearray) -> dict[str, int]:
    """One guardian of quiesce's own: arm, rewrite, disarm."""
    with native.Session(fds, labels) as s:
        return _measure(lambda: s.arm(60_000_000_000), s.disarm, buf)


def fork_once(buf: bytearray) -> dict[str, int]:
    """One forked child as the guardian was: start, rewrite, end."""
    ready_r, ready_w = os.pipe()
    end_r, end_w = os.pipe()
    pid = 0

    def start() -> None:
        nonlocal pid
        pid = os.fork()
        if pid == 0:  # the child: say ready, wait to be told, exit without Python's cleanup
            os.write(ready_w, b"R")
            os.read(end_r, 1)
            os._exit(0)
        os.read(ready_r, 1)

    def end() -> None:
        os.write(end_w, b"E")
        os.waitpid(pid, 0)

    try:
        return _measure(start, end, buf)
    finally:
        for fd in (ready_r, ready_w, end_r, end_w):
            os.close(fd)


def measure(extra_mib: int, reps: int, fds: list[int], labels: list[str]) -> dict[str, Any]:
    """Both kinds, alternating, ``reps`` times each, with ``extra_mib`` more resident."""
    buf = bytearray(extra_mib << 20 or PAGE)
    buf[:] = b"\x01" * len(buf)  # resident, and the parent's own
    kinds: dict[str, Callable[[], dict[str, int]]] = {
        "helper": lambda: helper_once(fds, labels, buf),
        "fork": lambda: fork_once(buf),
    }
    runs: dict[str, list[dict[str, int]]] = {k: [] for k in kinds}
    for i in range(reps):
        order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
        for k in order:
            runs[k].append(kinds[k]())
    rss_kib = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    out: dict[str, Any] = {"extra_mib": extra_mib, "max_rss_mib": rss_kib / 1024}
    for k, rows in runs.items():
        out[k] = {f: median([float(r[f]) for r in rows]) for f in rows[0]}
    return out


def render(doc: dict[str, Any]) -> str:
    """The table."""
    lines = [
        f"machine: {doc['machine']}; command: `{doc['command']}`; load average at start {doc['load']}",
        "",
        "| extra resident | guardian | start | parent's faults rewriting it | rewrite | end (tell, reap) "
        "| the child's CPU, exit included |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in doc["rows"]:
        for k, label in (("fork", "forked (as before)"), ("helper", "quiesce-helper")):
            r = row[k]
            lines.append(
                f"| {row['extra_mib']} MiB | {label} | {r['start_ns'] / 1e6:.2f} ms | {r['faults']:.0f} "
                f"| {r['rewrite_ns'] / 1e6:.2f} ms | {r['end_ns'] / 1e6:.2f} ms "
                f"| {r['child_cpu_ns'] / 1e6:.2f} ms |"
            )
    lines.append("")
    lines.append(f"Medians of {doc['reps']} repetitions each, alternating.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument(
        "--extra-mib", default="0,256", help="comma-separated sizes (MiB) of extra resident memory"
    )
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="quiesce-guardian-cost-") as tmp:
        labels = [os.path.join(tmp, n) for n in ("a", "b")]
        fds = []
        for path in labels:
            os.mkdir(path)
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        try:
            rows = [measure(int(m), args.reps, fds, labels) for m in args.extra_mib.split(",")]
        finally:
            for fd in fds:
                os.close(fd)
    doc = {
        "machine": f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}",
        "command": shlex.join(["python", *sys.argv]),
        "load": load,
        "reps": args.reps,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    print(render(doc), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
