"""Tests of mountinfo parsing, target selection and order, and vmbackup.conf's MountsToSkip."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.azure.vmbackup import read_mounts_to_skip
from quiesce.engine.mountinfo import (
    Mount,
    block_device_number,
    parse_mountinfo,
    read_loop_backing,
    read_mountinfo,
)
from quiesce.engine.plan import Plan, Skipped, SkipReason
from quiesce.engine.selection import select
from quiesce.errors import ConfigError, MountinfoError, QuiesceOSError

# ---------------------------------------------------------------------------
# helpers


def row(
    mount_id: int,
    parent_id: int,
    dev: str,
    mount_point: str,
    fstype: str = "ext4",
    source: str = "/dev/sda1",
    *,
    root: str = "/",
    options: str = "rw,relatime",
    super_options: str = "rw",
    optional: str = "shared:1",
) -> str:
    """One mountinfo line, with the fields most tests do not care about defaulted."""
    middle = f" {optional}" if optional else ""
    return (
        f"{mount_id} {parent_id} {dev} {root} {mount_point} {options}{middle}"
        f" - {fstype} {source} {super_options}"
    )


def no_loops(major: int, minor: int) -> str | None:
    """A loop_backing that knows no loop device."""
    return None


def no_devices(path: str) -> tuple[int, int] | None:
    """A source_device that resolves nothing."""
    return None


def loops(table: dict[tuple[int, int], str]) -> Callable[[int, int], str | None]:
    """A loop_backing answering from ``table``."""
    return lambda major, minor: table.get((major, minor))


def plan_of(*rows: str, **options: Any) -> Plan:
    """Select among the given mountinfo lines, with no real sysfs or /dev lookups."""
    options.setdefault("loop_backing", no_loops)
    options.setdefault("source_device", no_devices)
    return select(parse_mountinfo("\n".join(rows)), **options)


def order(plan: Plan) -> list[str]:
    """Mount points of the targets, in freeze order."""
    return [target.mount.mount_point for target in plan.targets]


def skips(plan: Plan) -> dict[int, Skipped]:
    """Skipped mounts keyed by mount ID."""
    return {skipped.mount.mount_id: skipped for skipped in plan.skipped}


def reason(plan: Plan, mount_id: int) -> SkipReason:
    """The reason the mount with ``mount_id`` was skipped."""
    return skips(plan)[mount_id].reason


ROOT = row(1, 0, "8:1", "/")


# ---------------------------------------------------------------------------
# parsing: examples


def test_parses_the_man_page_example() -> None:
    """Every field of proc(5)'s sample line lands in the right attribute."""
    (mount,) = parse_mountinfo(
        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
    )
    assert mount == Mount(
        mount_id=36,
        parent_id=35,
        major=98,
        minor=0,
        root="/mnt1",
        mount_point="/mnt2",
        mount_options=("rw", "noatime"),
        optional_fields=("master:1",),
        fstype="ext3",
        source="/dev/root",
        super_options=("rw", "errors=continue"),
    )
    assert mount.dev == "98:0"


def test_decodes_octal_escapes() -> None:
    r"""\040, \011, \012 and \134 become space, tab, newline and backslash."""
    (mount,) = parse_mountinfo(
        r"1 0 8:1 /a\040b /mnt/x\011y\012z\134w rw - ext4 /dev/my\040disk rw,opt=a\054b"
    )
    assert mount.root == "/a b"
    assert mount.mount_point == "/mnt/x\ty\nz\\w"
    assert mount.source == "/dev/my disk"
    assert mount.super_options == ("rw", "opt=a,b")


def test_escaped_bytes_decode_as_utf8() -> None:
    r"""A run of escaped bytes spells one UTF-8 character, raw UTF-8 passes through."""
    (mount,) = parse_mountinfo(r"1 0 8:1 / /caf\303\251/ünï rw - ext4 /dev/sda rw")
    assert mount.mount_point == "/café/ünï"


def test_lone_backslash_is_kept() -> None:
    r"""A backslash not followed by three octal digits is not an escape."""
    (mount,) = parse_mountinfo(r"1 0 8:1 / /a\9b\1 rw - ext4 /dev/sda rw")
    assert mount.mount_point == "/a\\9b\\1"


def test_empty_source_stays_an_empty_field() -> None:
    """An empty source (two spaces in a row) does not shift the super options."""
    (mount,) = parse_mountinfo("5 1 0:40 / /run rw - tmpfs  rw,size=10k")
    assert mount.source == ""
    assert mount.fstype == "tmpfs"
    assert mount.super_options == ("rw", "size=10k")


def test_fuse_subtype_and_none_source() -> None:
    """A subtype stays part of the fstype and "none" is an ordinary source."""
    mounts = parse_mountinfo(
        "7 1 0:50 / /remote rw - fuse.sshfs me@host:/ rw\n8 1 0:51 / /x rw - tmpfs none rw"
    )
    assert [m.fstype for m in mounts] == ["fuse.sshfs", "tmpfs"]
    assert mounts[1].source == "none"


def test_optional_fields_in_order() -> None:
    """Zero or more optional fields are kept in order; none gives an empty tuple."""
    mounts = parse_mountinfo(
        "1 0 8:1 / / rw shared:1 master:2 propagate_from:3 unbindable - ext4 /dev/sda rw\n"
        "2 1 8:2 / /b rw - ext4 /dev/sdb rw"
    )
    assert mounts[0].optional_fields == ("shared:1", "master:2", "propagate_from:3", "unbindable")
    assert mounts[1].optional_fields == ()


def test_mount_point_named_dash_is_not_the_separator() -> None:
    """A mount point or root spelled "-" is a field, not the separator."""
    (mount,) = parse_mountinfo("1 0 8:1 - - rw - ext4 /dev/sda rw")
    assert (mount.root, mount.mount_point, mount.fstype) == ("-", "-", "ext4")


