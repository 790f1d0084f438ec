"""The ledger: which filesystems a freeze owns, written before the first FIFREEZE.

``RUN_DIR/ledger.json`` names the freezing process (pid and start time), its
guardian, and every filesystem it is about to freeze (mount point, ``maj:min``,
mount ID, fs type). It is removed after the thaw. When both the freezing
process and its guardian are gone and the ledger remains, ``quiesce thaw`` and
``quiesce recover`` thaw exactly the filesystems it lists whose mount ID and
device still match, and nothing else.

The ledger records intent, not outcome: nothing is written while filesystems
are frozen (the run directory may sit on one of them). A filesystem that
another tool froze first makes FIFREEZE fail with EBUSY; the freeze then rolls
back and removes the ledger at once, so a stale ledger naming it would need
the freezing process and its guardian to die within that rollback.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from quiesce.errors import LedgerError

LEDGER_NAME = "ledger.json"
VERSION = 1


@dataclass(frozen=True)
class LedgerEntry:
    """One filesystem a freeze is about to freeze."""

    mount_point: str
    dev: str
    mount_id: int
    fstype: str


@dataclass(frozen=True)
class Ledger:
    """The record of one freeze in progress."""

    run_id: str
    pid: int
    pid_start: int | None
    guardian_pid: int | None
    guardian_start: int | None
    created_unix: float
    timeout_s: float
    filesystems: tuple[LedgerEntry, ...] = field(default_factory=tuple)
    #: The rcu_expedited value to put back if the freeze expedited RCU.
    rcu_expedited_restore: str | None = None
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        d = asdict(self)
        d["filesystems"] = [asdict(e) for e in self.filesystems]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        """Rebuild a ledger read from disk; raises LedgerError on a malformed one."""
        try:
            return cls(
                run_id=str(d["run_id"]),
                pid=int(d["pid"]),
                pid_start=None if d["pid_start"] is None else int(d["pid_start"]),
                guardian_pid=None if d["guardian_pid"] is None else int(d["guardian_pid"]),
                guardian_start=None if d["guardian_start"] is None else int(d["guardian_start"]),
                created_unix=float(d["created_unix"]),
                timeout_s=float(d["timeout_s"]),
                filesystems=tuple(
                    LedgerEntry(
                        mount_point=str(e["mount_point"]),
                        dev=str(e["dev"]),
                        mount_id=int(e["mount_id"]),
                        fstype=str(e["fstype"]),
                    )
                    for e in d["filesystems"]
                ),
                rcu_expedited_restore=d.get("rcu_expedited_restore"),
                version=int(d.get("version", VERSION)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LedgerError(f"malformed ledger: {err!r}") from err

    @property
    def deadline_unix(self) -> float:
        """When the guardian thaws at the latest (wall clock, approximate)."""
        return self.created_unix + self.timeout_s


def ledger_path(run_dir: str) -> str:
    """Where the ledger of ``run_dir`` lives."""
    return os.path.join(run_dir, LEDGER_NAME)


def write(run_dir: str, ledger: Ledger) -> str:
    """Write the ledger atomically (temp file, fsync, rename); returns its path."""
    path = ledger_path(run_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    data = json.dumps(ledger.to_dict(), indent=1).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise LedgerError(f"cannot write the ledger {path}: {err.strerror}") from err
    return path


def read(run_dir: str) -> Ledger | None:
    """The ledger of ``run_dir``, or None when there is none."""
    path = ledger_path(run_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LedgerError(f"cannot read the ledger {path}: {err.strerror}") from err
    try:
        return Ledger.from_dict(json.loads(raw))
    except ValueError as err:
        raise LedgerError(f"{path}: not valid JSON ({err})") from err


def remove(run_dir: str) -> None:
    """Remove the ledger if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ledger_path(run_dir))


def new_run_id() -> str:
    """A run ID: UTC time plus pid, sortable and unique on one machine."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
