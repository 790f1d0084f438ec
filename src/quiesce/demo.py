"""``quiesce demo``: the whole job on a sandbox, never on this machine's filesystems.

In a private mount namespace it builds an unfrozen "host" xfs holding two
disk images, loop-mounts them as "guest" filesystems (ext4 and xfs), and
starts a small application that keeps writing numbered records to both.
Then it runs ``quiesce run`` with an Azure-style config: the pre-script asks
the application for a checkpoint (it writes ``checkpoint N`` to both files,
fsyncs and pauses), both guests are frozen, a snapshot command takes reflink
copies of both disk images inside the window (a hypervisor's disk snapshot,
in miniature), the guests are thawed, and the post-script resumes the
application. Finally it restores both snapshots (journal replay, as on any
restore), checks them with a read-only fsck, and shows that both end at the
same checkpoint: application-consistent, and consistent with each other.

The config and scripts live in a root-only directory under /run, as
quiesce's permission checks require.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quiesce.runner.run import run
from quiesce.runner.types import RunOptions, RunResult
from quiesce.sandbox import LoopFs, Sandbox, SandboxError, enter_private_mount_namespace

# The application: appends "N" records to the db journal and the log, fsync
# after each. On SIGUSR1 (the pre-script) it writes "checkpoint N" to both,
# fsyncs, reports "paused" and waits for SIGUSR2 (the post-script).
APP = r"""
import os, signal, sys
db = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
log = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
paused_flag = sys.argv[3]
state = {"checkpoint": False}
signal.signal(signal.SIGUSR1, lambda *a: state.update(checkpoint=True))
signal.signal(signal.SIGUSR2, lambda *a: None)
n = 0
while True:
    n += 1
    for fd in (db, log):
        os.write(fd, b"%d\n" % n); os.fsync(fd)
    if state["checkpoint"]:
        state["checkpoint"] = False
        for fd in (db, log):
            os.write(fd, b"checkpoint %d\n" % n); os.fsync(fd)
        open(paused_flag, "w").close()
        signal.sigwait([signal.SIGUSR2])
        os.unlink(paused_flag)
"""

PRE = """#!/bin/sh
# Ask the application for a checkpoint and wait until it has paused.
kill -USR1 "$(cat {pidfile})"
while [ ! -e {paused} ]; do sleep 0.01; done
echo "application paused at a checkpoint"
"""

POST = """#!/bin/sh
# Resume the application, whatever happened to the snapshot.
kill -USR2 "$(cat {pidfile})"
echo "application resumed (snapshot: $QUIESCE_SNAPSHOT)"
"""


@dataclass
class SnapshotCheck:
    """What one snapshot image looked like after the run."""

    image: str
    fstype: str
    fsck_ok: bool
    fsck_output: str
    last_line: str | None


@dataclass
class DemoResult:
    """The demo's outcome: the run's result, the application's progress and the snapshot checks."""

    run: dict[str, Any]
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


def _last_line(path: Path) -> str | None:
    lines = path.read_bytes().decode().split("\n")
    complete = [x for x in lines[:-1] if x.strip()]
    return complete[-1] if complete else None


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
        last = _last_line(mnt / name)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    return SnapshotCheck(str(image), guest.fstype, ok, out, last)


def _write_private(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    os.chmod(path, mode)


def _demo_config(base: Path, host: LoopFs, guests: list[LoopFs], pidfile: Path, timeout_s: float) -> Path:
    paused = base / "paused"
    _write_private(base / "pre.sh", PRE.format(pidfile=pidfile, paused=paused), 0o700)
    _write_private(base / "post.sh", POST.format(pidfile=pidfile), 0o700)
    copies = " && ".join(
        f"cp --reflink=always {g.image} {host.mount_point / ('snap-' + g.image.name)}" for g in guests
    )
    (base / "hooks.d").mkdir(mode=0o755)
    config = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": str(base / "pre.sh"),
        "postScriptLocation": str(base / "post.sh"),
        "preScriptParams": [],
        "postScriptParams": [],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 30,
        "continueBackupOnFailure": False,
        "fsFreezeEnabled": True,
        "quiesce": {
            "targets": [str(g.mount_point) for g in guests],
            "freezeTimeoutSeconds": timeout_s,
            "hookDirectory": str(base / "hooks.d"),
            "expediteRcu": True,
            "snapshot": {
                "mode": "command",
                "argv": ["/bin/sh", "-c", copies],
                "timeoutSeconds": timeout_s / 2,
            },
        },
    }
    path = base / "VMSnapshotScriptPluginConfig.json"
    _write_private(path, json.dumps(config, indent=1), 0o600)
    return path


def run_demo(timeout_s: float = 10.0) -> tuple[DemoResult, RunResult]:
    """Build the sandbox, run the application, run quiesce, check the snapshots, tear down."""
    if os.geteuid() != 0:
        raise SandboxError("the demo needs root: it makes loop devices and mounts in a private namespace")
    enter_private_mount_namespace()
    base = Path(tempfile.mkdtemp(prefix="quiesce-demo-", dir="/run"))
    try:
        with Sandbox() as sb:
            host = sb.add("xfs", 1024, name="host")
            db = sb.add("ext4", 128, on=host, name="db")
            logs = sb.add("xfs", 300, on=host, name="logs")
            db_file, log_file = db.mount_point / "journal", logs.mount_point / "log"
            pidfile = base / "app.pid"
            # -P: nothing imported from the current directory, as root.
            app = subprocess.Popen(
                [sys.executable, "-P", "-c", APP, str(db_file), str(log_file), str(base / "paused")]
            )
            pidfile.write_text(str(app.pid))
            try:
                config = _demo_config(base, host, [db, logs], pidfile, timeout_s)
                time.sleep(0.5)
                options = RunOptions(
                    config_path=str(config),
                    pluginhost_path=None,
                    vmbackup_conf=None,
                    run_dir=str(base / "run"),
                )
                outcome = run(options)
                before = _count(db_file)
                time.sleep(0.3)
                after = _count(db_file)
            finally:
                app.send_signal(signal.SIGTERM)
                app.wait(timeout=10)
            result = DemoResult(outcome.to_dict(), before, after)
            if outcome.snapshot == "ok":
                for guest, name in ((db, "journal"), (logs, "log")):
                    image = host.mount_point / f"snap-{guest.image.name}"
                    check = _check_snapshot(guest, image, name, sb.base / f"snap-{guest.fstype}")
                    result.snapshots.append(check)
            lasts = {s.last_line for s in result.snapshots}
            result.consistent = (
                len(result.snapshots) == 2
                and all(s.fsck_ok for s in result.snapshots)
                and len(lasts) == 1
                and str(next(iter(lasts))).startswith("checkpoint ")
            )
            return result, outcome
    finally:
        shutil.rmtree(base, ignore_errors=True)