def test_blank_lines_are_ignored_and_order_kept() -> None:
    """Blank and whitespace-only lines are skipped; mounts keep file order."""
    text = "\n" + row(3, 1, "8:3", "/c") + "\n  \n" + row(1, 0, "8:1", "/") + "\n\n"
    assert [m.mount_id for m in parse_mountinfo(text)] == [3, 1]


def test_empty_text_gives_no_mounts() -> None:
    """Empty input parses to an empty list, not an error."""
    assert parse_mountinfo("") == []


def test_read_only_properties() -> None:
    """read_only follows the super options, mount_read_only the per-mount options."""
    bind_ro, sb_ro = parse_mountinfo(
        row(1, 0, "8:1", "/a", options="ro,relatime", super_options="rw")
        + "\n"
        + row(2, 0, "8:2", "/b", options="rw", super_options="ro,errors=remount-ro")
    )
    assert (bind_ro.read_only, bind_ro.mount_read_only) == (False, True)
    assert (sb_ro.read_only, sb_ro.mount_read_only) == (True, False)


# ---------------------------------------------------------------------------
# parsing: malformed lines


@pytest.mark.parametrize(
    ("line", "fault"),
    [
        ("1 0 8:1 / / rw ext4 /dev/sda rw", "separator"),
        ("1 0 8:1 / / - ext4 /dev/sda rw", "separator"),
        ("", None),
        ("x 0 8:1 / / rw - ext4 /dev/sda rw", "mount ID 'x'"),
        ("+1 0 8:1 / / rw - ext4 /dev/sda rw", "mount ID '+1'"),
        ("1 -1 8:1 / / rw - ext4 /dev/sda rw", "parent ID '-1'"),
        ("1 0 8 / / rw - ext4 /dev/sda rw", "device '8'"),
        ("1 0 8:x / / rw - ext4 /dev/sda rw", "device '8:x'"),
        ("1 0 8:1:2 / / rw - ext4 /dev/sda rw", "device '8:1:2'"),
        ("1 0 :1 / / rw - ext4 /dev/sda rw", "device ':1'"),
        ("1 0 8:1 / / rw - ext4 /dev/sda", "found 2"),
        ("1 0 8:1 / / rw - ext4 /dev/sda rw extra", "found 4"),
        ("1 0 8:1 /  rw - ext4 /dev/sda rw", "empty mount point"),
        ("1 0 8:1 / / rw -  /dev/sda rw", "empty filesystem type"),
    ],
)
def test_malformed_line_is_rejected(line: str, fault: str | None) -> None:
    """Each kind of malformed line raises MountinfoError naming line 2 and the fault."""
    text = row(1, 0, "8:1", "/") + "\n" + line
    if fault is None:
        assert len(parse_mountinfo(text)) == 1
        return
    with pytest.raises(MountinfoError, match="line 2") as caught:
        parse_mountinfo(text)
    assert fault in str(caught.value)


def test_line_numbers_count_blank_lines() -> None:
    """The reported line number is the physical line, blank lines included."""
    with pytest.raises(MountinfoError, match=r"^mountinfo line 4: "):
        parse_mountinfo(ROOT + "\n\n\nnonsense")


def test_read_mountinfo_reads_a_file(tmp_path: Path) -> None:
    """read_mountinfo parses the file it is given."""
    path = tmp_path / "mountinfo"
    path.write_text(ROOT + "\n" + row(2, 1, "8:2", "/data") + "\n")
    assert [m.mount_point for m in read_mountinfo(str(path))] == ["/", "/data"]


def test_read_mountinfo_names_the_file_on_a_bad_line(tmp_path: Path) -> None:
    """A parse error from a file names the file and the line."""
    path = tmp_path / "mountinfo"
    path.write_text(ROOT + "\nbad line\n")
    with pytest.raises(MountinfoError, match=f"^{path}: mountinfo line 2: "):
        read_mountinfo(str(path))


def test_read_mountinfo_missing_file_keeps_errno(tmp_path: Path) -> None:
    """An unreadable file raises a QuiesceOSError carrying ENOENT and the path."""
    path = str(tmp_path / "absent")
    with pytest.raises(QuiesceOSError) as caught:
        read_mountinfo(path)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == path


