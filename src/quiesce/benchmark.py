"""``quiesce bench``: what a freeze costs, measured on real filesystems.

Every repetition is a whole production freeze (:class:`quiesce.freeze.Freeze`:
lock, ledger, guardian armed, pre-flush unless disabled) whose window is one
native ``cycle()``: FIFREEZE every target, then FITHAW them at once. The
figures come from the freeze report's native timestamps.

Load and observers run in helper processes, never in the process that freezes
and thaws: that process must not touch a target while it is frozen.

* ``--dirty MiB``: one helper per target writes a new file of that size
  (no fsync) before every repetition, after deleting the previous one, so the
  pre-flush and FIFREEZE have dirty data to write. The last file is deleted at
  the end.
* ``--probe``: one helper per target runs ``pwrite(4 KiB) + fdatasync`` in a
  loop for the whole benchmark, on a file with no name (``O_TMPFILE``, so none
  can be left behind), keeps every iteration's duration in memory and reports
  them when told to stop. Its longest stall is what an application writing to
  that filesystem sees: roughly the window, plus the time the scheduler takes
  to run it again after the thaw, plus its own flush. It can be shorter than
  the window: a cold FIFREEZE first waits out an RCU grace period (tens of
  milliseconds) during which writes still go through; ``--expedite-rcu``
  shortens that wait.

Helpers ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process group,
a service stop the whole cgroup; the bench decides when they end) and end on
EOF of their stdin, so they also end, and clean up, when the bench dies.

Percentiles are nearest-rank: the p-th percentile of n sorted values is the
value of rank ``ceil(p * n / 100)``, and the median is the 50th percentile
(the lower middle value when n is even). Every statistic is therefore a value
that was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, TextIO

from quiesce import argtypes
from quiesce.errors import QuiesceError, TargetError, ThawError
from quiesce.freeze import DEFAULT_TIMEOUT_S, RUN_DIR, Freeze, FreezeOptions, FreezeReport
from quiesce.mounts import Plan, Target
from quiesce.native import now_ns
from quiesce.plan import check_explicit, make_plan

DEFAULT_REPS = 20
DEFAULT_INTERVAL_S = 0.2
#: Every file the bench makes starts with this (followed by the bench's pid).
FILE_PREFIX = ".quiesce-bench-"
MIB = 1 << 20
#: The probe's write size, and how many blocks it cycles over (its file stays 1 MiB).
PROBE_BLOCK = 4096
PROBE_RING_BLOCKS = 256
#: How many of its longest stalls each probe reports with their times.
PROBE_TOP_STALLS = 5
#: How long a helper may take to start (it imports quiesce) and to stop.
HELPER_START_S = 30.0
HELPER_STOP_S = 30.0
#: Waits are sliced this fine so that SIGINT/SIGTERM stop the bench promptly.
_SLICE_S = 0.05
PERCENTILES = (50, 90, 99)
PERCENTILE_METHOD = "nearest-rank"

_HELPER_BOOT = "import sys; from quiesce.benchmark import helper_main; sys.exit(helper_main(sys.argv[1:]))"


class BenchError(QuiesceError):
    """The benchmark could not run: a helper failed, or a repetition ended badly."""


class BenchAborted(QuiesceError):
    """The operator did not confirm ``--all``; nothing was frozen."""


# ---------------------------------------------------------------------------
# statistics (pure)


@dataclass(frozen=True)
class Summary:
    """min / median / p90 / p99 / max of a sample in ns, nearest-rank (all measured values)."""

    n: int
    min_ns: int
    median_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int


def percentile(ordered: Sequence[int], p: int) -> int:
    """The nearest-rank ``p``-th percentile (0..100) of values sorted ascending.

    The value of rank ``ceil(p * n / 100)`` (rank 1 for p = 0): at least p % of
    the sample is at or below it, and less than p % strictly below it.
    """
    if not ordered:
        raise ValueError("percentile of an empty sample")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[rank - 1]


def summarize(values: Iterable[int]) -> Summary:
    """The :class:`Summary` of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("summary of an empty sample")
    median, p90, p99 = (percentile(ordered, p) for p in PERCENTILES)
    return Summary(len(ordered), ordered[0], median, p90, p99, ordered[-1])


def summarize_or_none(values: Iterable[int | None]) -> Summary | None:
    """The summary of the values that are not None, or None when there are none."""
    present = [v for v in values if v is not None]
    return summarize(present) if present else None


# ---------------------------------------------------------------------------
# histogram (pure)


@dataclass(frozen=True)
class Bucket:
    """Values in ``[lo_ns, hi_ns)``."""

    lo_ns: int
    hi_ns: int
    count: int


