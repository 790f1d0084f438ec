"""The pre-flush policy: whether to ``syncfs()`` the targets just before the first FIFREEZE.

FIFREEZE writes back everything dirty on the filesystem while its writers are
already blocked, so dirty data turns into window time: three filesystems with
150 MiB dirty each take about 2 s to freeze in sequence, 0.1 s after a
parallel ``syncfs()`` of all three. That pre-flush is also an I/O burst (data,
a journal commit and a cache flush on every target) that a database's own
commits queue behind, even when there is little to write. So it runs only
when it can shorten the window:

- the kernel's ``Dirty`` + ``Writeback`` from ``/proc/meminfo`` (machine-wide,
  so an upper bound on what any one target has dirty in the page cache) is
  read just before the first FIFREEZE would be;
- at or above :attr:`PreflushPolicy.skip_below_bytes` (default 4 MiB) every
  target is pre-flushed in parallel, as before;
- below it the pre-flush is skipped: no target can have that much left for
  FIFREEZE to write;
- unreadable (no ``/proc``, an odd format): pre-flushed, the safe side;
- ``--no-preflush`` (``preflush=False``): never.

Per-device dirty counts exist only in debugfs (``/sys/kernel/debug/bdi``),
often not mounted or locked down (``/sys/class/bdi`` has none), and even
they bound nothing for a filesystem on a loop device: its written pages sit
dirty in the backing filesystem's page cache, and the cache flush FIFREEZE
ends with writes those out too. The machine-wide figure counts both and is
always there. The decision and the figure it was taken on go into the
freeze's report.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMINFO = "/proc/meminfo"
#: Skip the pre-flush when the machine has less than this dirty or under writeback.
#: Skipping moves at most this much writeback into the window (about 17 ms at
#: 240 MB/s, what loop devices on a cloud VM's disk reach), against a pre-flush
#: whose fixed part (a journal commit and a cache flush per target) costs a few
#: ms of I/O even when nothing is dirty: a window's ms stops every writer, a
#: pre-flush's only slows some, so the bound is kept small.
DEFAULT_SKIP_BELOW_BYTES = 4 << 20

#: Why the pre-flush ran or not (``PreflushDecision.reason``).
DIRTY = "dirty"
CLEAN = "clean"
UNKNOWN = "unknown"
DISABLED = "disabled"


@dataclass(frozen=True)
class PreflushPolicy:
    """When to pre-flush: from ``skip_below_bytes`` of machine-wide dirty data up (0: always)."""

    skip_below_bytes: int = DEFAULT_SKIP_BELOW_BYTES

    def __post_init__(self) -> None:
        if self.skip_below_bytes < 0:
            raise ValueError(f"skip_below_bytes must be >= 0, not {self.skip_below_bytes}")


@dataclass(frozen=True)
class PreflushDecision:
    """Whether the targets were pre-flushed, why, and the dirty figure it was decided on."""

    flush: bool
    reason: str
    #: Machine-wide Dirty + Writeback in bytes when decided, None if not read or unreadable.
    dirty_bytes: int | None


#: The default policy (a frozen dataclass: one instance serves every freeze).
DEFAULT_POLICY = PreflushPolicy()


def parse_dirty(meminfo: str) -> int | None:
    """``Dirty`` + ``Writeback`` in bytes from the text of /proc/meminfo, None if either is missing."""
    found: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key in ("Dirty", "Writeback"):
            fields = rest.split()
            if len(fields) != 2 or fields[1] != "kB" or not fields[0].isdigit():
                return None
            found[key] = int(fields[0]) * 1024
    if len(found) != 2:
        return None
    return found["Dirty"] + found["Writeback"]


def read_dirty(path: str = MEMINFO) -> int | None:
    """Machine-wide dirty and under-writeback bytes now, None when unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_dirty(f.read())
    except OSError:
        return None


def decide(enabled: bool, dirty_bytes: int | None, policy: PreflushPolicy) -> PreflushDecision:
    """The decision for a freeze, given the option and the dirty figure (see the module's rules)."""
    if not enabled:
        return PreflushDecision(False, DISABLED, dirty_bytes)
    if dirty_bytes is None:
        return PreflushDecision(True, UNKNOWN, None)
    if dirty_bytes >= policy.skip_below_bytes:
        return PreflushDecision(True, DIRTY, dirty_bytes)
    return PreflushDecision(False, CLEAN, dirty_bytes)


def decide_now(enabled: bool, policy: PreflushPolicy) -> PreflushDecision:
    """:func:`decide` on the figure read now (nothing is read when the pre-flush is off)."""
    return decide(enabled, read_dirty() if enabled else None, policy)