def test_read_mountinfo_keeps_undecodable_bytes(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 survive as surrogates and encode back to the same path."""
    path = tmp_path / "mountinfo"
    path.write_bytes(b"1 0 8:1 / /d\xff\\040x rw - ext4 /dev/sda rw\n")
    (mount,) = read_mountinfo(str(path))
    assert os.fsencode(mount.mount_point) == b"/d\xff x"


@pytest.mark.skipif(not os.path.exists("/proc/self/mountinfo"), reason="needs procfs")
def test_reads_this_systems_mountinfo() -> None:
    """The running kernel's own mountinfo parses and selects without error."""
    mounts = read_mountinfo()
    assert mounts
    plan = select(mounts, loop_backing=no_loops, source_device=no_devices)
    assert len(plan.targets) + len(plan.skipped) == len(mounts)


# ---------------------------------------------------------------------------
# parsing: round trip


def escape(text: str, also: str = "") -> str:
    """Escape text the way the kernel's mangle() does, plus the characters in ``also``."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" + also else c for c in text)


def render(mount: Mount) -> str:
    """Write ``mount`` as a mountinfo line."""

    def options(values: tuple[str, ...]) -> str:
        """An option list, commas inside values escaped as the kernel's seq_show_option does."""
        return ",".join(escape(value, also=",") for value in values)

    return " ".join(
        [
            str(mount.mount_id),
            str(mount.parent_id),
            mount.dev,
            escape(mount.root),
            escape(mount.mount_point),
            options(mount.mount_options),
            *mount.optional_fields,
            "-",
            escape(mount.fstype),
            escape(mount.source),
            options(mount.super_options),
        ]
    )


TRICKY = st.sampled_from([" ", "\t", "\n", "\\", "\\040", ",", "-", "é", "雪", "\r", "\u2028"])
TEXT = st.lists(st.one_of(st.text(max_size=6), TRICKY), max_size=5).map("".join)
OPTION = st.one_of(st.text(min_size=1, max_size=10), TRICKY)
OPTIONAL_FIELD = st.one_of(
    st.integers(1, 10**6).map(lambda n: f"shared:{n}"),
    st.integers(1, 10**6).map(lambda n: f"master:{n}"),
    st.integers(1, 10**6).map(lambda n: f"propagate_from:{n}"),
    st.just("unbindable"),
)
MOUNTS = st.builds(
    Mount,
    mount_id=st.integers(0, 2**31),
    parent_id=st.integers(0, 2**31),
    major=st.integers(0, 2**12 - 1),
    minor=st.integers(0, 2**20 - 1),
    root=TEXT.map(lambda s: "/" + s),
    mount_point=TEXT.map(lambda s: "/" + s),
    mount_options=st.lists(OPTION, max_size=30).map(tuple),
    optional_fields=st.lists(OPTIONAL_FIELD, max_size=4).map(tuple),
    fstype=st.one_of(TEXT.filter(bool), st.sampled_from(["ext4", "fuse.sshfs", "btrfs"])),
    source=st.one_of(TEXT, st.just("none")),
    super_options=st.lists(OPTION, max_size=30).map(tuple),
)


@given(st.lists(MOUNTS, max_size=20))
def test_round_trip(mounts: list[Mount]) -> None:
    """Rendering mounts as escaped mountinfo and parsing them gives the same mounts."""
    assert parse_mountinfo("\n".join(render(m) for m in mounts) + "\n") == mounts


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(MOUNTS, min_size=1, max_size=8), st.integers(200, 600))
def test_round_trip_hundreds_of_lines(sample: list[Mount], count: int) -> None:
    """A file of hundreds of lines round-trips in order (mounts cycled with new IDs)."""
    mounts = [Mount(**{**vars(sample[i % len(sample)]), "mount_id": i}) for i in range(count)]
    assert parse_mountinfo("\n".join(render(m) for m in mounts)) == mounts


# ---------------------------------------------------------------------------
# selection: skip reasons


def test_every_kind_of_filesystem_gets_its_reason() -> None:
    """FUSE, network, pseudo, stacking, read-only and unknown types are each skipped as such."""
    plan = plan_of(
        ROOT,
        row(2, 1, "0:21", "/proc", "proc", "proc"),
        row(3, 1, "0:23", "/dev/shm", "tmpfs", "tmpfs"),
        row(4, 1, "0:50", "/remote", "fuse.sshfs", "me@host:/"),
        row(5, 1, "8:33", "/win", "fuseblk", "/dev/sdc1"),
        row(6, 1, "0:60", "/nfs", "nfs4", "srv:/export"),
        row(7, 1, "0:61", "/smb", "cifs", "//srv/share"),
        row(8, 1, "0:70", "/merged", "overlay", "overlay"),
        row(9, 1, "7:5", "/snap/core/1", "squashfs", "/dev/loop5", super_options="ro"),
        row(10, 1, "8:17", "/boot/efi", "vfat", "/dev/sdb1"),
        row(11, 1, "0:80", "/tank", "zfs", "tank"),
        row(12, 1, "8:2", "/data", "xfs", "/dev/sda2"),
    )
    assert order(plan) == ["/data", "/"]
    expected = {
        2: (SkipReason.PSEUDO, "fstype proc is a pseudo filesystem"),
        3: (SkipReason.PSEUDO, "fstype tmpfs is a pseudo filesystem"),
        4: (SkipReason.FUSE, "fstype fuse.sshfs is a FUSE filesystem"),
        5: (SkipReason.FUSE, "fstype fuseblk is a FUSE filesystem"),
        6: (SkipReason.NETWORK, "fstype nfs4 is a network filesystem"),
        7: (SkipReason.NETWORK, "fstype cifs is a network filesystem"),
        8: (
            SkipReason.UNSUPPORTED,
            "fstype overlay cannot be frozen (FIFREEZE fails with EOPNOTSUPP)",
        ),
        9: (SkipReason.READ_ONLY, "filesystem 7:5 is read-only"),
        10: (
            SkipReason.UNSUPPORTED,
            "fstype vfat has no freeze support (add it with extra_fstypes if it does)",
        ),
        11: (SkipReason.PSEUDO, "fstype zfs is a pseudo filesystem (no block device: 0:80)"),
    }
    assert {k: (s.reason, s.detail) for k, s in skips(plan).items()} == expected


def test_skipped_mounts_are_listed_in_mountinfo_order() -> None:
    """Plan.skipped follows mountinfo order, whatever the reasons."""
    plan = plan_of(
        row(5, 1, "0:5", "/z", "tmpfs"),
        ROOT,
        row(3, 1, "0:3", "/a", "nfs"),
        row(4, 1, "0:4", "/m", "proc"),
    )
    assert [s.mount.mount_id for s in plan.skipped] == [5, 3, 4]


def test_extra_fstypes_makes_a_type_freezable() -> None:
    """A type named in extra_fstypes is selected, even on an anonymous device."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:17", "/boot/efi", "vfat"),
        row(3, 1, "0:80", "/tank", "zfs", "tank"),
        extra_fstypes=["vfat", "zfs"],
    )
    assert order(plan) == ["/tank", "/boot/efi", "/"]


def test_extra_fstypes_does_not_override_pseudo_or_network() -> None:
    """extra_fstypes cannot turn tmpfs or nfs into targets."""
    plan = plan_of(
        ROOT,
        row(2, 1, "0:3", "/t", "tmpfs"),
        row(3, 1, "0:4", "/n", "nfs"),
        extra_fstypes=["tmpfs", "nfs"],
    )
    assert (reason(plan, 2), reason(plan, 3)) == (SkipReason.PSEUDO, SkipReason.NETWORK)


def test_read_only_superblock_is_skipped_but_not_a_read_only_bind() -> None:
    """A read-only superblock is skipped; a read-only bind of a writable one is not."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/ro", super_options="ro,relatime"),
        row(3, 1, "8:3", "/robind", options="ro,relatime", super_options="rw"),
    )
    assert reason(plan, 2) is SkipReason.READ_ONLY
    assert "/robind" in order(plan)


