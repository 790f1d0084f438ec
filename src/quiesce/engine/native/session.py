"""One freeze session in native memory: FIFREEZE/FITHAW, the guardian, the command window."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quiesce.closeable import Closeable
from quiesce.engine.native.core import (
    GUARD_REASONS,
    MAX_FILESYSTEMS,
    STATE_NAMES,
    ffi,
    freeze_error,
    lib,
    start_error,
    thaw_error,
)
from quiesce.engine.native.spawn import Child, Supervision, spawn_request, wait_request
from quiesce.errors import FreezeError, FreezeTimeoutError, GuardianError, QuiesceOSError, ThawError


@dataclass(frozen=True)
class FsRecord:
    """What the native layer recorded for one filesystem (times in CLOCK_MONOTONIC ns)."""

    index: int
    state: str
    flush_errno: int
    flush_start_ns: int
    flush_end_ns: int
    freeze_errno: int
    freeze_start_ns: int
    freeze_end_ns: int
    thaw_errno: int
    thaw_start_ns: int
    thaw_end_ns: int


@dataclass(frozen=True)
class GuardianRecord:
    """What the guardian did: ``reason`` is None when it never had to act.

    ``reason`` is set as soon as the guardian starts to act; ``done`` once it
    has thawed everything it held and restored what it restores.
    """

    reason: str | None
    fired_ns: int
    deadline_ns: int
    exit_status: int | None
    done: bool = True


class Session(Closeable):
    """One freeze of a fixed, ordered set of open filesystems.

    The fds stay owned by the caller and must stay open until :meth:`close`.
    ``labels`` (mount points) name the filesystems in exceptions.
    """

    def __init__(self, fds: Sequence[int], labels: Sequence[str]) -> None:
        if len(fds) != len(labels):
            raise ValueError("one label per fd")
        if not 0 < len(fds) <= MAX_FILESYSTEMS:
            raise ValueError(f"between 1 and {MAX_FILESYSTEMS} filesystems, not {len(fds)}")
        self._labels = tuple(labels)
        self._pid = os.getpid()
        raw = lib.qz_session_new(ffi.new("int[]", list(fds)), len(fds))
        if raw == ffi.NULL:
            err = ffi.errno
            raise QuiesceOSError(err, "allocating the shared freeze session")
        self._s = raw

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Free the shared mapping. The guardian must have been disarmed."""
        if self._s is not None:
            lib.qz_session_free(self._s)
            self._s = None

    def forget(self) -> None:
        """In a forked child: drop the session without a native call (it is the parent's).

        Its thread pool exists only in the parent, and a thaw or disarm here
        would end the parent's window and release its guardian.
        """
        self._s = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` freed the session."""
        return self._s is None

    def __del__(self) -> None:
        raw = getattr(self, "_s", None)
        if raw is None:
            return
        if os.getpid() != self._pid:
            self.forget()  # a forked child's copy: the parent's window is not its own
            return
        try:
            warnings.warn("quiesce Session was not closed", ResourceWarning, stacklevel=1)
        finally:
            # Dropped while it may hold a freeze: thaw and release the guardian before the memory goes.
            lib.qz_thaw(raw)
            if int(raw.guardian_pid) > 0:
                lib.qz_guardian_disarm(raw, 5_000_000_000)
            self.close()

    def _raw(self) -> Any:
        if self._s is None:
            raise ValueError("session is closed")
        return self._s

    # -- the steps ----------------------------------------------------------

    def preflush(self) -> int:
        """``syncfs()`` every filesystem in parallel; returns the first errno or 0.

        A failed flush is not fatal: FIFREEZE flushes again inside the window.
        """
        return -int(lib.qz_preflush(self._raw()))

    def arm(
        self,
        timeout_ns: int,
        step_timeout_ns: int = 0,
        *,
        report_fd: int = -1,
        keep_fd: int = -1,
        proof_fd: int = -1,
        ledger_dirfd: int = -1,
        ledger_name: str | None = None,
    ) -> int:
        """Start the guardian (its own program, ``quiesce-helper``); returns its pid.

        ``timeout_ns`` bounds the window from the first FIFREEZE,
        ``step_timeout_ns`` (0 = none) each FIFREEZE call. The guardian writes
        one line per action to ``report_fd`` and keeps ``keep_fd`` (the lock)
        and ``proof_fd`` (what proves it belongs to this freeze) open while it
        lives. When it thaws after the orchestrator died it removes
        ``ledger_name`` from the directory ``ledger_dirfd`` (never a path).
        """
        if timeout_ns <= 0:
            raise ValueError("the guardian needs a positive timeout")
        if ledger_name is not None and (ledger_dirfd < 0 or "/" in ledger_name):
            raise ValueError("the ledger is a plain name in an open directory")
        name = ffi.NULL if ledger_name is None else ledger_name.encode()
        rc = int(
            lib.qz_guardian_arm(
                self._raw(), timeout_ns, step_timeout_ns, report_fd, keep_fd, proof_fd, ledger_dirfd, name
            )
        )
        if rc != 0:
            raise start_error(GuardianError, rc, "arming the guardian")
        return int(self._raw().guardian_pid)

    def set_parallel(self, groups: Sequence[int]) -> None:
        """Freeze neighbours with the same group number at once (one thread each)."""
        s = self._raw()
        if len(groups) != int(s.n):
            raise ValueError("one group per filesystem")
        for i, g in enumerate(groups):
            s.fs[i].group = g
        s.parallel = 1

    def restore_on_orphan(self, fd: int, value: bytes) -> None:
        """Before :meth:`arm`: the guardian writes ``value`` to ``fd`` when it ends the window.

        That is after it thawed, because this process died or a deadline passed.
        """
        rc = int(lib.qz_guardian_restore_on_orphan(self._raw(), fd, value, len(value)))
        if rc != 0:
            raise GuardianError(-rc, "setting the guardian's restore action")

    def cancel_restore(self) -> None:
        """Drop the restore action of :meth:`restore_on_orphan` (the setting was never changed).

        The guardian reads it from the shared session only when it acts, so
        clearing it here takes effect after :meth:`arm` too.
        """
        s = self._raw()
        s.restore_len = 0
        s.restore_fd = -1

    def freeze(self) -> None:
        """FIFREEZE every filesystem in order; on failure the frozen ones are thawed."""
        rc = int(lib.qz_freeze(self._raw()))
        if rc != 0:
            raise self._freeze_failure(-rc)

    def thaw(self) -> None:
        """FITHAW, in reverse order, everything this session still holds."""
        rc = int(lib.qz_thaw(self._raw()))
        if rc != 0:
            raise self._thaw_failure(-rc)

    def cycle(self) -> None:
        """Freeze then thaw at once, in one native call: nothing in between."""
        rc = int(lib.qz_cycle(self._raw()))
        if rc != 0:
            if self.failed_index is not None:
                raise self._freeze_failure(-rc)
            raise self._thaw_failure(-rc)

    def window_command(
        self,
        argv: Sequence[str],
        env: Sequence[str],
        *,
        path: str,
        cgroup_fd: int,
        stdin_fd: int,
        stdout_fd: int,
        stderr_fd: int,
        out_fd: int,
        err_fd: int,
        timeout_ns: int,
        grace_ns: int,
        kill_wait_ns: int,
        out_cap: int = 65536,
        err_cap: int = 65536,
        release_fd: int = -1,
        release_sig: int = 0,
    ) -> tuple[Child, Supervision]:
        """Freeze, run ``argv`` to ``timeout_ns``, thaw: one native call, no Python inside.

        Raises the freeze error (nothing left frozen) if freezing failed and
        the spawn error if the command could not start, after the native call
        returned. A thaw failure is not raised here, so the command's outcome
        is never lost: it is in :meth:`records` (and ``Freeze.close`` raises
        it; an external thaw, EINVAL, is reported per filesystem). ``release_fd`` is
        a non-blocking signal wake-up pipe (``signal.set_wakeup_fd``): a
        ``release_sig`` byte on it ends the window at once, the command still
        running (``result().released``); the caller kills it.
        """
        req, keep = spawn_request(argv, env, path, -1, cgroup_fd, stdin_fd, stdout_fd, stderr_fd)
        bufs = wait_request(
            0, grace_ns, kill_wait_ns, 0, cgroup_fd, out_fd, err_fd, out_cap, err_cap, release_fd, release_sig
        )
        res = ffi.new("struct qz_window_res *")
        lib.qz_window_command(self._raw(), req, bufs[2], timeout_ns, res)
        del keep
        if res.freeze_rc != 0:
            raise self._freeze_failure(-int(res.freeze_rc))
        if res.spawn_rc != 0:
            raise QuiesceOSError(-int(res.spawn_rc), "starting the snapshot command", path)
        child = Child(ffi.addressof(res, "child"), owner=res)
        # A failed wait (wait_rc) leaves the command unfinished: the caller kills it.
        return child, Supervision._adopt(child, bufs, ffi.addressof(res, "wait"))

    def disarm(self, wait_ns: int = 5_000_000_000) -> None:
        """Release the guardian and reap it (it thaws nothing once told the window ended)."""
        rc = int(lib.qz_guardian_disarm(self._raw(), wait_ns))
        if rc != 0:
            raise GuardianError(-rc, "disarming the guardian")

    # -- results ----------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of filesystems in the session."""
        return int(self._raw().n)

    @property
    def failed_index(self) -> int | None:
        """Index of the FIFREEZE that failed (or was overtaken by the guardian)."""
        i = int(self._raw().failed_index)
        return None if i < 0 else i

    @property
    def guardian_pid(self) -> int | None:
        """The armed guardian's pid, None once reaped or never armed."""
        pid = int(self._raw().guardian_pid)
        return None if pid <= 0 else pid

    def records(self) -> list[FsRecord]:
        """The per-filesystem record, in freeze order."""
        s = self._raw()
        out = []
        for i in range(int(s.n)):
            fs = s.fs[i]
            out.append(
                FsRecord(
                    index=i,
                    state=STATE_NAMES.get(int(lib.qz_fs_state(s, i)), "unknown"),
                    flush_errno=int(fs.flush_errno),
                    flush_start_ns=int(fs.flush_start_ns),
                    flush_end_ns=int(fs.flush_end_ns),
                    freeze_errno=int(fs.freeze_errno),
                    freeze_start_ns=int(fs.freeze_start_ns),
                    freeze_end_ns=int(fs.freeze_end_ns),
                    thaw_errno=int(fs.thaw_errno),
                    thaw_start_ns=int(fs.thaw_start_ns),
                    thaw_end_ns=int(fs.thaw_end_ns),
                )
            )
        return out

    def guardian(self) -> GuardianRecord:
        """What the guardian did."""
        s = self._raw()
        status = int(s.guardian_status)
        claim = int(s.guard_claim)  # first: the reason is published only after the claim
        published = int(s.guard_reason)
        return GuardianRecord(
            reason=GUARD_REASONS.get(published or claim, "unknown"),
            fired_ns=int(s.guard_fired_ns),
            deadline_ns=int(s.deadline_ns),
            exit_status=None if status < 0 else status,
            done=published != 0 or claim == 0,
        )

    def _freeze_failure(self, err: int) -> FreezeError:
        i = self.failed_index
        label = None if i is None else self._labels[i]
        if err == errno.ETIMEDOUT:
            reason = self.guardian().reason
            what = {
                "blocked-freeze": "blocked past its own deadline; the guardian thawed the rest",
                "deadline": "the window deadline passed while freezing; the guardian thawed",
            }.get(reason or "", "overtaken by the guardian")
            return FreezeTimeoutError(err, f"FIFREEZE ({what})", label)
        if i is not None:
            err = int(self._raw().fs[i].freeze_errno) or err
        return freeze_error(err, label)

    def _thaw_failure(self, err: int) -> ThawError:
        for rec in reversed(self.records()):
            if rec.thaw_errno == err:
                return thaw_error(err, self._labels[rec.index])
        return thaw_error(err, None)
