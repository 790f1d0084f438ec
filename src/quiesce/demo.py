"""``quiesce demo``: the whole job on a sandbox, never on this machine's filesystems.

In a private mount namespace it builds an unfrozen "host" xfs holding two
disk images, loop-mounts them as "guest" filesystems (ext4 and xfs), and
starts a small application that keeps writing numbered records to both. Then
it freezes both guests, takes reflink copies of both disk images inside the
frozen window (a hypervisor's disk snapshot, in miniature), thaws, and proves
the snapshots are clean: each passes a read-only fsck, mounts read-only, and
the two are consistent with each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quiesce.freeze import FreezeOptions, FreezeReport, frozen
from quiesce.plan import make_plan
from quiesce.sandbox import LoopFs, Sandbox, SandboxError, enter_private_mount_namespace

# The application: appends "N\n" to the db journal, fsyncs, then the same to
# the log, fsyncs, forever. A consistent snapshot of both therefore has the
# log's last record equal to the db's, or one behind it.
APP = """
import os, sys
db = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
log = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    n += 1
    os.write(db, b"%d\\n" % n); os.fsync(db)
    os.write(log, b"%d\\n" % n); os.fsync(log)
"""


@dataclass
class SnapshotCheck:
    """What one snapshot image looked like after the run."""

    image: str
    fstype: str
    fsck_ok: bool
    fsck_output: str
    last_record: int | None


@dataclass
class DemoResult:
    """The demo's outcome: the freeze report, the snapshot copy time and the checks."""

    report: dict[str, Any]
    snapshot_ns: int
    records_before: int
    records_after: int
    snapshots: list[SnapshotCheck] = field(default_factory=list)
    consistent: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def _count(path: Path) -> int:
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n")


def _last_record(path: Path) -> int | None:
    lines = path.read_bytes().split(b"\n")
    complete = [x for x in lines[:-1] if x.strip()]
    return int(complete[-1]) if complete else None


def _fsck(fstype: str, image: Path) -> tuple[bool, str]:
    argv = ["e2fsck", "-fn", str(image)] if fstype == "ext4" else ["xfs_repair", "-n", str(image)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


def _mount(fstype: str, image: Path, mnt: Path, *extra: str) -> None:
    # Copies of one xfs share its UUID; nouuid lets them mount side by side.
    options = ["loop", *extra] + (["nouuid"] if fstype == "xfs" else [])
    subprocess.run(["mount", "-t", fstype, "-o", ",".join(options), str(image), str(mnt)], check=True)


def _check_snapshot(guest: LoopFs, image: Path, name: str, mnt: Path) -> SnapshotCheck:
    """Restore a snapshot as a user would and check it.

    The restore is a reflink copy of the snapshot (the snapshot itself stays
    untouched), mounted once read-write so the filesystem replays its journal
    as on any restore, then checked with a read-only fsck and read.
    """
    restored = image.with_name(image.stem + "-restore.img")
    subprocess.run(["cp", "--reflink=always", str(image), str(restored)], check=True)
    mnt.mkdir()
    _mount(guest.fstype, restored, mnt)
    subprocess.run(["umount", str(mnt)], check=True)
    ok, out = _fsck(guest.fstype, restored)
    _mount(guest.fstype, restored, mnt, "ro")
    try:
        last = _last_record(mnt / name)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    return SnapshotCheck(str(image), guest.fstype, ok, out, last)


def run_demo(timeout_s: float = 10.0) -> DemoResult:
    """Build the sandbox, run the application, freeze + snapshot + thaw, check, tear down."""
    if os.geteuid() != 0:
        raise SandboxError("the demo needs root: it makes loop devices and mounts in a private namespace")
    enter_private_mount_namespace()
    with Sandbox() as sb:
        host = sb.add("xfs", 1024, name="host")
        db = sb.add("ext4", 128, on=host, name="db")
        logs = sb.add("xfs", 300, on=host, name="logs")
        db_file, log_file = db.mount_point / "journal", logs.mount_point / "log"
        app = subprocess.Popen([sys.executable, "-c", APP, str(db_file), str(log_file)])
        try:
            time.sleep(0.5)
            plan = make_plan([str(db.mount_point), str(logs.mount_point)], vmbackup_conf=None)
            with tempfile.TemporaryDirectory(prefix="quiesce-demo-run-") as run_dir:
                opts = FreezeOptions(timeout_s=timeout_s, run_dir=run_dir)
                with frozen(plan.targets, opts) as f:
                    started = time.monotonic_ns()
                    for guest in (db, logs):
                        copy = host.mount_point / f"snap-{guest.image.name}"
                        subprocess.run(["cp", "--reflink=always", str(guest.image), str(copy)], check=True)
                    snapshot_ns = time.monotonic_ns() - started
                report: FreezeReport = f.report
            before = _count(db_file)
            time.sleep(0.3)
            after = _count(db_file)
        finally:
            app.send_signal(signal.SIGTERM)
            app.wait(timeout=10)
        result = DemoResult(report.to_dict(), snapshot_ns, before, after)
        for guest, name in ((db, "journal"), (logs, "log")):
            image = host.mount_point / f"snap-{guest.image.name}"
            result.snapshots.append(_check_snapshot(guest, image, name, sb.base / f"snap-{guest.fstype}"))
        db_last, log_last = (s.last_record for s in result.snapshots)
        result.consistent = (
            all(s.fsck_ok for s in result.snapshots)
            and db_last is not None
            and log_last is not None
            and 0 <= db_last - log_last <= 1
        )
        return result