def test_read_only_option_selects_read_only_superblocks_of_freezable_types_only() -> None:
    """read_only=True (the guest agent's, as qemu-ga): a read-only ext4 is a target; squashfs is not."""
    rows = (
        ROOT,
        row(2, 1, "8:2", "/ro", super_options="ro,relatime"),
        row(3, 1, "7:3", "/snap", "squashfs", super_options="ro"),
    )
    plan = plan_of(*rows, read_only=True)
    assert order(plan) == ["/ro", "/"]
    assert reason(plan, 3) is SkipReason.UNSUPPORTED
    assert reason(plan_of(*rows), 2) is SkipReason.READ_ONLY


def test_ocfs2_is_freezable_not_network() -> None:
    """ocfs2 is a cluster block filesystem and is selected."""
    assert order(plan_of(ROOT, row(2, 1, "8:2", "/cluster", "ocfs2"))) == ["/cluster", "/"]


# ---------------------------------------------------------------------------
# selection: one target per filesystem


def test_btrfs_subvolumes_are_one_target() -> None:
    """Two mounts of one btrfs (0:45, different roots) give one target and a duplicate."""
    plan = plan_of(
        row(1, 0, "0:45", "/", "btrfs", "/dev/sda2", root="/@"),
        row(2, 1, "0:45", "/home", "btrfs", "/dev/sda2", root="/@home"),
    )
    assert order(plan) == ["/"]
    assert skips(plan)[2].reason is SkipReason.DUPLICATE
    assert skips(plan)[2].detail == "same filesystem (0:45) as /"


def test_bind_mount_is_a_duplicate() -> None:
    """A bind mount of /data is skipped as a duplicate naming /data."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/data"), row(3, 1, "8:2", "/srv/www", root="/www"))
    assert order(plan) == ["/data", "/"]
    assert skips(plan)[3].detail == "same filesystem (8:2) as /data"


@pytest.mark.parametrize(
    ("rows", "chosen"),
    [
        # not read-only beats root "/"
        ([row(2, 1, "8:2", "/a", options="ro"), row(3, 1, "8:2", "/bb", root="/x")], 3),
        # root "/" beats a shorter mount point
        ([row(2, 1, "8:2", "/a", root="/x"), row(3, 1, "8:2", "/bbbb")], 3),
        # shorter mount point beats lower mount ID
        ([row(2, 1, "8:2", "/aaaa"), row(3, 1, "8:2", "/b")], 3),
        # lowest mount ID breaks the tie
        ([row(9, 1, "8:2", "/b"), row(3, 1, "8:2", "/a")], 3),
    ],
)
def test_representative_preference(rows: list[str], chosen: int) -> None:
    """The representative follows: writable mount, root "/", shortest path, lowest ID."""
    (target,) = plan_of(*rows).targets
    assert target.mount.mount_id == chosen


# ---------------------------------------------------------------------------
# selection: include and exclude


def test_include_selects_only_matching_filesystems() -> None:
    """With include, the other filesystems are skipped as not included."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/data"), row(3, 1, "8:3", "/srv"), include=["/data"])
    assert order(plan) == ["/data"]
    assert (reason(plan, 1), reason(plan, 3)) == (SkipReason.NOT_INCLUDED, SkipReason.NOT_INCLUDED)
    assert skips(plan)[3].detail == "matches no include pattern"
    assert plan.unmatched == ()


def test_include_is_normalised() -> None:
    """Trailing slashes, doubled slashes and dot segments in include are normalised."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/data"), row(3, 1, "8:3", "/srv"), include=["/data/", "//srv/./"])
    assert order(plan) == ["/srv", "/data"]
    assert plan.unmatched == ()


def test_include_glob() -> None:
    """An include glob selects every filesystem with a matching mount point."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/mnt/a"),
        row(3, 1, "8:3", "/mnt/b"),
        row(4, 1, "8:4", "/srv"),
        include=["/mnt/*"],
    )
    assert order(plan) == ["/mnt/b", "/mnt/a"]


def test_include_through_a_bind_mount_targets_the_representative() -> None:
    """Including a bind mount selects its filesystem, frozen through the representative."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "8:2", "/srv/www", root="/www"),
        include=["/srv/www"],
    )
    assert order(plan) == ["/data"]
    assert reason(plan, 3) is SkipReason.DUPLICATE


def test_included_pseudo_filesystem_reports_its_own_reason() -> None:
    """Including /dev/shm reports it as pseudo, not as unmatched or not included."""
    plan = plan_of(ROOT, row(2, 1, "0:23", "/dev/shm", "tmpfs", "tmpfs"), include=["/dev/shm"])
    assert plan.targets == ()
    assert skips(plan)[2].reason is SkipReason.PSEUDO
    assert plan.unmatched == ()


def test_unmatched_include_patterns_are_reported_as_given() -> None:
    """Include patterns matching no mount at all are returned once, as written."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/data"), include=["/nope/", "/data", "/nope/", "/x*"])
    assert plan.unmatched == ("/nope/", "/x*")
    assert order(plan) == ["/data"]