def nice_step(at_least: int) -> int:
    """The smallest 1, 2 or 5 x 10^k that is >= ``at_least`` (and >= 1)."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale >= at_least:
                return m * scale
        scale *= 10


def histogram(values: Sequence[int], buckets: int = 10) -> list[Bucket]:
    """Equal-width buckets of a round width (1, 2 or 5 x 10^k ns) covering ``values``.

    About ``buckets`` of them (never more than ``buckets + 2``); the first holds
    the minimum, the last the maximum. The width is at least a thousandth of
    the maximum, so labels need no more than three significant digits.
    """
    if not values:
        return []
    if buckets < 1:
        raise ValueError("a histogram needs at least one bucket")
    lo, hi = min(values), max(values)
    step = nice_step(max(1, -(-(hi - lo) // buckets), -(-hi // 1000)))
    first = lo // step * step
    counts = [0] * (hi // step - lo // step + 1)
    for v in values:
        counts[(v - first) // step] += 1
    return [Bucket(first + i * step, first + (i + 1) * step, c) for i, c in enumerate(counts)]


_UNITS = ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us"), (1, "ns"))


def _unit(ns: int) -> tuple[int, str]:
    for size, name in _UNITS:
        if ns >= size:
            return size, name
    return 1, "ns"


def bucket_labels(buckets: Sequence[Bucket]) -> list[tuple[str, str]]:
    """Human edges for each bucket: one unit for all, as few decimals as the width needs."""
    if not buckets:
        return []
    size, name = _unit(buckets[-1].hi_ns)
    step = buckets[0].hi_ns - buckets[0].lo_ns
    decimals = 0
    while step * 10**decimals < size:
        decimals += 1

    def fmt(ns: int) -> str:
        return f"{ns / size:.{decimals}f} {name}"

    return [(fmt(b.lo_ns), fmt(b.hi_ns)) for b in buckets]


def render_histogram(buckets: Sequence[Bucket], width: int = 40) -> list[str]:
    """One text line per bucket: its range, a bar scaled to the fullest bucket, the count."""
    if not buckets:
        return []
    labels = bucket_labels(buckets)
    lw = max(len(lo) for lo, _ in labels)
    hw = max(len(hi) for _, hi in labels)
    most = max(b.count for b in buckets)
    lines = []
    for b, (lo, hi) in zip(buckets, labels, strict=True):
        bar = "#" * (max(1, round(b.count * width / most)) if b.count else 0)
        lines.append(f"  {lo:>{lw}} - {hi:<{hw}} |{bar:<{width}} {b.count}")
    return lines


# ---------------------------------------------------------------------------
# results (plain data)


@dataclass(frozen=True)
class FsTiming:
    """One filesystem in one repetition; durations in ns."""

    mount_point: str
    state: str
    freeze_ns: int | None
    thaw_ns: int | None
    preflush_ns: int | None


@dataclass(frozen=True)
class RepSample:
    """One repetition. ``cycle_*_ns`` bracket the native cycle call, from the bench's start."""

    rep: int
    run_id: str
    window_ns: int
    preflush_ns: int | None
    dirty_write_ns: int | None
    cycle_start_ns: int
    cycle_end_ns: int
    filesystems: tuple[FsTiming, ...]
    rcu_expedited: bool = False


@dataclass(frozen=True)
class Stall:
    """One long probe iteration: when it began (from the bench's start), how long, which window it met."""

    start_ns: int
    duration_ns: int
    rep: int | None


