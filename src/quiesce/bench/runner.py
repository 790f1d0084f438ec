"""Running a benchmark: N whole freezes of the targets, each frozen and thawed in one native call."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from quiesce.bench.helpers import HELPER_STOP_S, MIB, SLICE_S, DirtyWriter, Probe
from quiesce.bench.results import BenchError, BenchResult, RepSample, sample_from_report
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.native import now_ns
from quiesce.engine.plan import Target
from quiesce.engine.report import FreezeReport
from quiesce.errors import QuiesceError, TargetError, ThawError

DEFAULT_REPS = 20
#: Idle time before each cold repetition. After a thaw, the next FIFREEZE of
#: the same filesystem skips its RCU grace-period wait until one grace period
#: has passed; measured on a 2-core VM (kernel 6.18, ext4 + xfs + btrfs, load
#: 2.3-5.5), every freeze was cold after 30 ms idle, some still warm after
#: 20 ms. 0.2 s leaves a wide margin for a slower grace period under load.
DEFAULT_IDLE_S = 0.2


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: ``targets`` in freeze order (a plan's), and how each repetition freezes them.

    ``idle_s``: the bench sleeps that long right before each repetition's
    freeze (the first included), so that every window is **cold**, as an
    hourly or daily backup's is. 0 runs them back to back (**warm**: a
    FIFREEZE soon after the previous thaw skips the grace-period wait).
    """

    targets: tuple[Target, ...]
    reps: int = DEFAULT_REPS
    idle_s: float = DEFAULT_IDLE_S
    dirty_mib: int = 0
    probe: bool = False
    #: Each repetition's freeze, as ``quiesce freeze`` would run it.
    freeze: FreezeOptions = field(default_factory=FreezeOptions)

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("nothing to benchmark: no target")
        if self.reps < 1:
            raise ValueError(f"repetitions must be at least 1, not {self.reps}")
        if not (math.isfinite(self.idle_s) and self.idle_s >= 0):
            raise ValueError(f"the idle time must be a finite number >= 0, not {self.idle_s}")
        if self.dirty_mib < 0:
            raise ValueError(f"--dirty must be >= 0 MiB, not {self.dirty_mib}")
        if not math.isfinite(self.freeze.timeout_s):
            raise ValueError(f"the timeout must be a finite number > 0, not {self.freeze.timeout_s}")

    @property
    def mode(self) -> str:
        """``"cold"`` (an idle time before each repetition) or ``"warm"`` (back to back)."""
        return "cold" if self.idle_s > 0 else "warm"

    def to_dict(self) -> dict[str, object]:
        """The options as the JSON result shows them (targets apart)."""
        f = self.freeze
        return {
            "reps": self.reps,
            "mode": self.mode,
            "idle_s": self.idle_s,
            "dirty_mib": self.dirty_mib,
            "probe": self.probe,
            "preflush": f.preflush,
            "timeout_s": f.timeout_s,
            "run_dir": f.run_dir,
            "expedite_rcu": f.expedite_rcu,
            "parallel": f.parallel,
        }


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
    run_dir = options.freeze.run_dir
    run_dev = _device_of(os.path.abspath(run_dir))
    for t in options.targets:
        mp = t.mount.mount_point
        if run_dev is not None and _device_of(mp) == run_dev:
            raise TargetError(f"the run directory {run_dir} is on {mp}, a target; use another --run-dir")
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
        self.result = BenchResult(
            options=options.to_dict(),
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
        probes: list[Probe] = []
        writers: list[DirtyWriter] = []
        try:
            for mp in mounts if opts.probe else ():
                probes.append(Probe(mp))
            for p in probes:
                p.wait_ready(self.stop)
            for mp in mounts if opts.dirty_mib else ():
                writers.append(DirtyWriter(mp, opts.dirty_mib))
            self._repeat(writers)
        finally:
            self._finish(probes, writers)
        return self.result

    def _repeat(self, writers: Sequence[DirtyWriter]) -> None:
        opts = self.options
        for rep in range(1, opts.reps + 1):
            if self.stop():
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
            # Idle right before the freeze, after any dirty write: the window is cold.
            if not self._pause(opts.idle_s):
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
            time.sleep(min(left, SLICE_S))
        return not self.stop()

    def _dirty(self, writers: Sequence[DirtyWriter]) -> int | None:
        """Have every writer write its file, in parallel; the longest took, or None if stopped."""
        timeout = 60.0 + self.options.dirty_mib * 0.1
        for w in writers:
            w.send("write")
        took = [w.wait_written(timeout, self.stop) for w in writers]
        return None if any(t is None for t in took) else max(t for t in took if t is not None)

    def _rep(self, rep: int, dirty_ns: int | None) -> RepSample | None:
        """One full freeze with an immediate thaw; None (and :attr:`failure` set) if it failed."""
        f = Freeze(self.options.targets, self.options.freeze)
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

    def _finish(self, probes: Sequence[Probe], writers: Sequence[DirtyWriter]) -> None:
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