def test_patterns_may_be_any_iterable() -> None:
    """Generators work for every pattern argument, and unmatched still sees include."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "8:3", "/srv", "xfs"),
        include=(p for p in ["/data", "/srv", "/nope"]),
        exclude=(p for p in ["/srv"]),
        exclude_fstypes=iter(["btrfs"]),
        extra_fstypes=iter(["vfat"]),
    )
    assert order(plan) == ["/data"]
    assert plan.unmatched == ("/nope",)


def test_exclude_path_and_glob() -> None:
    """Exclude takes exact mount points and globs, and names the pattern."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "8:3", "/mnt/a"),
        row(4, 1, "8:4", "/mnt/b"),
        exclude=["/data/", "/mnt/*"],
    )
    assert order(plan) == ["/"]
    assert skips(plan)[2].detail == "matches exclude pattern /data"
    assert skips(plan)[4].detail == "matches exclude pattern /mnt/*"
    assert {s.reason for s in plan.skipped} == {SkipReason.EXCLUDED}


def test_excluding_one_mount_excludes_the_whole_filesystem() -> None:
    """Excluding a bind mount excludes every mount of its filesystem."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "8:2", "/srv/www", root="/www"),
        exclude=["/srv/www"],
    )
    assert order(plan) == ["/"]
    assert skips(plan)[2].reason is SkipReason.EXCLUDED
    assert skips(plan)[2].detail == (
        "same filesystem (8:2) as /srv/www, which matches exclude pattern /srv/www"
    )


def test_exclude_fstypes() -> None:
    """exclude_fstypes takes exact types and globs."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/x", "xfs"),
        row(3, 1, "8:3", "/b", "btrfs"),
        exclude_fstypes=["xfs", "b*"],
    )
    assert order(plan) == ["/"]
    assert skips(plan)[2].detail == "fstype xfs is excluded"
    assert skips(plan)[3].detail == "fstype btrfs matches excluded fstype pattern b*"


def test_exclude_wins_over_include() -> None:
    """A filesystem both included and excluded is excluded."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/data"), include=["/data"], exclude=["/data"])
    assert plan.targets == ()
    assert reason(plan, 2) is SkipReason.EXCLUDED


def test_a_bare_string_pattern_is_refused() -> None:
    """include="/data" (a str, not a list) raises instead of matching letter by letter."""
    with pytest.raises(TypeError, match="include"):
        plan_of(ROOT, include="/data")


@pytest.mark.parametrize("name", ["include", "exclude"])
def test_an_empty_pattern_is_a_config_error(name: str) -> None:
    """An empty pattern raises ConfigError rather than matching nothing or everything."""
    with pytest.raises(ConfigError, match=f"empty {name} pattern"):
        plan_of(ROOT, **{name: [" "]})


# ---------------------------------------------------------------------------
# selection: overmounts


def test_overmounted_filesystem_is_unsupported() -> None:
    """A filesystem reachable only under a later mount on the same path is unsupported."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/mnt"), row(3, 2, "8:3", "/mnt"))
    assert order(plan) == ["/mnt", "/"]
    assert plan.targets[0].mount.mount_id == 3
    assert (skips(plan)[2].reason, skips(plan)[2].detail) == (
        SkipReason.UNSUPPORTED,
        "hidden under a later mount at /mnt",
    )


def test_overmounted_mount_with_another_reachable_mount_is_a_duplicate() -> None:
    """The hidden mount is a duplicate when its filesystem is reachable elsewhere."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/mnt"), row(3, 1, "8:2", "/other"), row(4, 2, "8:3", "/mnt"))
    assert sorted(order(plan)) == ["/", "/mnt", "/other"]
    assert skips(plan)[2].reason is SkipReason.DUPLICATE
    assert skips(plan)[2].detail == ("same filesystem (8:2) as /other; hidden under a later mount at /mnt")


def test_overmount_without_consistent_parent_ids_uses_mountinfo_order() -> None:
    """With flat parent IDs, the last mount at a path is the reachable one."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/mnt"), row(3, 1, "8:3", "/mnt"))
    assert [t.mount.mount_id for t in plan.targets] == [3, 1]
    assert reason(plan, 2) is SkipReason.UNSUPPORTED


def test_mount_hidden_under_a_later_ancestor_mount() -> None:
    """/a/b mounted before /a is hidden by /a: its path now leads into /a's filesystem."""
    plan = plan_of(ROOT, row(2, 1, "8:2", "/a/b"), row(3, 1, "8:3", "/a"))
    assert order(plan) == ["/a", "/"]
    assert skips(plan)[2].detail == "hidden under a later mount at /a"


def test_switch_root_order_keeps_moved_mounts_reachable() -> None:
    """A real mountinfo where /proc precedes / (moved by switch_root) selects / only."""
    plan = plan_of(
        "22 27 0:21 / /proc rw,relatime - proc proc rw",
        "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw",
        "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,mode=755",
        "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k",
        "26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000",
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
        "29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000",
        "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k",
        "31 27 254:1 / /data rw,relatime - xfs /dev/vdb rw",
    )
    assert order(plan) == ["/data", "/"]
    assert {s.reason for s in plan.skipped} == {SkipReason.PSEUDO}


def test_mount_moved_under_a_newer_mount_stays_reachable() -> None:
    """A mount whose parent is a later mount at an ancestor path is not hidden by it."""
    plan = plan_of(ROOT, row(5, 6, "8:5", "/data/x"), row(6, 1, "8:6", "/data"))
    assert order(plan) == ["/data", "/data/x", "/"]


def test_mount_stacked_on_a_later_one_hides_it() -> None:
    """A child mounted at its parent's own path covers it whatever the line order."""
    plan = plan_of(ROOT, row(5, 6, "8:5", "/mnt"), row(6, 1, "8:6", "/mnt"))
    assert [t.mount.mount_id for t in plan.targets] == [5, 1]
    assert reason(plan, 6) is SkipReason.UNSUPPORTED


# ---------------------------------------------------------------------------
# selection: order and loop stacks


