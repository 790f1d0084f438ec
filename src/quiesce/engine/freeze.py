"""One freeze, start to finish: lock, open, ledger, guardian, pre-flush, freeze, thaw.

:class:`Freeze` runs the steps in the order the safety contract requires and
always cleans up: the guardian is armed and the ledger written before the
first FIFREEZE; the ledger is removed, the guardian reaped and the lock
released only after the thaw. :func:`quiesce.engine.frozen.frozen` wraps it
for a ``with`` block.

Nothing in this module writes to a file between :meth:`Freeze.freeze` and
:meth:`Freeze.thaw`; the report is assembled from the native records after.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from quiesce.engine import ledger as ledger_mod
from quiesce.engine.defaults import DEFAULT_FREEZE_TIMEOUT_S as DEFAULT_FREEZE_TIMEOUT_S
from quiesce.engine.defaults import DEFAULT_STEP_TIMEOUT_S as DEFAULT_STEP_TIMEOUT_S
from quiesce.engine.lock import FreezeLock
from quiesce.engine.mountfd import open_target
from quiesce.engine.mountinfo import read_mountinfo
from quiesce.engine.native import Child, Session, Supervision, now_ns
from quiesce.engine.options import FreezeOptions as FreezeOptions
from quiesce.engine.order import parallel_groups
from quiesce.engine.plan import Target
from quiesce.engine.preflush import PreflushDecision, decide_now
from quiesce.engine.proof import PROOF_FROZEN, PROOF_THAWED, Proof, start_time
from quiesce.engine.rcu import WindowRcu
from quiesce.engine.report import FreezeReport, build_report, real_thaw_failure
from quiesce.engine.rundir import RunDir
from quiesce.engine.targets import freeze_targets
from quiesce.errors import NotFrozenError, QuiesceError, TargetError, ThawError

GUARDIAN_LOG = "guardian.log"


class Freeze:
    """One freeze of an ordered list of targets: one window, once.

    Call :meth:`prepare`, :meth:`freeze` (or :meth:`cycle`), :meth:`thaw`,
    and always :meth:`close` (also a context manager). :attr:`report` is
    complete once closed. Each step runs once, in that order: a step out of
    order, a second window or any step after :meth:`close` raises
    RuntimeError and changes nothing. :meth:`thaw` and :meth:`close` may be
    called at any point, again and from another thread: with nothing held
    they do nothing. A Freeze dropped unclosed is closed (thawed, its lock
    released) when it is collected, with a ResourceWarning.
    """

    def __init__(self, targets: Iterable[Target], options: FreezeOptions | None = None) -> None:
        targets = freeze_targets(targets)
        if not targets:
            raise TargetError("nothing to freeze: no target selected")
        if options is not None and not isinstance(options, FreezeOptions):
            raise TypeError(f"options must be a FreezeOptions, not {type(options).__name__}")
        self.options = options or FreezeOptions()
        self._groups: list[int] | None = None
        if self.options.parallel:
            ordered, self._groups = parallel_groups(targets)
            targets = ordered
        self.targets = tuple(targets)
        self.run_id = self.options.run_id or ledger_mod.new_run_id()
        self.report = FreezeReport(run_id=self.run_id)
        self._lock: FreezeLock | None = None
        self._dir: RunDir | None = None
        self._proof: Proof | None = None
        self._fds: list[int] = []
        self._log_fd = -1
        self._session: Session | None = None
        self._guardian: int | None = None
        self._ledger_written = False
        self._closed = False
        self._warnings: list[str] = []
        self._rcu = WindowRcu(self._warnings)
        self._preflush: PreflushDecision | None = None
        self._thaw_err: ThawError | None = None
        self._on_report: Callable[[FreezeReport], None] | None = None
        #: How far the steps got: "new", "preparing", "prepared", "window" (freeze() was called).
        self._stage = "new"
        #: The process this freeze belongs to: a child forked from it never acts on the window.
        self._pid = os.getpid()
        # One step at a time, whatever the threads: close() never frees what a thaw() uses.
        self._steps = threading.RLock()

    # -- steps --------------------------------------------------------------

    def prepare(self) -> None:
        """Lock, open the targets, arm the guardian, write the ledger, pre-flush."""
        with self._steps:
            self._refuse_if_closed("prepare()")
            if self._stage != "new":
                raise RuntimeError("prepare() runs once per Freeze: make a new Freeze for another freeze")
            self._stage = "preparing"
            self._prepare()
            self._stage = "prepared"

    def _prepare(self) -> None:
        opts = self.options
        run_dir = self._dir = RunDir.open(opts.run_dir)
        self._lock = FreezeLock(run_dir)
        ledger_mod.refuse_if_left(run_dir)  # a dead freeze's record of what may be frozen
        current = {m.mount_id: m for m in read_mountinfo()}
        for target in self.targets:
            self._fds.append(open_target(target, current))
        self._log_fd = self._open_log(run_dir)
        self._session = Session(self._fds, [t.mount.mount_point for t in self.targets])
        if self._groups is not None:
            self._session.set_parallel(self._groups)
        if opts.expedite_rcu:
            self._rcu.open(self._session)
        # Before the ledger names this process: what proves it is the ledger's holder.
        proof = self._proof = Proof()
        guardian = self._guardian = self._session.arm(
            opts.timeout_ns,
            opts.step_timeout_ns,
            report_fd=self._log_fd,
            keep_fd=self._lock.fd,
            proof_fd=proof.fd,
            ledger_dirfd=run_dir.fd,
            ledger_name=ledger_mod.LEDGER_NAME,
        )
        pid = os.getpid()
        ledger_mod.write(
            run_dir,
            ledger_mod.Ledger(
                run_id=self.run_id,
                pid=pid,
                pid_start=start_time(pid) or 0,
                guardian_pid=guardian,
                guardian_start=start_time(guardian) or 0,
                created_unix=time.time(),
                timeout_s=opts.timeout_s,
                rcu_expedited_restore=None if self._rcu.knob is None else self._rcu.knob.original.decode(),
                filesystems=tuple(
                    ledger_mod.LedgerEntry(t.mount.mount_point, t.mount.dev, t.mount.mount_id, t.mount.fstype)
                    for t in self.targets
                ),
                token=proof.token,
                proof_fd=proof.fd,
                boot_id=ledger_mod.current_boot_id(),
                release=ledger_mod.RELEASE_SIGNAL if opts.release_on_sigusr1 else ledger_mod.RELEASE_THAW,
            ),
        )
        self._ledger_written = True
        self._preflush = decide_now(opts.preflush, opts.preflush_policy)
        if self._preflush.flush:
            self._session.preflush()
        # Last thing before the first FIFREEZE; restored right after the last FITHAW.
        self._rcu.enable(self._session)

    def freeze(self) -> None:
        """FIFREEZE every target in order; on failure nothing stays frozen."""
        with self._steps:
            self._open_window("freeze()").freeze()
            self._mark(PROOF_FROZEN)

    def thaw(self) -> None:
        """FITHAW what is still frozen, last first. A failure is raised, never swallowed.

        With nothing frozen by this Freeze (before :meth:`freeze`, after a
        thaw, after :meth:`close`) it does nothing. The expedited RCU setting
        is put back here, not at :meth:`close`.
        """
        with self._steps:
            self._refuse_if_forked("thaw()")
            s = self._session
            if s is not None and self._stage == "window":
                try:
                    s.thaw()
                finally:
                    self._mark(PROOF_THAWED)
                    # The window is over: the machine-wide setting goes back now, not at close().
                    self._rcu.restore(s)

    def _mark(self, state: bytes) -> None:
        """Say in the proof whether this process holds its filesystems frozen (see quiesce.engine.proof).

        Only a holder that takes no SIGUSR1 needs it: ``quiesce thaw`` thaws
        for it, and only while it is frozen. A memory write, no filesystem.
        """
        proof = self._proof
        if proof is not None and not self.options.release_on_sigusr1:
            proof.mark(state)

    def cycle(self) -> None:
        """Freeze and thaw in one native call (a window with nothing inside)."""
        with self._steps:
            self._open_window("cycle()").cycle()

    def command_window(
        self, argv: Sequence[str], env: Sequence[str], **kwargs: Any
    ) -> tuple[Child, Supervision]:
        """Freeze, run a command, thaw, in one native call (see Session.window_command)."""
        with self._steps:
            return self._open_window("command_window()").window_command(argv, env, **kwargs)

    @property
    def run_dir(self) -> RunDir | None:
        """The open run directory, from :meth:`prepare` until the end of :meth:`close`."""
        return self._dir

    @property
    def guardian_fired(self) -> bool:
        """True once the guardian has thawed on its own (and put back what it restores)."""
        s = self._session
        if s is None:
            return False
        g = s.guardian()
        return g.reason is not None and g.done

    def remaining_ns(self) -> int | None:
        """Time left before the guardian's deadline, once freezing began."""
        s = self._session
        if s is None:
            return None
        deadline = s.guardian().deadline_ns
        return None if not deadline else deadline - now_ns()

    def report_to(self, on_report: Callable[[FreezeReport], None]) -> None:
        """Have :meth:`close` give its final report to ``on_report``, whoever calls it."""
        self._on_report = on_report

    def close(self, on_report: Callable[[FreezeReport], None] | None = None) -> None:
        """Thaw anything left, reap the guardian, drop the ledger and the lock.

        Safe to call at any point and more than once. A thaw failure is
        recorded in the report and re-raised after the cleanup.
        ``on_report`` (else the one of :meth:`report_to`) is given the final
        report while the ledger and the lock are still in place (``quiesce
        freeze --hold`` saves it there, so whoever sees the ledger gone also
        sees the outcome).
        """
        with self._steps:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._pid:
                # A forked child (leaving a with block, collecting its copy): its copies of the
                # fds go; the window, the shared session and the RCU setting stay its parent's.
                if self._session is not None:
                    self._session.forget()
                self._session = None
                self._rcu.drop()
                self._release_files()
                return
            self._close(on_report or self._on_report)

    def _close(self, on_report: Callable[[FreezeReport], None] | None) -> None:
        try:
            self._thaw_err = self._end_window()
            if self._thaw_err is not None:
                self.record_error(self._thaw_err)
            if on_report is not None:
                try:
                    on_report(self.report)
                except Exception as err:  # the caller's; the cleanup below must still run
                    self.report.warnings.append(f"saving the report failed: {err}")
        finally:
            # Whatever interrupted the above (a KeyboardInterrupt, an exception raised by a
            # signal handler): nothing stays frozen, and no fd, lock or ledger outlives the close.
            self._release()
        if self._thaw_err is not None:
            raise self._thaw_err

    def _end_window(self) -> ThawError | None:
        """Thaw, disarm, build the report; the thaw failure that must be raised, if any."""
        thaw_err: ThawError | None = None
        s = self._session
        if s is None or s.closed:
            return None  # never prepared, or freed by its own finalizer (a Freeze collected with it)
        try:
            s.thaw()
        except NotFrozenError:
            pass  # thawed by someone else mid-window: reported per filesystem
        except ThawError as err:
            thaw_err = err
        expedited = self._rcu.restore(s)
        with contextlib.suppress(QuiesceError):
            s.disarm()
        records, guardian = s.records(), s.guardian()
        self.report = build_report(self.run_id, self.targets, records, guardian, self._guardian)
        self.report.rcu_expedited = expedited
        self.report.preflush = self._preflush
        self.report.warnings.extend(self._warnings)
        for t in self.report.targets:
            if t.state == "thawed-externally":
                self.report.warnings.append(
                    f"{t.mount_point} was thawed by someone else while quiesce held it frozen"
                )
        return thaw_err or real_thaw_failure(self.targets, records)

    def _release(self) -> None:
        """Give back what this freeze holds: the session (thawed first), the ledger, the fds, the lock.

        The ledger stays when a thaw failed: it lists what `quiesce thaw` and recovery must thaw.
        """
        s, self._session = self._session, None
        if s is not None and not s.closed:
            try:
                # Thawed and disarmed already, unless the close was interrupted before.
                s.thaw()
            except NotFrozenError:
                pass
            except ThawError as err:
                self._thaw_err = self._thaw_err or err
                self.record_error(err)
            finally:
                with contextlib.suppress(QuiesceError):
                    s.disarm()
                s.close()
        try:
            if self._ledger_written and self._thaw_err is None and self._dir is not None:
                ledger_mod.remove(self._dir)
                self._ledger_written = False
        finally:
            self._release_files()

    def _release_files(self) -> None:
        """Put the RCU setting back; close the fds, the lock, the proof and the run directory."""
        self._rcu.restore(None)
        fds, self._fds = self._fds, []
        if self._log_fd >= 0:
            fds.append(self._log_fd)
            self._log_fd = -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._lock is not None:
            self._lock.release()
        if self._proof is not None:
            self._proof.close()
        if self._dir is not None:
            self._dir.close()

    def record_error(self, err: BaseException) -> None:
        """Note the error that ended the freeze in the report."""
        self.report.error = str(err)
        self.report.error_type = type(err).__name__

    def __enter__(self) -> Freeze:
        return self

    def __del__(self) -> None:
        # Dropped unclosed (an embedding tool's bug): thaw now, not at the guardian's
        # deadline, and give back the lock and the fds a long-running process would leak.
        if getattr(self, "_closed", True) or getattr(self, "_stage", "new") == "new":
            return
        try:
            warnings.warn(
                f"quiesce Freeze {self.run_id} was not closed: closing it now",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
        finally:
            self.close()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        finally:
            if exc is not None and self.report.error is None:
                self.record_error(exc)

    # -- internals --------------------------------------------------------

    def _refuse_if_closed(self, step: str) -> None:
        self._refuse_if_forked(step)
        if self._closed:
            raise RuntimeError(f"{step} on a closed Freeze: make a new Freeze for another freeze")

    def _refuse_if_forked(self, step: str) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"{step} in a process forked from the freeze's own (pid {self._pid}): "
                "only that process may act on its window"
            )

    def _require_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("prepare() first")
        return self._session

    def _open_window(self, step: str) -> Session:
        """The session, for the one window of this Freeze; RuntimeError, nothing done, for another."""
        self._refuse_if_closed(step)
        if self._stage == "window":
            raise RuntimeError(
                f"{step}: a Freeze freezes once (freeze(), cycle() or a command window); "
                "make a new Freeze for another window"
            )
        if self._stage != "prepared":
            raise RuntimeError(f"{step} before prepare() completed: call prepare() first")
        self._stage = "window"
        return self._require_session()

    def _open_log(self, run_dir: RunDir) -> int:
        # The guardian writes to this fd (csrc/guardian.c); it is opened here,
        # through the run directory's fd and never through a link.
        try:
            return run_dir.open_file(GUARDIAN_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except (OSError, QuiesceError):
            return -1
