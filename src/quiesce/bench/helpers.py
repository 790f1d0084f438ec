"""The bench's helper programs, the dirty-data writer and the writer-stall probe, and their clients.

Load and observers run in helper processes, never in the process that freezes
and thaws: that process must not touch a target while it is frozen.

* ``dirty DIR PREFIX MIB``: before every repetition (a ``write`` line on its
  stdin) the writer deletes its previous file and writes a new one of that
  size (no fsync), so the pre-flush and FIFREEZE have dirty data to write.
  The last file is deleted at the end.
* ``probe DIR``: runs ``pwrite(4 KiB) + fdatasync`` in a loop for the whole
  benchmark, on a file with no name (``O_TMPFILE``, so none can be left
  behind), keeps every iteration's duration in memory and reports them when
  told to stop. Its longest stall is what an application writing to that
  filesystem sees: roughly the window, plus the time the scheduler takes to
  run it again after the thaw, plus its own flush. It can be shorter than the
  window: a cold FIFREEZE first waits out an RCU grace period (tens of
  milliseconds) during which writes still go through; ``--expedite-rcu``
  shortens that wait.

Helpers ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process group,
a service stop the whole cgroup; the bench decides when they end) and end on
EOF of their stdin, so they also end, and clean up, when the bench dies.
:class:`Probe` and :class:`DirtyWriter` are the bench's side of them.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import json
import os
import select
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict

from quiesce.bench.results import BenchError, ProbeResult, RepSample, Stall, rep_at
from quiesce.bench.stats import Summary, summarize
from quiesce.engine.fdwait import wait_readable

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
SLICE_S = 0.05

_HELPER_BOOT = (
    "import sys; from quiesce.bench.helpers import helper_main; sys.exit(helper_main(sys.argv[1:]))"
)


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
    path = os.path.join(directory, f"{FILE_PREFIX}{os.getpid()}-{os.urandom(8).hex()}-probe")
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


class Helper:
    """A helper process, talking lines over its stdin and stdout."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        # -P: "-c" would put the current directory first on sys.path, and a
        # helper runs as root: a module planted there would be imported.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _HELPER_BOOT, *argv],
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
            if wait_readable(fd, min(left, SLICE_S)):
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


class Probe(Helper):
    """The writer-stall probe on one target, seen from the bench."""

    def __init__(self, mount_point: str) -> None:
        super().__init__(f"the probe on {mount_point}", ["probe", mount_point])
        self.mount_point = mount_point

    def wait_ready(self, stop: Callable[[], bool]) -> None:
        """Wait for the probe's first write; BenchError with its reason if it failed first."""
        line = self.read_line(HELPER_START_S, stop)
        if line is None or line == "ready":
            return
        try:  # a probe that fails before its first write reports at once
            message = json.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            message = None
        raise BenchError(message or f"{self.name}: unexpected {line!r}")

    def collect(self, timeout_s: float, origin_ns: int, samples: Sequence[RepSample]) -> ProbeResult:
        """Stop the probe and turn its report into a :class:`ProbeResult` (times from ``origin_ns``)."""
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


class DirtyWriter(Helper):
    """The dirty-data writer on one target, seen from the bench."""

    def __init__(self, mount_point: str, mib: int) -> None:
        # A random part: on a target other users can write, a name they could foresee
        # (a pid is public) would let them make the writer fail by creating it first.
        self.prefix = f"{FILE_PREFIX}{os.getpid()}-{os.urandom(8).hex()}-dirty-"
        super().__init__(f"the dirty writer on {mount_point}", ["dirty", mount_point, self.prefix, str(mib)])
        self.mount_point = mount_point

    def wait_written(self, timeout_s: float, stop: Callable[[], bool]) -> int | None:
        """The ns its file took to write, None if ``stop()`` turned true first; BenchError on failure."""
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