def test_unrelated_targets_freeze_in_reverse_mount_order_with_root_last() -> None:
    """Without loop stacks, later mounts freeze first and / freezes last wherever it is listed."""
    plan = plan_of(
        row(2, 1, "8:2", "/a"),
        row(1, 0, "8:1", "/"),
        row(3, 1, "8:3", "/b"),
        row(4, 3, "8:4", "/b/c"),
    )
    assert order(plan) == ["/b/c", "/b", "/a", "/"]


def test_loop_chain_freezes_uppers_first() -> None:
    """A on loop backed on B, B on loop backed on C: freeze order A, B, C, then /."""
    plan = plan_of(
        ROOT,
        row(10, 1, "7:0", "/a", source="/dev/loop0"),
        row(11, 1, "7:1", "/b", source="/dev/loop1"),
        row(12, 1, "8:3", "/c", source="/dev/sdc"),
        row(13, 1, "8:4", "/d", source="/dev/sdd"),
        loop_backing=loops({(7, 0): "/b/a.img", (7, 1): "/c/images/b.img"}),
    )
    assert order(plan) == ["/d", "/a", "/b", "/c", "/"]
    by_point = {t.mount.mount_point: t for t in plan.targets}
    assert (by_point["/a"].backing_file, by_point["/a"].backing_target) == ("/b/a.img", "/b")
    assert by_point["/b"].backing_target == "/c"
    assert by_point["/c"].backing_file is None


def test_loop_chain_listed_backwards() -> None:
    """The chain order holds even when mountinfo lists the uppers first."""
    plan = plan_of(
        row(10, 1, "7:0", "/a"),
        row(11, 1, "7:1", "/b"),
        row(12, 1, "8:3", "/c"),
        ROOT,
        loop_backing=loops({(7, 0): "/b/a.img", (7, 1): "/c/b.img"}),
    )
    assert order(plan) == ["/a", "/b", "/c", "/"]


def test_backing_on_root_keeps_root_last() -> None:
    """An image on / makes its loop filesystem freeze before /, which stays last."""
    plan = plan_of(
        ROOT,
        row(2, 1, "7:0", "/img"),
        row(3, 1, "8:3", "/z"),
        loop_backing=loops({(7, 0): "/var/lib/img.raw"}),
    )
    assert order(plan) == ["/z", "/img", "/"]
    assert plan.targets[1].backing_target == "/"


def test_holder_is_found_component_wise() -> None:
    """/data2/x.img is held by /data2, not /data, and the deepest mount wins."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "8:3", "/data2"),
        row(4, 2, "8:4", "/data/sub"),
        row(5, 1, "7:0", "/l0"),
        row(6, 1, "7:1", "/l1"),
        loop_backing=loops({(7, 0): "/data2/x.img", (7, 1): "/data/sub/y.img"}),
    )
    by_point = {t.mount.mount_point: t.backing_target for t in plan.targets}
    assert by_point["/l0"] == "/data2"
    assert by_point["/l1"] == "/data/sub"


def test_backing_on_an_unselected_filesystem_adds_no_constraint() -> None:
    """An image on tmpfs is reported but ties the loop filesystem to nothing (not to /)."""
    plan = plan_of(
        ROOT,
        row(2, 1, "0:30", "/tmp", "tmpfs", "tmpfs"),
        row(3, 1, "7:0", "/img"),
        loop_backing=loops({(7, 0): "/tmp/disk.img"}),
    )
    (img, root) = plan.targets
    assert (img.backing_file, img.backing_target, root.mount.mount_point) == (
        "/tmp/disk.img",
        None,
        "/",
    )


def test_backing_through_a_bind_mount_names_the_representative() -> None:
    """An image reached through a bind mount is held by that filesystem's target."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "8:2", "/srv/images", root="/images"),
        row(4, 1, "7:0", "/vm"),
        loop_backing=loops({(7, 0): "/srv/images/vm.img"}),
    )
    assert order(plan) == ["/vm", "/data", "/"]
    assert plan.targets[0].backing_target == "/data"


def test_btrfs_on_a_loop_device_is_found_through_its_source() -> None:
    """btrfs shows an anonymous 0:N, so its loop is found from the source device."""
    plan = plan_of(
        ROOT,
        row(2, 1, "8:2", "/data"),
        row(3, 1, "0:45", "/bt", "btrfs", "/dev/loop3"),
        loop_backing=loops({(7, 3): "/data/bt.img"}),
        source_device=lambda path: (7, 3) if path == "/dev/loop3" else None,
    )
    assert order(plan) == ["/bt", "/data", "/"]


def test_a_backing_cycle_still_orders_every_target() -> None:
    """Two loop filesystems claiming each other's files are both ordered, deterministically."""
    rows = (ROOT, row(2, 1, "7:0", "/a"), row(3, 1, "7:1", "/b"))
    table = loops({(7, 0): "/b/a.img", (7, 1): "/a/b.img"})
    first = order(plan_of(*rows, loop_backing=table))
    assert first == order(plan_of(*rows, loop_backing=table))
    assert sorted(first) == ["/", "/a", "/b"]
    assert first[-1] == "/"


def test_image_under_its_own_mount_point_adds_no_self_constraint() -> None:
    """A loop filesystem mounted over the directory of its image is not its own holder."""
    plan = plan_of(ROOT, row(2, 1, "7:0", "/mnt"), loop_backing=loops({(7, 0): "/mnt/img"}))
    assert [(t.mount.mount_point, t.backing_target) for t in plan.targets] == [
        ("/mnt", None),
        ("/", None),
    ]


Forest = tuple[list[str], list[str], list[int | None], list[bool], bool]


