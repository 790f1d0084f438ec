"""The per-cycle figures: bench/db-consistency.md and the terminal summary."""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
from pathlib import Path

from .checks import NEGATIVE_PREFIX, Cycle
from .servers import CONNECTIONS, PAD, PG_BIN, run

EXPLAIN = """\
Each database runs on an ext4 guest filesystem (loop image on an unfrozen xfs host) with a load of
{connections} connections committing numbered transactions back to back (two rows, two tables,
{pad}-byte padding each). A cycle is one `quiesce run` with the shipped scripts and a reflink
snapshot of the guest image inside the frozen window, then a restore: a second server on a copy of
the snapshot must start without repair and hold every transaction acknowledged before the snapshot
began (`required`), no transaction half, no hole in any connection's sequence, and pass the
database's own check (PostgreSQL amcheck: `bt_index_check` with heapallindexed, `verify_heapam`;
MariaDB `CHECK TABLE ... EXTENDED`). `window ms`: quiesce's frozen window (first FIFREEZE to last
FITHAW). `run ms`: the whole `quiesce run` (or the copy, for the negative control). `longest ack gap
ms`: the application-visible stall, the longest time without any acknowledgement during the run;
`baseline gap ms`: the same in the second before. `present`: transactions found whole in the
restored copy (with a PostgreSQL backup label, the restore replays to the end of the backup, after
the snapshot). The negative control copies the live database without quiesce while the load runs:
`file copy in name order` copies the data directory file by file over a second or more, as a
backup tool without a snapshot would (PostgreSQL's `base/` before `global/` before `pg_wal/`;
MariaDB's redo log before its tables), with a checkpoint requested as it starts (servers checkpoint
on their own every few minutes); `file copy in reverse order` is the same the other way round;
`live reflink` takes an atomic copy of the disk image, the state a power cut leaves.
"""

#: Every cycle of the session, in order.
REPORT: list[Cycle] = []

# -- the report --------------------------------------------------------------------------

COLUMNS = (
    "db",
    "variant",
    "cycle",
    "window ms",
    "run ms",
    "longest ack gap ms",
    "baseline gap ms",
    "required",
    "present",
    "result",
)


def row(c: Cycle) -> list[str]:
    """One table row."""

    def ms(x: float | None) -> str:
        return "" if x is None else f"{x:.1f}"

    return [
        c.db,
        c.variant,
        str(c.cycle),
        ms(c.window_ms),
        ms(c.run_ms),
        ms(c.gap_ms),
        ms(c.baseline_gap_ms),
        str(c.required),
        str(c.present),
        c.result,
    ]


def summary(cycles: list[Cycle]) -> list[str]:
    """Per variant: cycles, how many restored whole, median/max window and stall."""
    lines = []
    for key in dict.fromkeys((c.db, c.variant) for c in cycles):
        mine = [c for c in cycles if (c.db, c.variant) == key]
        windows = sorted(c.window_ms for c in mine if c.window_ms is not None)
        gaps = sorted(c.gap_ms for c in mine if c.gap_ms is not None)
        bad = [c for c in mine if not c.ok]
        control = key[1].startswith(NEGATIVE_PREFIX)
        label = f"{key[0]} / {key[1]}"
        if control:
            # A copy without quiesce is expected to break: a passing log must not read as a failure.
            label += " (negative control: not restoring whole is the expected outcome)"
        text = f"{label}: {len(mine) - len(bad)} of {len(mine)} restored whole"
        if windows:
            text += f"; window median {windows[len(windows) // 2]:.1f} ms, max {windows[-1]:.1f} ms"
        if gaps:
            text += f"; longest ack gap median {gaps[len(gaps) // 2]:.1f} ms, max {gaps[-1]:.1f} ms"
        if bad:
            verdicts = [c.verdict for c in bad]
            text += "; expected: " if control else "; "
            text += ", ".join(f"{v} {verdicts.count(v)}" for v in dict.fromkeys(verdicts))
        lines.append(text)
    return lines


def write_markdown(path: Path, cycles: list[Cycle], settings: str) -> None:
    """bench/db-consistency.md: how it was measured, the summary, every cycle."""
    uname = os.uname()
    versions = []
    with contextlib.suppress(Exception):
        versions.append(run([str(PG_BIN / "postgres"), "--version"]).stdout.strip())
    with contextlib.suppress(Exception):
        versions.append(run(["mariadbd", "--version"]).stdout.strip())
    out = [
        "# Database consistency of quiesce snapshots",
        "",
        "Written by `tests/db` (see tests/db/README.md) on every run; this copy:",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {uname.release},",
        f"{os.cpu_count()} CPUs,",
        f"{'; '.join(versions)}; {settings}.",
        "",
        *textwrap.wrap(EXPLAIN.format(connections=CONNECTIONS, pad=PAD), 100),
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in summary(cycles)],
        "",
        "## Every cycle",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *["| " + " | ".join(x.replace("|", "/") for x in row(c)) + " |" for c in cycles],
        "",
    ]
    path.write_text("\n".join(out))
