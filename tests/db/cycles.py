"""Cycles: quiesce runs with the shipped scripts, and copies taken without quiesce.

A snapshot is a reflink copy of the guest image on the host, taken by quiesce's snapshot
command inside the frozen window; each is restored and judged (checks.py), and every
cycle lands in report.REPORT.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import NEGATIVE_PREFIX, Cycle, attached, restore_and_check
from .report import REPORT
from .servers import Load, Postgres, World, longest_gap_ms, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Cycles per database with its session hook; the other variants run a third as many.
CYCLES = int(os.environ.get("QUIESCE_DB_CYCLES", "10"))
SHORT_CYCLES = max(2, CYCLES // 3)
#: quiesce's expediteRcu for every cycle (QUIESCE_DB_EXPEDITE_RCU=1): a shorter window.
EXPEDITE_RCU = os.environ.get("QUIESCE_DB_EXPEDITE_RCU", "") not in ("", "0")

# -- quiesce cycles ----------------------------------------------------------------------


def install_script(src: Path, dst: Path) -> Path:
    """Copy a shipped script root-owned, mode 0700 (what quiesce's checks require)."""
    shutil.copy(src, dst)
    os.chmod(dst, 0o700)
    return dst


def write_private(path: Path, text: str) -> Path:
    """A root-only file (settings, config)."""
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def settings(w: World, directory: Path | None = None, hold_s: int = 60) -> Path:
    """The shipped scripts' settings file, pointing them at this world's server.

    The scripts read it from the directory above their own (``hooks.d/..``).
    """
    where = directory or w.work
    if isinstance(w.server, Postgres):
        text = (
            f"PGHOST={w.server.rundir}\nPGPORT={w.server.port}\nPGDATABASE=loadtest\n"
            f"BACKUP_DIR={w.tmp / 'backups'}\nHOLD_SECONDS={hold_s}\n"
        )
        return write_private(where / "postgresql.env", text)
    text = f"CLIENT_ARGS=(--socket={w.server.socket})\nHOLD_SECONDS={hold_s}\n"
    return write_private(where / "mariadb.env", text)


SCRIPT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


@contextlib.contextmanager
def azure_agent_hold(w: World, hook: str) -> Iterator[None]:
    """What Azure's own agent does with the shipped pair: pre-hold.sh before, post-hold.sh after.

    The hook lives outside quiesce's hook directory (quiesce must not run it too); its
    settings are the world's. A failing script raises RuntimeError with its output.
    """
    held = w.work / "held"
    held.mkdir(mode=0o755, exist_ok=True)
    hook_path = install_script(EXAMPLES / hook, held / Path(hook).name)
    pre = install_script(EXAMPLES / "azure-pair" / "pre-hold.sh", held / "pre-hold.sh")
    post = install_script(EXAMPLES / "azure-pair" / "post-hold.sh", held / "post-hold.sh")
    env = SCRIPT_ENV | {"HOLD_STATE_DIR": str(w.tmp / "hold")}
    done = subprocess.run(
        [str(pre), str(hook_path)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"pre-hold.sh exit {done.returncode}: {done.stdout} {done.stderr}")
    try:
        yield
    finally:
        done = subprocess.run(
            [str(post), str(hook_path)], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"post-hold.sh exit {done.returncode}: {done.stdout} {done.stderr}")


class HeldHook:
    """A shipped session hook started by hand, stdin kept open: nobody releases it."""

    def __init__(self, w: World, hook: str, hold_s: int) -> None:
        base = w.work / "by-hand"
        shutil.rmtree(base, ignore_errors=True)
        (base / "hooks.d").mkdir(mode=0o755, parents=True)
        settings(w, base, hold_s)
        path = install_script(EXAMPLES / hook, base / "hooks.d" / Path(hook).name)
        ready = base / "ready"
        self.proc = subprocess.Popen(
            [str(path), "session"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=SCRIPT_ENV | {"READY_FILE": str(ready)},
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        try:
            while not ready.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out, err = self.finish(5)
                    raise RuntimeError(f"{hook} did not get ready: {out} {err}")
                time.sleep(0.02)
        except BaseException:
            self.close()  # the caller never gets this object: reap it and close its pipes here
            raise
        self.ready_ns = time.time_ns()

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for it to end by itself (stdin stays open until then); its output."""
        self.proc.wait(timeout=timeout)
        out, err = self.proc.communicate(timeout=5)
        return out, err

    def kill_shell(self) -> None:
        """SIGKILL the hook's shell alone, as if it crashed: its client sees EOF."""
        os.kill(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill whatever is left of it and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=10)


def wait_until(predicate: Any, timeout: float) -> float:
    """Seconds until ``predicate()`` was true; raises AssertionError after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


@dataclass
class Variant:
    """How the snapshot is made consistent: which shipped scripts, where."""

    name: str
    hooks: list[str] = field(default_factory=list)  # files from examples/ for the hook directory
    pre: tuple[str, list[str]] | None = None  # (examples file, params) as the Azure pre-script
    post: tuple[str, list[str]] | None = None
    label: bool = False  # the PostgreSQL hook wrote a label to install on restore


def configure(w: World, v: Variant, snapshot: Path, stamp: Path) -> Path:
    """Install the variant's scripts and write quiesce's config; returns its path."""
    for d in ("hooks.d", "scripts"):
        shutil.rmtree(w.work / d, ignore_errors=True)
        (w.work / d).mkdir(mode=0o755)
    settings(w)
    for i, name in enumerate(v.hooks):
        install_script(EXAMPLES / name, w.work / "hooks.d" / f"{50 + i}-{Path(name).name}")
    noop = install_script_text(w.work / "scripts" / "noop.sh", "#!/bin/sh\nexit 0\n")
    pre, pre_params = (
        (install_script(EXAMPLES / v.pre[0], w.work / "scripts" / Path(v.pre[0]).name), v.pre[1])
        if v.pre
        else (noop, [])
    )
    post, post_params = (
        (install_script(EXAMPLES / v.post[0], w.work / "scripts" / Path(v.post[0]).name), v.post[1])
        if v.post
        else (noop, [])
    )
    config = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": str(pre),
        "postScriptLocation": str(post),
        "preScriptParams": pre_params,
        "postScriptParams": post_params,
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 60,
        "continueBackupOnFailure": False,
        "fsFreezeEnabled": True,
        "quiesce": {
            "targets": [str(w.guest.mount_point)],
            "freezeTimeoutSeconds": 30,
            "expediteRcu": EXPEDITE_RCU,
            "hookDirectory": str(w.work / "hooks.d"),
            "snapshot": {
                "mode": "command",
                # The stamp is the moment the snapshot begins: everything acknowledged
                # before it must be in the snapshot (it is later than the pre-script's start).
                "argv": [
                    "/bin/sh",
                    "-c",
                    f"date +%s%N > {stamp} && exec cp --reflink=always {w.image} {snapshot}",
                ],
                "timeoutSeconds": 20,
            },
        },
    }
    return write_private(w.work / "VMSnapshotScriptPluginConfig.json", json.dumps(config, indent=1))


def install_script_text(path: Path, text: str) -> Path:
    """A root-only script with the given text."""
    path.write_text(text)
    os.chmod(path, 0o700)
    return path


def quiesce_run(config: Path, run_dir: Path) -> tuple[int, dict[str, Any], str]:
    """``quiesce run --json``: exit status, result, stderr."""
    argv = [
        sys.executable,
        "-m",
        "quiesce",
        "run",
        "--config",
        str(config),
        "--no-pluginhost",
        "--no-vmbackup-conf",
        "--run-dir",
        str(run_dir),
        "--json",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False
    )
    try:
        result = json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else {}
    except json.JSONDecodeError:
        result = {}
    return done.returncode, result, done.stderr


def quiesce_cycle(w: World, load: Load, v: Variant, i: int, around: Any = None) -> Cycle:
    """One run of quiesce with the variant's scripts, then a restore of its snapshot.

    ``around(w)``, if given, is a context manager entered before the run and left after
    it (a runner that is not quiesce holding the database); a RuntimeError from it counts
    as a failed cycle.
    """
    c = Cycle(w.server.kind, v.name, i)
    snapshot = w.host.mount_point / f"snap-{i}.img"
    stamp = w.work / "snapshot-stamp"
    stamp.unlink(missing_ok=True)
    backups = w.tmp / "backups"
    shutil.rmtree(backups, ignore_errors=True)
    config = configure(w, v, snapshot, stamp)
    run_dir = w.work / "run"
    run_dir.mkdir(exist_ok=True)
    load.quiet_second()
    code, result, stderr = -1, {}, ""
    t0 = time.time_ns()
    try:
        with around(w) if around is not None else contextlib.nullcontext():
            code, result, stderr = quiesce_run(config, run_dir)
    except RuntimeError as err:
        c.problems.append(str(err)[-600:])
    t1 = time.time_ns()
    try:
        load.wait_for(20)  # the load goes on after the thaw
        c.consistency = result.get("consistency", f"exit {code}")
        c.run_ms = (t1 - t0) / 1e6
        window = (result.get("freeze") or {}).get("window_ns")
        c.window_ms = window / 1e6 if window else None
        times = [a.t_ns for a in load.acks()]
        c.gap_ms = longest_gap_ms(times, t0, t1)
        c.baseline_gap_ms = longest_gap_ms(times, t0 - 1_000_000_000, t0)
        if code != 0 or c.consistency != "application-consistent" or not stamp.exists():
            scripts = [
                result.get("pre"),
                *result.get("hooks_pre", []),
                *result.get("hooks_post", []),
                result.get("post"),
            ]
            errors = [a["stderr"] for s in scripts if s for a in s["attempts"] if a.get("stderr")]
            c.problems.append(
                f"quiesce run exit {code}, {c.consistency}: {result.get('message')}; {' '.join(errors)}"
                f" {stderr[-300:]}"
            )
        if c.problems:
            return c
        label_dir = None
        if v.label:
            labels = sorted(backups.glob("*/backup_label")) if backups.exists() else []
            if len(labels) != 1:
                c.problems.append(
                    f"{len(labels)} backup labels in {backups}: {json.dumps(result.get('hooks_post'))}"
                )
                return c
            label_dir = labels[0].parent
        restore_and_check(w, snapshot, c, load.acks, int(stamp.read_text()), label_dir)
        return c
    finally:
        snapshot.unlink(missing_ok=True)
        REPORT.append(c)


def paced_tree_copy(
    src: Path, dst: Path, reverse: bool = False, chunk: int = 256 << 10, pause_s: float = 0.002
) -> None:
    """Copy a live data directory file by file, in name order (or reverse), as a backup tool would.

    Ownership and modes kept; a short pause after each chunk spreads the copy over a
    second or more while the server keeps writing, so each file is copied at a different
    moment. In name order PostgreSQL's ``base/`` goes before ``global/pg_control`` before
    ``pg_wal/`` and ``pg_xact/``, and MariaDB's redo log before its tables; in reverse
    order the other way round.
    """
    for top, dirs, files in os.walk(src):
        dirs.sort(reverse=reverse)
        rel = Path(top).relative_to(src)
        here = dst / rel
        here.mkdir(exist_ok=True)
        st = os.stat(top)
        os.chown(here, st.st_uid, st.st_gid)
        os.chmod(here, st.st_mode & 0o7777)
        for name in sorted(files, reverse=reverse):
            source = Path(top) / name
            try:
                st = os.stat(source)
                with open(source, "rb") as fin, open(here / name, "wb") as fout:
                    while buf := fin.read(chunk):
                        fout.write(buf)
                        time.sleep(pause_s)
            except FileNotFoundError:
                continue  # removed while copying (a recycled WAL segment, a temp file)
            os.chown(here / name, st.st_uid, st.st_gid)
            os.chmod(here / name, st.st_mode & 0o7777)


def file_copy_image(w: World, image: Path, reverse: bool) -> None:
    """A fresh ext4 image holding a paced file copy of the live data directory."""
    with open(image, "wb") as f:
        f.truncate(w.image.stat().st_size)
    run(["mkfs.ext4", "-q", "-F", str(image)])
    with attached(w, image, "copy") as mnt:
        paced_tree_copy(w.server.datadir, mnt / "data", reverse)


NEGATIVE = ("file copy in name order", "file copy in reverse order", "live reflink")


def unquiesced_cycle(w: World, load: Load, how: str, i: int) -> Cycle:
    """The negative control: a copy of the live database, no scripts, no freeze; same checks.

    ``file copy in name order`` (or ``reverse order``): the data directory copied file by
    file (a checkpoint is requested as it starts, as the server does on its own every few
    minutes); ``live reflink``: an atomic copy of the disk image, the state a power cut
    leaves.
    """
    c = Cycle(w.server.kind, f"{NEGATIVE_PREFIX} {how}", i)
    snapshot = w.host.mount_point / f"live-{i}.img"
    load.quiet_second()
    t0 = time.time_ns()
    if how.startswith("file copy"):
        checkpoint = subprocess.Popen(
            [*w.server.sql_argv(), w.server.checkpoint_sql],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            file_copy_image(w, snapshot, reverse=how.endswith("reverse order"))
        finally:
            checkpoint.wait(timeout=120)
    else:
        run(["cp", "--reflink=always", str(w.image), str(snapshot)])
    t1 = time.time_ns()
    load.wait_for(20)
    try:
        times = [a.t_ns for a in load.acks()]
        c.run_ms = (t1 - t0) / 1e6
        c.gap_ms = longest_gap_ms(times, t0, t1)
        c.baseline_gap_ms = longest_gap_ms(times, t0 - 1_000_000_000, t0)
        restore_and_check(w, snapshot, c, load.acks, t0)
        return c
    finally:
        snapshot.unlink(missing_ok=True)
        REPORT.append(c)