@st.composite
def loop_forests(draw: st.DrawFn) -> Forest:
    """Nested mount points, some filesystems on loops backed on others, in a random line order.

    Returns (lines, mount points, holder index per filesystem, selected flags, root present).
    Holders always rank higher in a random permutation, so the stacks form a forest.
    """
    count = draw(st.integers(1, 12))
    parents = [draw(st.integers(-1, i - 1)) for i in range(count)]
    points: list[str] = []
    for i, parent in enumerate(parents):
        points.append(("" if parent < 0 else points[parent]) + f"/m{i}")
    selected = [draw(st.booleans()) or i == 0 for i in range(count)]
    has_root = draw(st.booleans())
    ranks = draw(st.permutations(range(count)))
    holders: list[int | None] = []
    for i in range(count):
        higher = [j for j in range(count) if ranks[j] > ranks[i]]
        on_loop = selected[i] and higher and draw(st.booleans())
        holders.append(draw(st.sampled_from(higher)) if on_loop else None)
    lines = []
    for i in range(count):
        dev = f"7:{i}" if holders[i] is not None else f"{8 if selected[i] else 0}:{100 + i}"
        fstype = "ext4" if selected[i] else "tmpfs"
        lines.append(row(10 + i, 1 if parents[i] < 0 else 10 + parents[i], dev, points[i], fstype))
    if has_root:
        lines.append(ROOT)
    line_order = draw(st.permutations(range(len(lines))))
    return [lines[k] for k in line_order], points, holders, selected, has_root


@settings(deadline=None)
@given(loop_forests())
def test_loop_forest_order_property(
    forest: Forest,
) -> None:
    """For random loop forests: a permutation of the selected set, uppers before holders, / last."""
    lines, points, holders, selected, has_root = forest
    table = {(7, i): f"{points[j]}/img{i}" for i, j in enumerate(holders) if j is not None}
    plan = plan_of(*lines, loop_backing=loops(table))
    got = order(plan)
    expected = {p for p, chosen in zip(points, selected, strict=True) if chosen} | (
        {"/"} if has_root else set()
    )
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
    position = {point: n for n, point in enumerate(got)}
    for target in plan.targets:
        index = points.index(target.mount.mount_point) if target.mount.mount_point != "/" else None
        holder = None if index is None else holders[index]
        wanted = points[holder] if holder is not None and selected[holder] else None
        assert target.backing_target == wanted
        if wanted is not None:
            assert position[target.mount.mount_point] < position[wanted]
    if has_root:
        assert got[-1] == "/"


# ---------------------------------------------------------------------------
# loop devices from sysfs


def fake_sysfs(tmp_path: Path, device: str, backing: bytes | None) -> Path:
    """A /sys lookalike with one block device, bound to ``backing`` when given."""
    node = tmp_path / "devices" / "virtual" / "block" / device.replace(":", "_")
    node.mkdir(parents=True)
    if backing is not None:
        (node / "loop").mkdir()
        (node / "loop" / "backing_file").write_bytes(backing)
    links = tmp_path / "dev" / "block"
    links.mkdir(parents=True, exist_ok=True)
    (links / device).symlink_to(node)
    return tmp_path


def test_read_loop_backing_strips_the_newline(tmp_path: Path) -> None:
    """The backing file path is returned without its trailing newline."""
    sysfs = fake_sysfs(tmp_path, "7:0", b"/data/disk image.img\n")
    assert read_loop_backing(7, 0, sysfs=str(sysfs)) == "/data/disk image.img"


def test_read_loop_backing_deleted_file_is_none(tmp_path: Path) -> None:
    """A backing file marked " (deleted)" counts as no backing file."""
    sysfs = fake_sysfs(tmp_path, "7:1", b"/data/gone.img (deleted)\n")
    assert read_loop_backing(7, 1, sysfs=str(sysfs)) is None


def test_read_loop_backing_unbound_or_missing_is_none(tmp_path: Path) -> None:
    """A device without loop/ (not a loop, or unbound) and an absent device give None."""
    sysfs = fake_sysfs(tmp_path, "8:0", None)
    assert read_loop_backing(8, 0, sysfs=str(sysfs)) is None
    assert read_loop_backing(9, 9, sysfs=str(sysfs)) is None


def test_read_loop_backing_of_a_partition_uses_the_parent(tmp_path: Path) -> None:
    """loop0p1 (259:0) reports the backing file of loop0."""
    loop0 = tmp_path / "devices" / "virtual" / "block" / "loop0"
    (loop0 / "loop").mkdir(parents=True)
    (loop0 / "loop" / "backing_file").write_bytes(b"/images/disk.img\n")
    (loop0 / "loop0p1").mkdir()
    (loop0 / "loop0p1" / "partition").write_text("1\n")
    (tmp_path / "dev" / "block").mkdir(parents=True)
    (tmp_path / "dev" / "block" / "259:0").symlink_to(loop0 / "loop0p1")
    assert read_loop_backing(259, 0, sysfs=str(tmp_path)) == "/images/disk.img"


def test_block_device_number_rejects_non_block_files(tmp_path: Path) -> None:
    """A character device, a regular file and a missing path are not block devices."""
    regular = tmp_path / "f"
    regular.write_text("")
    assert block_device_number("/dev/null") is None
    assert block_device_number(str(regular)) is None
    assert block_device_number(str(tmp_path / "absent")) is None


