"""The order of a freeze: stacked filesystems first, ``/`` last, and the groups of a parallel freeze.

A filesystem on a loop device whose image lies on another selected
filesystem must be frozen before that filesystem and thawed after it (the
other order deadlocks: the upper's FIFREEZE writes through to a frozen
image). :func:`stack_order` draws those constraints from each target's
loop backing and sorts them (later mounts first, ``/`` last, among the
unconstrained); :func:`parallel_groups` regroups a planned order for a
parallel freeze.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from quiesce.engine.mountinfo import Mount, holding_index
from quiesce.engine.plan import Target

#: ``loop_backing(major, minor)``: a loop device's image file, or None.
LoopBacking = Callable[[int, int], str | None]
#: ``source_device(source)``: the block device a mount's source names, or None.
SourceDevice = Callable[[str], tuple[int, int] | None]


@dataclass(frozen=True)
class _Candidate:
    index: int
    backing_file: str | None
    holder: int | None


def stack_order(
    mounts: Sequence[Mount],
    chosen: list[int],
    hidden: dict[int, str],
    loop_backing: LoopBacking,
    source_device: SourceDevice,
) -> tuple[Target, ...]:
    """The chosen mounts (indexes into ``mounts``) as targets, in freeze order."""
    candidates = _break_cycles(mounts, _candidates(mounts, chosen, hidden, loop_backing, source_device))
    return _targets(mounts, _freeze_order(mounts, candidates), candidates)


def _candidates(
    mounts: Sequence[Mount],
    chosen: list[int],
    hidden: dict[int, str],
    loop_backing: Callable[[int, int], str | None],
    source_device: Callable[[str], tuple[int, int] | None],
) -> dict[int, _Candidate]:
    """Each chosen mount with its loop backing file and the chosen mount holding that file."""
    representative_of = {(mounts[i].major, mounts[i].minor): i for i in chosen}
    candidates: dict[int, _Candidate] = {}
    for index in chosen:
        backing = backing_file(mounts[index], loop_backing, source_device)
        holder = None
        if backing is not None:
            holding = holding_index(os.path.normpath(backing), mounts, hidden)
            if holding is not None:
                held_by = mounts[holding]
                holder = representative_of.get((held_by.major, held_by.minor))
        # A file "on itself" is a path that now resolves through the upper's own
        # mount (it was mounted over its image): no constraint can be drawn.
        candidates[index] = _Candidate(index, backing, None if holder == index else holder)
    return candidates


def backing_file(
    mount: Mount,
    loop_backing: Callable[[int, int], str | None],
    source_device: Callable[[str], tuple[int, int] | None],
) -> str | None:
    """The image file of the loop device ``mount`` lives on (btrfs: its source's device), or None."""
    if mount.major != 0:
        return loop_backing(mount.major, mount.minor)
    # btrfs shows an anonymous 0:N; its source names the real device.
    if mount.source.startswith("/dev/"):
        device = source_device(mount.source)
        if device is not None:
            return loop_backing(*device)
    return None


def _rank(mounts: Sequence[Mount], index: int) -> tuple[bool, int]:
    """Sort key among unconstrained targets: later mounts first, ``/`` last."""
    return mounts[index].mount_point == "/", -index


def _break_cycles(mounts: Sequence[Mount], candidates: dict[int, _Candidate]) -> dict[int, _Candidate]:
    """Drop one backing link from every cycle of "upper -> holder" links.

    A cycle cannot happen on a sane system, but backing paths are only text and
    can mislead. Each target has at most one holder, so following holders from
    any target ends at a root or loops once; the link dropped is the one leaving
    the cycle's best-ranked member, which keeps the result deterministic.
    """
    result = dict(candidates)
    done: set[int] = set()
    for start in sorted(result):
        walk: list[int] = []
        node: int | None = start
        while node is not None and node not in done and node not in walk:
            walk.append(node)
            node = result[node].holder
        if node is not None and node in walk:
            cut = min(walk[walk.index(node) :], key=lambda i: _rank(mounts, i))
            result[cut] = replace(result[cut], holder=None)
        done.update(walk)
    return result


def _freeze_order(mounts: Sequence[Mount], candidates: dict[int, _Candidate]) -> list[int]:
    """Topological order: each upper before the target holding its backing file.

    Kahn's algorithm over an acyclic graph; among the targets that are free to
    go, later mounts go first and ``/`` last.
    """
    waiting = {index: 0 for index in candidates}
    for candidate in candidates.values():
        if candidate.holder is not None:
            waiting[candidate.holder] += 1
    ready = [(_rank(mounts, index), index) for index, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(index)
        holder = candidates[index].holder
        if holder is not None:
            waiting[holder] -= 1
            if waiting[holder] == 0:
                heapq.heappush(ready, (_rank(mounts, holder), holder))
    return order


def _targets(
    mounts: Sequence[Mount], order: list[int], candidates: dict[int, _Candidate]
) -> tuple[Target, ...]:
    targets: list[Target] = []
    for index in order:
        candidate = candidates[index]
        holder = candidate.holder
        targets.append(
            Target(
                mount=mounts[index],
                backing_file=candidate.backing_file,
                backing_target=None if holder is None else mounts[holder].mount_point,
            )
        )
    return tuple(targets)


def parallel_groups(targets: Sequence[Target]) -> tuple[list[Target], list[int]]:
    """Regroup planned targets for a parallel freeze: (targets in order, group of each).

    Filesystems of one group freeze at the same time, groups one after the
    other. A filesystem on a loop device is in an earlier group than the
    filesystem holding its image (the stacked one must freeze first), and
    ``/`` freezes alone, last, as in the sequential order. The result is
    still a valid sequential order.
    """
    uppers: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        if t.backing_target is not None:
            uppers.setdefault(t.backing_target, []).append(i)
    levels: dict[int, int] = {}

    def level(i: int) -> int:
        if i not in levels:
            above = uppers.get(targets[i].mount.mount_point, [])
            levels[i] = 1 + max((level(j) for j in above), default=-1)
        return levels[i]

    for i in range(len(targets)):
        level(i)
    last = max(levels.values(), default=0) + 1
    for i, t in enumerate(targets):
        if t.mount.mount_point == "/":
            levels[i] = last
    order = sorted(range(len(targets)), key=lambda i: (levels[i], i))
    return [targets[i] for i in order], [levels[i] for i in order]