@dataclass
class ProbeResult:
    """What one probe saw: every iteration's duration summarised, and its longest ones."""

    mount_point: str
    pid: int
    iterations: int = 0
    stall: Summary | None = None
    longest: list[Stall] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``targets`` in freeze order (a plan's)."""

    targets: tuple[Target, ...]
    reps: int = DEFAULT_REPS
    interval_s: float = DEFAULT_INTERVAL_S
    dirty_mib: int = 0
    probe: bool = False
    preflush: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S
    run_dir: str = RUN_DIR
    expedite_rcu: bool = False
    parallel: bool = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("nothing to benchmark: no target")
        if self.reps < 1:
            raise ValueError(f"repetitions must be at least 1, not {self.reps}")
        if not (math.isfinite(self.interval_s) and self.interval_s >= 0):
            raise ValueError(f"the interval must be a finite number >= 0, not {self.interval_s}")
        if self.dirty_mib < 0:
            raise ValueError(f"--dirty must be >= 0 MiB, not {self.dirty_mib}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"the timeout must be a finite number > 0, not {self.timeout_s}")

    def freeze_options(self) -> FreezeOptions:
        """The options of each repetition's freeze."""
        return FreezeOptions(
            timeout_s=self.timeout_s,
            preflush=self.preflush,
            run_dir=self.run_dir,
            expedite_rcu=self.expedite_rcu,
            parallel=self.parallel,
        )


@dataclass
class BenchResult:
    """A benchmark's samples (complete or partial) and what ended it; plain data."""

    options: dict[str, Any]
    targets: list[dict[str, Any]]
    samples: list[RepSample] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    interrupted_by: str | None = None
    error: str | None = None
    error_type: str | None = None
    failed_report: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def requested(self) -> int:
        """How many repetitions were asked for."""
        return int(self.options["reps"])

    def summary(self) -> dict[str, Any]:
        """Summaries of the window, pre-flush, dirty write, and per filesystem freeze/thaw/pre-flush."""
        s = self.samples
        per_fs: dict[str, dict[str, Summary | None]] = {}
        for i, target in enumerate(self.targets):
            fs = [sample.filesystems[i] for sample in s]
            per_fs[target["mount_point"]] = {
                "freeze": summarize_or_none(f.freeze_ns for f in fs),
                "thaw": summarize_or_none(f.thaw_ns for f in fs),
                "preflush": summarize_or_none(f.preflush_ns for f in fs),
            }
        return {
            "window": summarize_or_none(x.window_ns for x in s),
            "preflush": summarize_or_none(x.preflush_ns for x in s),
            "dirty_write": summarize_or_none(x.dirty_write_ns for x in s),
            "filesystems": per_fs,
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data; durations in ns."""

        def plain(v: Any) -> Any:
            if isinstance(v, Summary):
                return asdict(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {
            "command": "bench",
            "percentile_method": PERCENTILE_METHOD,
            "options": self.options,
            "targets": self.targets,
            "requested": self.requested,
            "completed": len(self.samples),
            "interrupted_by": self.interrupted_by,
            "error": self.error,
            "error_type": self.error_type,
            "failed_report": self.failed_report,
            "warnings": self.warnings,
            "samples": [asdict(x) for x in self.samples],
            "summary": plain(self.summary()),
            "window_histogram": [asdict(b) for b in histogram([x.window_ns for x in self.samples])],
            "probes": [asdict(p) for p in self.probes],
        }


def sample_from_report(
    rep: int, report: FreezeReport, dirty_write_ns: int | None, cycle_start_ns: int, cycle_end_ns: int
) -> RepSample:
    """A repetition's sample from its (complete, successful) freeze report."""
    if report.window_ns is None:
        raise BenchError(f"repetition {rep}: the report has no window")
    return RepSample(
        rep=rep,
        run_id=report.run_id,
        window_ns=report.window_ns,
        preflush_ns=report.preflush_ns,
        dirty_write_ns=dirty_write_ns,
        cycle_start_ns=cycle_start_ns,
        cycle_end_ns=cycle_end_ns,
        filesystems=tuple(
            FsTiming(t.mount_point, t.state, t.freeze_ns, t.thaw_ns, t.preflush_ns) for t in report.targets
        ),
        rcu_expedited=report.rcu_expedited,
    )


def rep_at(samples: Sequence[RepSample], start_ns: int, duration_ns: int) -> int | None:
    """The repetition whose cycle overlaps ``[start_ns, start_ns + duration_ns]``, if any."""
    for s in samples:
        if start_ns <= s.cycle_end_ns and start_ns + duration_ns >= s.cycle_start_ns:
            return s.rep
    return None


# ---------------------------------------------------------------------------
# helper processes: the child side


def helper_main(argv: Sequence[str]) -> int:
    """Entry point of the bench's helper processes (not a user command).

    ``probe DIR``: the writer-stall probe. ``dirty DIR PREFIX MIB``: the dirty
    data writer. Both end on EOF of stdin.
    """
    # A Ctrl-C reaches the whole process group (a service stop the whole cgroup):
    # the bench stops first, then ends its helpers by closing their stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if len(argv) == 2 and argv[0] == "probe":
        return _probe_main(argv[1])
    if len(argv) == 4 and argv[0] == "dirty":
        return _dirty_main(argv[1], argv[2], int(argv[3]))
    print(f"quiesce bench helper: bad arguments {list(argv)}", file=sys.stderr)
    return 2


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def open_unnamed(directory: str) -> int:
    """A read-write file on ``directory``'s filesystem with no name, so none can be left behind.

    ``O_TMPFILE``; where the filesystem lacks it, a new file unlinked at once.
    """
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    path = os.path.join(directory, f"{FILE_PREFIX}{os.getpid()}-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.unlink(path)
    return fd


def _probe_main(directory: str) -> int:
    """write + fdatasync in a loop until stdin is closed; then one JSON line with the durations."""
    durations = array("q")
    top: list[tuple[int, int]] = []  # a min-heap of (duration, start) of the longest iterations
    error = None
    stdin = select.poll()
    stdin.register(0, select.POLLIN)
    block = b"\xa5" * PROBE_BLOCK
    fd = -1
    try:
        fd = open_unnamed(directory)
        i = 0
        while not stdin.poll(0):
            start = time.monotonic_ns()
            os.pwrite(fd, block, (i % PROBE_RING_BLOCKS) * PROBE_BLOCK)
            os.fdatasync(fd)
            took = time.monotonic_ns() - start
            durations.append(took)
            if len(top) < PROBE_TOP_STALLS:
                heapq.heappush(top, (took, start))
            elif took > top[0][0]:
                heapq.heapreplace(top, (took, start))
            if i == 0:
                _say("ready")
            i += 1
    except OSError as err:
        error = f"probe on {directory}: {err.strerror} ({errno.errorcode.get(err.errno or 0, err.errno)})"
    finally:
        if fd >= 0:
            os.close(fd)
    stall = asdict(summarize(durations)) if durations else None
    longest = [[start, took] for took, start in sorted(top, reverse=True)]
    with contextlib.suppress(OSError):  # the bench is gone: nobody to tell
        _say(json.dumps({"iterations": len(durations), "stall": stall, "longest": longest, "error": error}))
    return 0 if error is None else 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _dirty_main(directory: str, prefix: str, mib: int) -> int:
    """On each ``write`` line: delete the previous file, write a new one of ``mib`` MiB, no fsync.

    Answers ``ok <ns>`` (or ``error <text>``). On EOF deletes the last file.
    """
    chunk = os.urandom(MIB)  # incompressible, so compressing filesystems write it all
    previous: str | None = None
    number = 0
    status = 0
    try:
        for line in sys.stdin.buffer:
            if line.strip() != b"write":
                _say(f"error unknown request {line!r}")
                continue
            start = time.monotonic_ns()
            try:
                if previous is not None:
                    os.unlink(previous)
                    previous = None
                number += 1
                path = os.path.join(directory, f"{prefix}{number}")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(path, flags, 0o600)
                previous = path
                try:
                    for _ in range(mib):
                        _write_all(fd, chunk)
                finally:
                    os.close(fd)
            except OSError as err:
                _say(f"error {err}")
                status = 1
                break
            _say(f"ok {time.monotonic_ns() - start}")
    finally:
        if previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(previous)
    return status


# ---------------------------------------------------------------------------
# helper processes: the bench's side


def _helper_env() -> dict[str, str]:
    # The helpers must import this very quiesce, also when it runs from a source tree.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


class _Helper:
    """A helper process, talking lines over its stdin and stdout."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER_BOOT, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_helper_env(),
        )
        self._buf = b""
        self.finished = False
        self.stderr = ""

    @property
    def pid(self) -> int:
        """The helper's pid."""
        return self.proc.pid

    def send(self, line: str) -> None:
        """Send one request line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout_s: float, stop: Callable[[], bool]) -> str | None:
        """The helper's next line; None if ``stop()`` turned true first. BenchError on EOF or timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            if stop():
                return None
            left = end - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no answer within {timeout_s:g} s")
            ready, _, _ = select.select([fd], [], [], min(left, _SLICE_S))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.finish(HELPER_STOP_S)
                    raise BenchError(f"{self.name} ended unexpectedly: {self.stderr.strip() or 'no message'}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def finish(self, timeout_s: float) -> list[str]:
        """Close its stdin (it ends on EOF), wait for it, return its remaining output lines.

        A helper that does not end in time is killed. One stuck on a frozen
        filesystem cannot be (it sleeps in the kernel): it is left behind.
        """
        if self.finished:
            return []
        out = err = b""
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                out, err = self.proc.communicate(timeout=min(timeout_s, 5.0))
        self.finished = self.proc.returncode is not None
        self.stderr = err.decode(errors="replace")
        rest = self._buf + out
        self._buf = b""
        return rest.decode(errors="replace").splitlines()


class _Probe(_Helper):
    def __init__(self, mount_point: str) -> None:
        super().__init__(f"the probe on {mount_point}", ["probe", mount_point])
        self.mount_point = mount_point

    def wait_ready(self, stop: Callable[[], bool]) -> None:
        line = self.read_line(HELPER_START_S, stop)
        if line is None or line == "ready":
            return
        try:  # a probe that fails before its first write reports at once
            message = json.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            message = None
        raise BenchError(message or f"{self.name}: unexpected {line!r}")

    def collect(self, timeout_s: float, origin_ns: int, samples: Sequence[RepSample]) -> ProbeResult:
        result = ProbeResult(self.mount_point, self.pid)
        lines = [x for x in self.finish(timeout_s) if x and x != "ready"]
        try:
            data = json.loads(lines[-1])
        except (IndexError, ValueError):
            result.error = f"{self.name} reported nothing: {self.stderr.strip() or self.proc.returncode}"
            return result
        result.iterations = int(data["iterations"])
        result.error = data["error"]
        if data["stall"] is not None:
            result.stall = Summary(**data["stall"])
        for start, took in data["longest"]:
            rel = int(start) - origin_ns
            result.longest.append(Stall(rel, int(took), rep_at(samples, rel, int(took))))
        return result


class _DirtyWriter(_Helper):
    def __init__(self, mount_point: str, mib: int) -> None:
        self.prefix = f"{FILE_PREFIX}{os.getpid()}-dirty-"
        super().__init__(f"the dirty writer on {mount_point}", ["dirty", mount_point, self.prefix, str(mib)])
        self.mount_point = mount_point

    def wait_written(self, timeout_s: float, stop: Callable[[], bool]) -> int | None:
        line = self.read_line(timeout_s, stop)
        if line is None:
            return None
        if not line.startswith("ok "):
            raise BenchError(f"{self.name}: {line.removeprefix('error ')}")
        return int(line.split()[1])

    def remove_leftovers(self) -> list[str]:
        """Delete this writer's files left on the target (after :meth:`finish`); returns any that stay."""
        try:
            names = [n for n in os.listdir(self.mount_point) if n.startswith(self.prefix)]
        except OSError:
            return []
        left = []
        for name in names:
            path = os.path.join(self.mount_point, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(path)
        return left


# ---------------------------------------------------------------------------
# the benchmark


def _never() -> bool:
    return False


def _device_of(path: str) -> int | None:
    while True:
        try:
            return os.stat(path).st_dev
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


def preflight(options: BenchOptions) -> None:
    """Refuse what cannot work before anything is started or frozen.

    The run directory must not be on a target (the lock and ledger live
    there); with ``--dirty``, each target needs twice that much free space.
    """
    run_dev = _device_of(os.path.abspath(options.run_dir))
    for t in options.targets:
        mp = t.mount.mount_point
        if run_dev is not None and _device_of(mp) == run_dev:
            raise TargetError(
                f"the run directory {options.run_dir} is on {mp}, a target; use another --run-dir"
            )
        if options.dirty_mib:
            st = os.statvfs(mp)
            free = st.f_bavail * st.f_frsize
            need = 2 * options.dirty_mib * MIB
            if free < need:
                raise TargetError(
                    f"{mp}: {free // MIB} MiB free, --dirty {options.dirty_mib} needs twice that "
                    f"({need // MIB} MiB); use a smaller --dirty"
                )


ProgressCallback = Callable[[int, RepSample | None], None]


class Bench:
    """One benchmark run. :attr:`result` holds what was measured, also after an interruption.

    ``stop`` is polled between steps (and while waiting): when it returns
    True the bench ends after the current freeze, which is always thawed.
    """

    def __init__(
        self,
        options: BenchOptions,
        *,
        progress: ProgressCallback | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.options = options
        self.progress = progress
        self.stop = stop or _never
        self.failure: QuiesceError | None = None
        self.origin_ns = 0
        opts = asdict(options)
        opts.pop("targets")
        self.result = BenchResult(
            options=opts,
            targets=[
                {"mount_point": t.mount.mount_point, "fstype": t.mount.fstype, "dev": t.mount.dev}
                for t in options.targets
            ],
        )

    def run(self) -> BenchResult:
        """Start the helpers, run the repetitions, stop the helpers, return the result."""
        opts = self.options
        preflight(opts)
        self.origin_ns = now_ns()
        mounts = [t.mount.mount_point for t in opts.targets]
        probes: list[_Probe] = []
        writers: list[_DirtyWriter] = []
        try:
            for mp in mounts if opts.probe else ():
                probes.append(_Probe(mp))
            for p in probes:
                p.wait_ready(self.stop)
            for mp in mounts if opts.dirty_mib else ():
                writers.append(_DirtyWriter(mp, opts.dirty_mib))
            self._repeat(writers)
        finally:
            self._finish(probes, writers)
        return self.result

    def _repeat(self, writers: Sequence[_DirtyWriter]) -> None:
        opts = self.options
        for rep in range(1, opts.reps + 1):
            if self.stop() or (rep > 1 and not self._pause(opts.interval_s)):
                break
            dirty_ns = None
            if writers:
                try:
                    dirty_ns = self._dirty(writers)
                except BenchError as err:  # e.g. ENOSPC: keep what was measured
                    self._fail(err, None)
                    break
                if dirty_ns is None:
                    break
            sample = self._rep(rep, dirty_ns)
            if sample is None:
                break
            self.result.samples.append(sample)
            if self.progress is not None:
                self.progress(rep, sample)

    def _pause(self, seconds: float) -> bool:
        """Sleep, sliced so that a stop request is seen; False if stopped."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stop():
                return False
            time.sleep(min(left, _SLICE_S))
        return not self.stop()

    def _dirty(self, writers: Sequence[_DirtyWriter]) -> int | None:
        """Have every writer write its file, in parallel; the longest took, or None if stopped."""
        timeout = 60.0 + self.options.dirty_mib * 0.1
        for w in writers:
            w.send("write")
        took = [w.wait_written(timeout, self.stop) for w in writers]
        return None if any(t is None for t in took) else max(t for t in took if t is not None)

    def _rep(self, rep: int, dirty_ns: int | None) -> RepSample | None:
        """One full freeze with an immediate thaw; None (and :attr:`failure` set) if it failed."""
        f = Freeze(self.options.targets, self.options.freeze_options())
        start = end = 0
        try:
            with f:
                f.prepare()
                start = now_ns()
                f.cycle()
                end = now_ns()
        except QuiesceError as err:
            self._fail(err, f.report)
            return None
        if not f.report.ok:
            states = ", ".join(f"{t.mount_point} {t.state}" for t in f.report.targets)
            self._fail(BenchError(f"repetition {rep} did not end thawed by quiesce: {states}"), f.report)
            return None
        for w in f.report.warnings:
            if w not in self.result.warnings:
                self.result.warnings.append(w)
        return sample_from_report(rep, f.report, dirty_ns, start - self.origin_ns, end - self.origin_ns)

    def _fail(self, err: QuiesceError, report: FreezeReport | None) -> None:
        self.failure = err
        self.result.error = str(err)
        self.result.error_type = type(err).__name__
        if report is not None and report.targets:
            self.result.failed_report = report.to_dict()

    def _finish(self, probes: Sequence[_Probe], writers: Sequence[_DirtyWriter]) -> None:
        """Stop every helper and collect the probes. After a failed thaw, wait only briefly."""
        timeout = 2.0 if isinstance(self.failure, ThawError) else HELPER_STOP_S
        for p in probes:
            self.result.probes.append(p.collect(timeout, self.origin_ns, self.result.samples))
            if not p.finished:
                self.result.warnings.append(f"{p.name} (pid {p.pid}) did not end")
        thawed = not isinstance(self.failure, ThawError)
        for w in writers:
            w.finish(timeout)
            if not w.finished:
                self.result.warnings.append(f"{w.name} (pid {w.pid}) did not end")
            # The writer deletes its file on EOF; if it died first, do it here,
            # only when nothing of ours can be frozen (a failed thaw may leave one).
            left = w.remove_leftovers() if thawed else []
            if left:
                self.result.warnings.append(f"left behind: {', '.join(left)}")


def run_bench(
    options: BenchOptions,
    *,
    progress: ProgressCallback | None = None,
    stop: Callable[[], bool] | None = None,
) -> BenchResult:
    """Run a benchmark (see :class:`Bench`); a failed repetition ends it and is in the result."""
    return Bench(options, progress=progress, stop=stop).run()


# ---------------------------------------------------------------------------
# stopping on signals


class StopFlag:
    """Set by SIGINT or SIGTERM; true once a stop was requested."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: note the first signal, never raise (a freeze may be under way)."""
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def stop_on_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Within the block, the signals set a :class:`StopFlag` instead of raising or ending the process."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag.handle) for s in signums}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------
# the command


def check_selection(targets: Sequence[str], all_: bool, yes: bool) -> None:
    """Raise ValueError (a usage error) for a target selection that makes no sense."""
    if all_ and targets:
        raise ValueError("--all benchmarks every freezable filesystem; do not name targets with it")
    if yes and not all_:
        raise ValueError("--yes confirms --all; without --all there is nothing to confirm")
    if not targets and not all_:
        raise ValueError(
            "no target: name the mount points to benchmark (each repetition freezes them), "
            "or pass --all to freeze every freezable filesystem of this machine, / included"
        )


def require_terminal(stdin: TextIO) -> None:
    """Refuse ``--all`` without ``--yes`` when there is no one to ask (ValueError, a usage error)."""
    if not stdin.isatty():
        raise ValueError(
            "--all freezes every freezable filesystem of this machine, / included: "
            "confirm with --yes (stdin is not a terminal, so there is no one to ask)"
        )


def confirm_all(plan: Plan, reps: int, stdin: TextIO, out: TextIO) -> None:
    """Ask on a terminal before ``--all`` freezes this machine's filesystems.

    Shows the plan; raises :class:`BenchAborted` unless the answer is ``yes``.
    """
    require_terminal(stdin)
    from quiesce.cli import print_plan

    print_plan(plan, out)
    out.write(
        f"This freezes all {len(plan.targets)} filesystems above {reps} times; every writer on them "
        "stalls during each window. Type yes to go on: "
    )
    out.flush()
    if stdin.readline().strip() != "yes":
        raise BenchAborted("not confirmed: nothing was frozen")


def options_from_args(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> BenchOptions:
    """Check the arguments, plan the targets, confirm ``--all``; the bench's options."""
    targets: list[str] = list(args.targets)
    check_selection(targets, args.all, args.yes)
    if args.all and not args.yes:
        require_terminal(stdin)  # before even planning
    plan = make_plan(targets)
    check_explicit(plan, targets)
    if args.all and not args.yes:
        confirm_all(plan, args.reps, stdin, out)
    return BenchOptions(
        targets=plan.targets,
        reps=args.reps,
        interval_s=args.interval,
        dirty_mib=args.dirty,
        probe=args.probe,
        preflush=not args.no_preflush,
        timeout_s=args.timeout,
        run_dir=args.run_dir,
        expedite_rcu=args.expedite_rcu,
        parallel=args.parallel,
    )


class ProgressBar:
    """A progress bar rewritten in place on a terminal."""

    def __init__(self, out: TextIO, total: int, width: int = 30) -> None:
        self.out = out
        self.total = total
        self.width = width
        self.shown = False

    def __call__(self, done: int, sample: RepSample | None) -> None:
        from quiesce.cli import human_ns

        filled = round(self.width * done / self.total)
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}"
        if sample is not None:
            text += f"  last window {human_ns(sample.window_ns)}"
        self.out.write("\r\033[K" + text)
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        """Erase the bar before the results are printed."""
        if self.shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self.shown = False


def summary_rows(result: BenchResult) -> list[tuple[str, Summary]]:
    """The table's rows: window, pre-flush, dirty write, per filesystem freeze and thaw, probe stalls."""
    s = result.summary()
    rows: list[tuple[str, Summary | None]] = [
        ("window", s["window"]),
        ("pre-flush", s["preflush"]),
        ("dirty write", s["dirty_write"]),
    ]
    for mp, fs in s["filesystems"].items():
        rows.append((f"freeze {mp}", fs["freeze"]))
        rows.append((f"thaw {mp}", fs["thaw"]))
    for p in result.probes:
        rows.append((f"probe stall {p.mount_point}", p.stall))
    return [(label, summary) for label, summary in rows if summary is not None]


def render_table(rows: Sequence[tuple[str, Summary]]) -> list[str]:
    """A fixed-width table of summaries in human units."""
    from quiesce.cli import human_ns

    lw = max([len(label) for label, _ in rows] + [6])
    heads = ("min", "median", "p90", "p99", "max")
    lines = [f"{'':<{lw}} {'n':>7} " + " ".join(f"{h:>9}" for h in heads)]
    for label, s in rows:
        values = (s.min_ns, s.median_ns, s.p90_ns, s.p99_ns, s.max_ns)
        lines.append(f"{label:<{lw}} {s.n:>7} " + " ".join(f"{human_ns(v):>9}" for v in values))
    return lines


def print_bench(result: BenchResult, out: TextIO) -> None:
    """A benchmark's result for a terminal: what ran, the table, the window histogram, the probes."""
    from quiesce.cli import human_ns

    o = result.options
    what = ", ".join(f"{t['mount_point']} ({t['fstype']})" for t in result.targets)
    extras = ["pre-flush" if o["preflush"] else "no pre-flush"]
    if o["dirty_mib"]:
        extras.append(f"{o['dirty_mib']} MiB dirty per target")
    if o.get("expedite_rcu"):
        extras.append("expedited RCU")
    if o.get("parallel"):
        extras.append("parallel freeze")
    if o["probe"]:
        extras.append("writer-stall probe")
    out.write(f"bench: {len(result.samples)} of {result.requested} freezes of {what}; {', '.join(extras)}\n")
    rows = summary_rows(result)
    if rows:
        out.write("\n".join(render_table(rows)) + "\n")
        out.write(f"(percentiles {PERCENTILE_METHOD}: every figure is a measured value)\n")
    windows = [x.window_ns for x in result.samples]
    if windows:
        out.write("\nwindow histogram:\n")
        out.write("\n".join(render_histogram(histogram(windows))) + "\n")
    for p in result.probes:
        if p.error:
            out.write(f"probe on {p.mount_point}: {p.error}\n")
        if p.longest:
            worst = p.longest[0]
            met = f"during repetition {worst.rep}" if worst.rep is not None else "outside any window"
            out.write(
                f"probe on {p.mount_point}: {p.iterations} writes, longest stall "
                f"{human_ns(worst.duration_ns)} ({met})\n"
            )
    for w in result.warnings:
        out.write(f"warning: {w}\n")
    if result.interrupted_by:
        out.write(f"interrupted by {result.interrupted_by}: partial results\n")
    if result.error:
        out.write(f"error: {result.error}\n")


def _exit_code(bench: Bench) -> int:
    from quiesce.cli import Exit, exit_code_for

    if bench.failure is not None:
        return int(exit_code_for(bench.failure))
    if bench.result.interrupted_by is not None:
        return 128 + int(signal.Signals[bench.result.interrupted_by])
    return int(Exit.OK)


def cmd_bench(args: argparse.Namespace) -> int:
    """``quiesce bench``."""
    from quiesce.cli import emit_json

    options = options_from_args(args, sys.stdin, sys.stderr)
    bar = ProgressBar(sys.stderr, options.reps) if sys.stderr.isatty() else None
    with stop_on_signals() as flag:
        bench = Bench(options, progress=bar, stop=flag)
        if bar is not None:
            bar(0, None)
        try:
            bench.run()
        except KeyboardInterrupt:  # only when the handler could not be installed
            flag.signum = flag.signum or signal.SIGINT
        finally:
            if bar is not None:
                bar.clear()
    if flag.signum is not None:
        bench.result.interrupted_by = signal.Signals(flag.signum).name
    code = _exit_code(bench)
    if args.json:
        emit_json(bench.result.to_dict() | {"exit": code}, sys.stdout)
    else:
        print_bench(bench.result, sys.stdout)
        if isinstance(bench.failure, ThawError):
            print("a filesystem may still be frozen: see `quiesce status`, `quiesce thaw`", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------
# the parser


#: Bounds of the numeric options (README and --help name them).
MAX_REPS = 1_000_000
MAX_DIRTY_MIB = 1 << 20

_count = argtypes.count(1, MAX_REPS)
_mib = argtypes.count(0, MAX_DIRTY_MIB, "MiB")
_seconds = argtypes.seconds(0, argtypes.MAX_SECONDS)
_positive_seconds = argtypes.seconds(0, argtypes.MAX_SECONDS, low_open=True)


BENCH_DESCRIPTION = """\
Measure the frozen window on the given filesystems: N repetitions of a whole
freeze (lock, ledger, guardian armed, pre-flush), each frozen and thawed at once
in one native call. Prints min/median/p90/p99/max of the window, of each
filesystem's FIFREEZE and FITHAW, of the pre-flush and of the probe's stalls,
with a histogram of the windows (--json: every sample in ns and the summaries).
Percentiles are nearest-rank: every figure is a measured value.

Targets must be named (mount points or globs); a named target that cannot be
frozen is an error. --all freezes every freezable filesystem of this machine,
/ included: it asks for "yes" on a terminal, or needs --yes.

--dirty MB: before each repetition a helper process per target deletes its
previous file and writes a new one of MB MiB (no fsync), so the pre-flush and
FIFREEZE have that much to write; the last file is deleted at the end. Each
target needs twice that much free space.

--probe: during the whole benchmark a helper process per target writes 4 KiB
and calls fdatasync in a loop, timing each iteration. Its stall is what an
application writing to that filesystem sees: roughly the window plus scheduling
(the wait until it runs again after the thaw) plus its own flush. It can be
shorter than the window: a cold FIFREEZE first waits out an RCU grace period
(tens of ms) while writes still go through (--expedite-rcu shortens it). Each
stall is matched to the repetition whose window it overlapped, if any. The
probe's file has no name (O_TMPFILE) and vanishes with it.

Ctrl-C (or SIGTERM) stops after the current repetition, which is always
thawed, prints the partial results and exits 130 (143).
"""


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """Register ``bench`` on the subcommands ``sub``; ``common`` supplies --json and --run-dir."""
    from quiesce.cli import exit_help

    p = sub.add_parser(
        "bench",
        parents=[common],
        help="measure the frozen window (min/median/p90/p99/max, histogram, writer stalls)",
        description=BENCH_DESCRIPTION,
        epilog=exit_help("bench"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="mount points (or globs) to freeze")
    p.add_argument(
        "-n",
        "--reps",
        type=_count,
        default=DEFAULT_REPS,
        metavar="N",
        help=f"repetitions (default {DEFAULT_REPS}; 1 to {MAX_REPS})",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"pause between repetitions (default {DEFAULT_INTERVAL_S:g}; 0 to {argtypes.MAX_SECONDS:g})",
    )
    p.add_argument(
        "--dirty",
        type=_mib,
        default=0,
        metavar="MB",
        help="MiB of unsynced data written on each target before each repetition "
        f"(default 0; at most {MAX_DIRTY_MIB})",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="run a write+fdatasync loop per target and report its longest stall "
        "(what an application sees: window plus scheduling)",
    )
    p.add_argument("--no-preflush", action="store_true", help="skip the parallel syncfs() before freezing")
    p.add_argument(
        "--expedite-rcu",
        action="store_true",
        help="expedite RCU grace periods for each window (/sys/kernel/rcu_expedited, system-wide, "
        "restored after), as `quiesce freeze --expedite-rcu` does: compare with and without",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="freeze independent filesystems at once, as `quiesce freeze --parallel` does",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"guardian deadline of each repetition (default {DEFAULT_TIMEOUT_S:g}; more than 0, "
        f"at most {argtypes.MAX_SECONDS:g})",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every freezable filesystem of this machine, / included (asks for confirmation)",
    )
    p.add_argument("--yes", action="store_true", help="confirm --all without asking")
    p.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """``quiesce bench`` on its own (``argv`` starts with ``bench``), mapping errors as ``quiesce`` does.

    For tests and embedding; the ``quiesce`` command registers the same
    parser with :func:`add_parser`.
    """
    from quiesce.cli import emit_json, exit_code_for

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--run-dir", default=os.environ.get("QUIESCE_RUN_DIR", RUN_DIR), metavar="DIR", help="run directory"
    )
    parser = argparse.ArgumentParser(prog="quiesce")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser(sub, common)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (QuiesceError, ValueError) as err:
        code = int(exit_code_for(err))
        print(f"quiesce: {err}", file=sys.stderr)
        if args.json:
            emit_json({"error": str(err), "error_type": type(err).__name__, "exit": code}, sys.stdout)
        return code


__all__ = [
    "BenchAborted",
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "Bucket",
    "FsTiming",
    "ProbeResult",
    "RepSample",
    "Stall",
    "Summary",
    "add_parser",
    "cmd_bench",
    "histogram",
    "main",
    "percentile",
    "render_histogram",
    "run_bench",
    "summarize",
]