def test_block_device_number_of_a_block_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block device gives the (major, minor) of its st_rdev."""

    class FakeStat:
        """What os.stat returns for /dev/loop7."""

        st_mode = stat.S_IFBLK | 0o660
        st_rdev = os.makedev(7, 7)

    monkeypatch.setattr(os, "stat", lambda path: FakeStat())
    assert block_device_number("/dev/loop7") == (7, 7)


# ---------------------------------------------------------------------------
# JSON


def test_everything_serialises_to_json() -> None:
    """Mount, Skipped, Target and Plan to_dict() survive json.dumps with the expected keys."""
    plan = plan_of(
        ROOT,
        row(2, 1, "7:0", "/img"),
        row(3, 1, "0:23", "/dev/shm", "tmpfs", "tmpfs"),
        loop_backing=loops({(7, 0): "/var/img"}),
    )
    loaded = json.loads(json.dumps(plan.to_dict()))
    assert loaded["unmatched"] == []
    assert loaded["targets"][0] == {
        "mount_point": "/img",
        "fstype": "ext4",
        "dev": "7:0",
        "source": "/dev/sda1",
        "mount_id": 2,
        "backing_file": "/var/img",
        "backing_target": "/",
    }
    assert loaded["skipped"] == [
        {
            "mount_point": "/dev/shm",
            "fstype": "tmpfs",
            "dev": "0:23",
            "source": "tmpfs",
            "mount_id": 3,
            "reason": "pseudo",
            "detail": "fstype tmpfs is a pseudo filesystem",
        }
    ]
    mount = json.loads(json.dumps(plan.targets[0].mount.to_dict()))
    assert mount["optional_fields"] == ["shared:1"]
    assert mount["super_options"] == ["rw"]
    assert mount["parent_id"] == 1


def test_skip_reason_values() -> None:
    """SkipReason values are the strings the CLI and JSON show."""
    assert [r.value for r in SkipReason] == [
        "pseudo", "network", "fuse", "read-only",
        "duplicate", "excluded", "unsupported", "not-included",
        "fuse-backed", "network-backed",
    ]  # fmt: skip
    assert SkipReason("read-only") is SkipReason.READ_ONLY


# ---------------------------------------------------------------------------
# vmbackup.conf


def write_conf(tmp_path: Path, text: str) -> str:
    """Write a vmbackup.conf with ``text`` and return its path."""
    path = tmp_path / "vmbackup.conf"
    path.write_text(text)
    return str(path)


def test_mounts_to_skip_are_split_and_stripped(tmp_path: Path) -> None:
    """MountsToSkip is split on commas, spaces stripped, empties dropped."""
    path = write_conf(
        tmp_path, "[SnapshotThread]\ntimeout = 60\nMountsToSkip = /mnt/resource, /data ,,/a b,\n"
    )
    assert read_mounts_to_skip(path) == ("/mnt/resource", "/data", "/a b")


def test_mounts_to_skip_key_is_case_insensitive(tmp_path: Path) -> None:
    """The key matches in any case, as configparser does; % needs no escaping."""
    path = write_conf(tmp_path, "[SnapshotThread]\nmountstoskip=/100%\n")
    assert read_mounts_to_skip(path) == ("/100%",)


def test_mounts_to_skip_missing_file(tmp_path: Path) -> None:
    """A missing file means nothing to skip."""
    assert read_mounts_to_skip(str(tmp_path / "absent.conf")) == ()


def test_mounts_to_skip_missing_section(tmp_path: Path) -> None:
    """A file without [SnapshotThread] means nothing to skip."""
    assert read_mounts_to_skip(write_conf(tmp_path, "[Other]\nMountsToSkip=/x\n")) == ()


def test_mounts_to_skip_missing_key(tmp_path: Path) -> None:
    """A [SnapshotThread] without MountsToSkip means nothing to skip."""
    assert read_mounts_to_skip(write_conf(tmp_path, "[SnapshotThread]\ntimeout=60\n")) == ()


def test_mounts_to_skip_empty_value(tmp_path: Path) -> None:
    """An empty MountsToSkip means nothing to skip."""
    assert read_mounts_to_skip(write_conf(tmp_path, "[SnapshotThread]\nMountsToSkip =\n")) == ()


def test_mounts_to_skip_tolerates_a_bom(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark before the first section is ignored."""
    path = tmp_path / "vmbackup.conf"
    path.write_bytes(b"\xef\xbb\xbf[SnapshotThread]\nMountsToSkip=/x\n")
    assert read_mounts_to_skip(str(path)) == ("/x",)


@pytest.mark.parametrize(
    "text",
    [
        "MountsToSkip=/x\n",
        "[SnapshotThread\nMountsToSkip=/x\n",
        "[SnapshotThread]\nMountsToSkip=/x\n[SnapshotThread]\n",
        "[SnapshotThread]\nMountsToSkip=/x\nmountstoskip=/y\n",
        "[SnapshotThread]\njust some words\n",
    ],
)
def test_mounts_to_skip_unparseable_file(tmp_path: Path, text: str) -> None:
    """An unparseable INI raises ConfigError naming the file."""
    path = write_conf(tmp_path, text)
    with pytest.raises(ConfigError, match=path):
        read_mounts_to_skip(path)


def test_mounts_to_skip_unreadable_file(tmp_path: Path) -> None:
    """A path that cannot be read as text (a directory, bad UTF-8) raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=str(tmp_path)):
        read_mounts_to_skip(str(tmp_path))
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"[SnapshotThread]\nMountsToSkip=/\xff\n")
    with pytest.raises(ConfigError, match=str(bad)):
        read_mounts_to_skip(str(bad))


def test_parsing_one_type_skips_the_others() -> None:
    """``fstype`` parses only that type's lines, in order, with their line numbers in errors."""
    text = "\n".join(
        [
            "1 0 8:1 / / rw - ext4 /dev/sda rw",
            "2 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
            "not a mountinfo line at all",
            r"3 1 0:27 / /odd\040-\040cgroup2\040dir rw - tmpfs tmpfs rw",
            "4 1 0:28 / /other/cgroup rw - cgroup2 cgroup2 rw",
        ]
    )
    assert [m.mount_point for m in parse_mountinfo(text, fstype="cgroup2")] == [
        "/sys/fs/cgroup",
        "/other/cgroup",
    ]
    with pytest.raises(MountinfoError, match="line 3"):
        parse_mountinfo(text)
    with pytest.raises(MountinfoError, match="line 2"):
        bad = "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:26 / /x rw - cgroup2 cgroup2"
        parse_mountinfo(bad, fstype="cgroup2")
