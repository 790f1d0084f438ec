"""Grouping targets for a parallel freeze."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quiesce.engine.mountinfo import parse_mountinfo
from quiesce.engine.order import parallel_groups
from quiesce.engine.plan import Target


def _targets(n: int, backing: dict[int, int], root: int | None = None) -> list[Target]:
    lines = []
    for i in range(n):
        mp = "/" if i == root else f"/m{i}"
        lines.append(f"{100 + i} 1 7:{i} / {mp} rw - ext4 /dev/loop{i} rw")
    mounts = parse_mountinfo("\n".join(lines))
    return [
        Target(
            m, f"/m{backing[i]}/img" if i in backing else None, f"/m{backing[i]}" if i in backing else None
        )
        for i, m in enumerate(mounts)
    ]


def test_independent_filesystems_share_one_group():
    """Unrelated filesystems all freeze together."""
    targets = _targets(4, {})
    ordered, groups = parallel_groups(targets)
    assert ordered == targets and groups == [0, 0, 0, 0]


def test_stack_levels_and_root_last():
    """A loop-stacked filesystem is a group before its backing one; / is alone and last."""
    targets = _targets(5, {0: 1, 1: 2}, root=4)
    ordered, groups = parallel_groups(targets)
    names = [t.mount.mount_point for t in ordered]
    assert names == ["/m0", "/m3", "/m1", "/m2", "/"]
    assert groups == [0, 0, 1, 2, 3]


@st.composite
def forests(draw):
    """Random loop stacks: target i may sit on a target j > i."""
    n = draw(st.integers(1, 12))
    backing = {}
    for i in range(n - 1):
        if draw(st.booleans()):
            backing[i] = draw(st.integers(i + 1, n - 1))
    return n, backing


@given(forests())
def test_every_upper_is_in_an_earlier_group_than_its_backing(forest):
    """Whatever the stacks, uppers freeze in a strictly earlier group, and groups never go back."""
    n, backing = forest
    targets = _targets(n, backing)
    ordered, groups = parallel_groups(targets)
    assert sorted(t.mount.mount_point for t in ordered) == sorted(t.mount.mount_point for t in targets)
    assert groups == sorted(groups)
    group_of = {t.mount.mount_point: g for t, g in zip(ordered, groups, strict=True)}
    for i, j in backing.items():
        assert group_of[f"/m{i}"] < group_of[f"/m{j}"]
