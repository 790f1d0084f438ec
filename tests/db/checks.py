"""Restoring a snapshot on a second server and judging what it holds.

A restore is a reflink copy of the snapshot image, loop-mounted (ext4 replays its
journal), with a second server started on it; its rows are compared with the load's
acknowledgements and the database's own consistency check runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .servers import STRIDE, Ack, MariaDB, Postgres, Server, World, private_dir, run, tail

#: How a negative control's variant starts (a copy without quiesce): reports label it so.
NEGATIVE_PREFIX = "no quiesce:"


# -- restore and check -------------------------------------------------------------------


@dataclass
class Cycle:
    """One snapshot and its restore: the figures bench/db-consistency.md reports."""

    db: str
    variant: str
    cycle: int
    consistency: str = ""  # quiesce's classification; "" for a copy without quiesce
    window_ms: float | None = None
    run_ms: float | None = None
    gap_ms: float | None = None  # longest gap between acknowledgements during the run (or copy)
    baseline_gap_ms: float | None = None  # the same, in the second before it
    required: int = 0  # transactions acknowledged before the snapshot began
    present: int = 0  # transactions whose two rows the restored copy holds
    missing: int = 0  # required, but absent
    half: int = 0  # one row present without the other
    holes: int = 0  # absent while a later transaction of the same connection is present
    phantom: int = 0  # present, but never sent
    started: bool = False
    check_ok: bool = False
    check: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Restored, started, complete, whole, and the database's own check passed."""
        return (
            self.started
            and self.check_ok
            and not (self.missing or self.half or self.holes or self.phantom)
            and not self.problems
        )

    @property
    def verdict(self) -> str:
        """What went wrong first, in a few words ("ok" if nothing)."""
        if self.ok:
            return "ok"
        if not self.started:
            first = self.problems[0] if self.problems else ""
            for prefix, name in (
                ("quiesce run", "run failed"),
                ("mount failed", "mount failed"),
                ("server log", "did not start"),
            ):
                if first.startswith(prefix):
                    return name
            return "not restored"
        for name, count in (
            ("missing", self.missing),
            ("half-present", self.half),
            ("holes", self.holes),
            ("phantom", self.phantom),
        ):
            if count:
                return name
        return "check failed" if not self.check_ok else "other"

    @property
    def result(self) -> str:
        """The verdict with its details, on one line."""
        if self.ok:
            return "ok"
        bad = [
            f"{k} {v}"
            for k, v in (
                ("missing", self.missing),
                ("half-present", self.half),
                ("holes", self.holes),
                ("phantom", self.phantom),
            )
            if v
        ]
        if self.started and not self.check_ok:
            bad.append(f"check failed: {self.check}")
        if not self.started:
            bad.insert(0, self.verdict)
        return " ".join("; ".join(bad + self.problems).split())

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the result."""
        return asdict(self) | {"ok": self.ok, "result": self.result}


def judged(c: Cycle) -> bool:
    """The copy was really restored and judged, whatever the verdict.

    Either the restored server did not start (its log recorded) or the image
    did not mount, or it started and its rows were compared with a load that
    had acknowledged transactions before the copy (or the query's failure is
    recorded). A copy the harness never restored, or judged against nothing,
    is not a control.
    """
    if not c.started:
        return c.verdict in ("did not start", "mount failed")
    return c.required > 0 or bool(c.problems)


def judge(c: Cycle, rows_a: set[int], rows_b: set[int], acks: list[Ack], snapshot_ns: int) -> None:
    """Compare the restored rows with the acknowledgements."""
    acked = {a.n for a in acks}
    required = {a.n for a in acks if a.t_ns < snapshot_ns}
    last = {}
    for a in acks:
        last[a.conn] = max(last.get(a.conn, 0), a.n)
    both = rows_a & rows_b
    c.required = len(required)
    c.present = len(both)
    c.missing = len(required - both)
    c.half = len(rows_a ^ rows_b)
    # Sent: every acknowledged number, and one in flight per connection.
    sent = acked | {n + 1 for n in last.values()}
    c.phantom = len((rows_a | rows_b) - sent)
    for conn in last:
        mine = sorted(n for n in both if n // STRIDE == conn)
        if mine:
            c.holes += (mine[-1] - conn * STRIDE) - len(mine)


class MountError(RuntimeError):
    """A restored image did not mount."""


@contextlib.contextmanager
def attached(w: World, image: Path, name: str) -> Iterator[Path]:
    """Loop-mount ``image`` (ext4 replays its journal, as on any restore); always detach."""
    mnt = w.sandbox.base / name
    mnt.mkdir(exist_ok=True)
    device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    mounted = False
    try:
        try:
            run(["mount", "-t", "ext4", device, str(mnt)])
        except RuntimeError as err:
            raise MountError(str(err)) from err
        mounted = True
        yield mnt
    finally:
        if mounted:
            run(["umount", str(mnt)])
        run(["losetup", "-d", device])
        mnt.rmdir()


def restore_and_check(
    w: World, snapshot: Path, c: Cycle, acks_at: Any, snapshot_ns: int, label_dir: Path | None = None
) -> None:
    """Restore ``snapshot`` as a user would, start a second server on it, check it, tear down."""
    image = w.host.mount_point / "restore.img"
    run(["cp", "--reflink=always", str(snapshot), str(image)])
    try:
        with attached(w, image, "restored") as mnt:
            _check_restored(w, mnt / "data", c, acks_at, snapshot_ns, label_dir)
    except MountError as err:
        c.problems.append(f"mount failed: {str(err)[-300:]}")
    finally:
        image.unlink()


def _check_restored(
    w: World, datadir: Path, c: Cycle, acks_at: Any, snapshot_ns: int, label_dir: Path | None
) -> None:
    rundir = private_dir("restored-", w.server.user, str(w.tmp))
    try:
        second: Server
        if isinstance(w.server, Postgres):
            if label_dir is not None:
                install_label(label_dir, datadir)
            # The snapshot of a running server carries its postmaster.pid; PostgreSQL's
            # documentation leaves it out of any file-system backup (the pid would name
            # the original, still running here).
            (datadir / "postmaster.pid").unlink(missing_ok=True)
            second = Postgres(datadir, rundir, port=5433)
        else:
            second = MariaDB(datadir, rundir)
        try:
            second.start()
        except RuntimeError:
            c.problems.append(f"server log: {tail(second.log, 6)[-700:]}")
            second.stop("immediate")
            return
        c.started = True
        try:
            rows_a = {int(x) for x in second.sql("SELECT n FROM a").split()}
            rows_b = {int(x) for x in second.sql("SELECT n FROM b").split()}
            judge(c, rows_a, rows_b, acks_at(), snapshot_ns)
            c.check_ok, c.check = consistency_check(second)
            if (
                isinstance(second, Postgres)
                and label_dir is not None
                and not (datadir / "backup_label.old").exists()
            ):
                c.problems.append("the backup label was not used (no backup_label.old)")
        except RuntimeError as err:
            c.problems.append(str(err)[-600:])
        finally:
            second.stop("immediate")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def install_label(label_dir: Path, datadir: Path) -> None:
    """What examples/postgresql/README.md tells a restore to do with the hook's output."""
    for name in ("backup_label", "tablespace_map"):
        src = label_dir / name
        if src.exists():
            shutil.copy(src, datadir / name)
            shutil.chown(datadir / name, "postgres", "postgres")
    for seg in sorted((label_dir / "pg_wal").iterdir()):
        dst = datadir / "pg_wal" / seg.name
        shutil.copy(seg, dst)
        shutil.chown(dst, "postgres", "postgres")
        os.chmod(dst, 0o600)


def consistency_check(server: Server) -> tuple[bool, str]:
    """PostgreSQL: amcheck on both primary keys and heaps. MariaDB: CHECK TABLE ... EXTENDED."""
    if isinstance(server, Postgres):
        query = (
            "SELECT (SELECT count(*) FROM verify_heapam('a')) + (SELECT count(*) FROM verify_heapam('b'))"
            " FROM (SELECT bt_index_check('a_pkey', true), bt_index_check('b_pkey', true)) AS indexes"
        )
        try:
            out = server.sql(query).strip()
        except RuntimeError as err:
            return False, str(err)[-300:]
        return out == "0", "amcheck ok" if out == "0" else f"amcheck: {out} corrupt heap tuples"
    try:
        out = server.sql("CHECK TABLE a, b EXTENDED")
    except RuntimeError as err:
        return False, str(err)[-300:]
    rows = [line.split("\t") for line in out.strip().splitlines()]
    bad = [
        r
        for r in rows
        if len(r) != 4 or (r[2] in ("error", "warning") or (r[2] == "status" and r[3] != "OK"))
    ]
    return not bad, "CHECK TABLE ok" if not bad else f"CHECK TABLE: {bad}"
