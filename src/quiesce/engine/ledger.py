"""The ledger: which filesystems a freeze owns, written before the first FIFREEZE.

``RUN_DIR/ledger.json`` names the freezing process (pid and start time), its
guardian, the proof both hold (see :mod:`quiesce.engine.proof`), the boot it was
written in, and every filesystem it is about to freeze (mount point,
``maj:min``, mount ID, fs type). It is removed after the thaw. When both the
freezing process and its guardian are gone and the ledger remains, ``quiesce
thaw`` and ``quiesce recover`` thaw exactly the filesystems it lists whose
mount ID and device still match, and nothing else. Until then no new
freeze starts (:func:`refuse_if_left`): it would overwrite that record.

A ledger is acted on only if it is provably quiesce's own: read through the
checked run directory's fd (:class:`quiesce.engine.rundir.RunDir`), a regular file
owned by root with mode 600 and one link, and every field valid (types,
ranges, an RCU value of ``0`` or ``1``, absolute mount points, ``maj:min``
devices, no unknown key). Anything else is a :class:`LedgerError` and
nothing is done. A ledger from an earlier boot names nothing that can still
be frozen.

A live holder is released as its ledger's ``release`` says: ``signal``, a
quiesce command (``run``, ``freeze``), which ends its window on SIGUSR1;
``thaw``, any other process (a program using the Python API, ``quiesce
qga``, ``quiesce agent``, ``quiesce bench``), whose signal dispositions are
its own: SIGUSR1 would kill it, so ``quiesce thaw`` thaws the listed
filesystems itself and the holder finds them thawed when it ends its window.

The ledger records intent, not outcome: nothing is written while filesystems
are frozen (the run directory may sit on one of them). A filesystem that
another tool froze first makes FIFREEZE fail with EBUSY; the freeze then rolls
back and removes the ledger at once, so a stale ledger naming it would need
the freezing process and its guardian to die within that rollback.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from quiesce.engine.rundir import RunDir
from quiesce.errors import LedgerError, UntrustedFileError

LEDGER_NAME = "ledger.json"
VERSION = 2
BOOT_ID = "/proc/sys/kernel/random/boot_id"

#: The kernel's PID_MAX_LIMIT: no pid is larger.
PID_MAX = 1 << 22
_DEV = re.compile(r"\d{1,10}:\d{1,10}")
_FSTYPE = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
#: A run ID as a ledger takes it (a FreezeOptions run_id is checked against it).
RUN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_BOOT = re.compile(r"[0-9a-f-]{36}")

#: How ``quiesce thaw`` releases a live holder (see the module docstring).
RELEASE_SIGNAL = "signal"
RELEASE_THAW = "thaw"


# NamedTuples, not dataclasses: `quiesce thaw` reads the ledger while filesystems are frozen,
# and the dataclasses module (with inspect) is the slowest import it would need.
class LedgerEntry(NamedTuple):
    """One filesystem a freeze is about to freeze."""

    mount_point: str
    dev: str
    mount_id: int
    fstype: str


class Ledger(NamedTuple):
    """The record of one freeze in progress."""

    run_id: str
    pid: int
    pid_start: int
    guardian_pid: int
    guardian_start: int
    created_unix: float
    timeout_s: float
    filesystems: tuple[LedgerEntry, ...] = ()
    #: The rcu_expedited value to put back if the freeze expedited RCU.
    rcu_expedited_restore: str | None = None
    #: The proof the holder and its guardian keep open (quiesce.engine.proof.Proof).
    token: str = ""
    proof_fd: int = -1
    boot_id: str = ""
    #: RELEASE_SIGNAL or RELEASE_THAW. A ledger written before this field was
    #: quiesce's own command's (the only holders then): read as RELEASE_SIGNAL.
    release: str = RELEASE_THAW
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        d = self._asdict()
        d["filesystems"] = [e._asdict() for e in self.filesystems]
        return d

    @classmethod
    def from_dict(cls, d: object) -> Ledger:
        """Rebuild and validate a ledger read from disk; raises LedgerError on any bad field."""
        if not isinstance(d, dict):
            raise LedgerError("malformed ledger: not a JSON object")
        expected = set(cls._fields)
        unknown = set(d) - expected
        if unknown:
            raise LedgerError(f"malformed ledger: unknown keys {sorted(unknown)}")
        if d.get("version") != VERSION:
            version = d.get("version")
            raise LedgerError(f"unsupported ledger version {version!r} (this quiesce writes {VERSION})")
        fss = _get(d, "filesystems", list)
        if not fss:
            raise LedgerError("malformed ledger: no filesystems")
        release = d.get("release", RELEASE_SIGNAL)
        if release not in (RELEASE_SIGNAL, RELEASE_THAW):
            raise LedgerError(f"malformed ledger: release must be 'signal' or 'thaw', not {release!r}")
        rcu = d.get("rcu_expedited_restore")
        if rcu not in (None, "0", "1"):
            raise LedgerError(f"malformed ledger: rcu_expedited_restore must be '0' or '1', not {rcu!r}")
        return cls(
            run_id=_text(d, "run_id", RUN_ID),
            pid=_int(d, "pid", 1, PID_MAX),
            pid_start=_int(d, "pid_start", 0, 2**63 - 1),
            guardian_pid=_int(d, "guardian_pid", 1, PID_MAX),
            guardian_start=_int(d, "guardian_start", 0, 2**63 - 1),
            created_unix=_number(d, "created_unix", 0.0, 2.0**40),
            timeout_s=_number(d, "timeout_s", 1e-9, 2.0**32),
            filesystems=tuple(_entry(e) for e in fss),
            rcu_expedited_restore=rcu,
            token=_text(d, "token", _TOKEN),
            proof_fd=_int(d, "proof_fd", 0, 1 << 30),
            boot_id=_text(d, "boot_id", _BOOT),
            release=release,
        )


_T = TypeVar("_T")


def _get(d: dict[str, Any], key: str, kind: type[_T]) -> _T:
    if key not in d:
        raise LedgerError(f"malformed ledger: {key} is missing")
    value = d[key]
    # bool is an int to Python, never to the ledger.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LedgerError(f"malformed ledger: {key} must be {kind.__name__}, not {value!r}")
    return value


def _int(d: dict[str, Any], key: str, low: int, high: int) -> int:
    value = _get(d, key, int)
    if not low <= value <= high:
        raise LedgerError(f"malformed ledger: {key} {value} is outside {low}..{high}")
    return value


def _number(d: dict[str, Any], key: str, low: float, high: float) -> float:
    value = d.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise LedgerError(f"malformed ledger: {key} must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise LedgerError(f"malformed ledger: {key} {value} is outside {low}..{high}")
    return value


def _text(d: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = _get(d, key, str)
    if not pattern.fullmatch(value):
        raise LedgerError(f"malformed ledger: {key} {value!r} is not of the expected form")
    return value


def _entry(e: object) -> LedgerEntry:
    if not isinstance(e, dict) or set(e) != {"mount_point", "dev", "mount_id", "fstype"}:
        raise LedgerError(f"malformed ledger: bad filesystem entry {e!r}")
    mount_point = _get(e, "mount_point", str)
    if not os.path.isabs(mount_point) or "\0" in mount_point or len(mount_point) > 4096:
        raise LedgerError(f"malformed ledger: mount point {mount_point!r} is not an absolute path")
    return LedgerEntry(
        mount_point=mount_point,
        dev=_text(e, "dev", _DEV),
        mount_id=_int(e, "mount_id", 0, 2**63 - 1),
        fstype=_text(e, "fstype", _FSTYPE),
    )


def current_boot_id() -> str:
    """This boot's random ID (the kernel's ``boot_id``)."""
    with open(BOOT_ID) as f:
        return f.read().strip()


@contextmanager
def _dir(run_dir: RunDir | str, create: bool) -> Iterator[RunDir | None]:
    if isinstance(run_dir, RunDir):
        yield run_dir
        return
    opened = RunDir.open(run_dir) if create else RunDir.open_existing(run_dir)
    try:
        yield opened
    finally:
        if opened is not None:
            opened.close()


def write(run_dir: RunDir | str, ledger: Ledger) -> str:
    """Write the ledger atomically (random temp name, fsync, rename); returns its path."""
    data = json.dumps(ledger.to_dict(), indent=1).encode()
    with _dir(run_dir, create=True) as d:
        assert d is not None
        try:
            d.write(LEDGER_NAME, data, 0o600)
        except OSError as err:
            raise LedgerError(f"cannot write the ledger {d.path_of(LEDGER_NAME)}: {err.strerror}") from err
        return d.path_of(LEDGER_NAME)


def read(run_dir: RunDir | str) -> Ledger | None:
    """The ledger of ``run_dir``, or None when there is none (or no run directory).

    Raises :class:`LedgerError` when the file is not provably quiesce's
    (see the module docstring) or any field is invalid.
    """
    with _dir(run_dir, create=False) as d:
        if d is None:
            return None
        path = d.path_of(LEDGER_NAME)
        try:
            raw = d.read_trusted(LEDGER_NAME)
        except UntrustedFileError as err:
            raise LedgerError(f"the ledger is not trusted, nothing done: {err}") from err
        except OSError as err:
            raise LedgerError(f"cannot read the ledger {path}: {err.strerror}") from err
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise LedgerError(f"{path}: not valid JSON ({err})") from err
    try:
        return Ledger.from_dict(data)
    except LedgerError as err:
        raise LedgerError(f"{path}: {err}; nothing done") from err


def refuse_if_left(run_dir: RunDir) -> None:
    """Raise :class:`LedgerError` if a ledger is already there; call under the freeze lock, first.

    Under the lock no freeze or guardian that wrote a ledger lives: a ledger
    found now is a dead freeze's (its holder and guardian killed, or a FITHAW
    that failed), and it is the only record of what may still be frozen and
    of the ``rcu_expedited`` value to put back. A new freeze would overwrite
    it and remove its own at the end: ``quiesce status`` would show nothing
    frozen, ``quiesce thaw`` thaw nothing. So nothing is frozen until
    ``quiesce thaw`` or ``quiesce recover`` has dealt with it. A ledger of
    an earlier boot names nothing frozen now: it is removed.
    """
    try:
        led = read(run_dir)
    except LedgerError as err:
        raise LedgerError(
            f"a freeze's ledger is already there and cannot be used ({err}); nothing was frozen: "
            f"remove {run_dir.path_of(LEDGER_NAME)} once nothing it lists is frozen"
        ) from err
    if led is None:
        return
    if led.boot_id != current_boot_id():
        remove(run_dir)
        return
    mounts = ", ".join(e.mount_point for e in led.filesystems)
    raise LedgerError(
        f"the freeze {led.run_id} (pid {led.pid}) ended without thawing or dropping its ledger, "
        f"which still lists {mounts}: they may still be frozen; nothing was frozen: "
        "run `quiesce thaw` (or `quiesce recover`) first"
    )


def remove(run_dir: RunDir | str) -> None:
    """Remove the ledger if it exists."""
    with _dir(run_dir, create=False) as d:
        if d is not None:
            d.unlink(LEDGER_NAME)


#: How many run IDs this process has made (next() is atomic: threads may ask at once).
_MADE = itertools.count(1)


def new_run_id() -> str:
    """A run ID: UTC time plus pid, and a sequence number after a process's first; unique on one machine.

    A long-lived process (``quiesce qga``, ``quiesce agent``, a program using
    the API) can start two runs within one second: the number tells them apart.
    """
    made = next(_MADE)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    return stamp if made == 1 else f"{stamp}.{made}"


#: The pid in a run ID (new_run_id): "-PID" or "-PID.N" at its end.
_RUN_PID = re.compile(r"-(\d+)(?:\.\d+)?$")


def run_pid(name: str) -> int | None:
    """The pid of the process that made the run ID ending ``name`` (a cgroup's, a directory's), or None."""
    m = _RUN_PID.search(name)
    return int(m.group(1)) if m else None
