"""A user's FUSE mount is never root's: the decision on mountinfo lines, and the walk that applies it."""

from __future__ import annotations

import os

import pytest

from quiesce.engine import usermounts
from quiesce.engine.mountinfo import Mount, parse_mountinfo
from quiesce.engine.trust import UnsafeDirectoryError, check_directory, check_directory_chain
from quiesce.engine.usermounts import MountCheck, is_fuse, line_problem, lines_by_id, mount_problem, mounter


def text(fstype: str, super_options: str, point: str = "/run/user/1000", mount_id: int = 41) -> str:
    """A mountinfo line with this type, mount point and super options."""
    return f"{mount_id} 29 0:52 / {point} rw,nosuid,nodev,relatime shared:1 - {fstype} src {super_options}"


def line(fstype: str, super_options: str, point: str = "/run/user/1000", mount_id: int = 41) -> Mount:
    """One mount, parsed from a mountinfo line with this type, mount point and super options."""
    return parse_mountinfo(text(fstype, super_options, point, mount_id))[0]


BINDFS_BY_USER = "rw,user_id=1000,group_id=1000,default_permissions,allow_other"
BINDFS_BY_ROOT = "rw,user_id=0,group_id=0,default_permissions,allow_other"


def test_a_bindfs_mounted_by_a_user_is_refused_naming_the_mount_and_the_mounter():
    """fuse.bindfs with user_id=1000: refused, naming the type, mount point, mount ID and uid."""
    mount = line("fuse.bindfs", BINDFS_BY_USER)
    assert mounter(mount) == 1000
    problem = mount_problem(mount)
    assert problem is not None
    assert "FUSE filesystem mounted by uid 1000" in problem
    assert "fuse.bindfs from src at /run/user/1000 (mount ID 41)" in problem


def test_a_bindfs_mounted_by_root_is_accepted():
    """fuse.bindfs with user_id=0: root runs its server, so it stays trusted."""
    assert mount_problem(line("fuse.bindfs", BINDFS_BY_ROOT)) is None


@pytest.mark.parametrize("fstype", ["fuse", "fuseblk", "fuse.sshfs", "fuse.bindfs"])
def test_every_fuse_type_follows_its_mounter(fstype):
    """fuse, fuseblk and fuse.<subtype>: refused when a user mounted them, accepted when root did."""
    assert is_fuse(fstype)
    assert mount_problem(line(fstype, BINDFS_BY_USER)) is not None
    assert mount_problem(line(fstype, BINDFS_BY_ROOT)) is None
    # The same from the raw line, as a check reads the table.
    problem, mount = line_problem(text(fstype, BINDFS_BY_USER))
    assert problem is not None and mount is not None and mount.fstype == fstype
    assert line_problem(text(fstype, BINDFS_BY_ROOT))[0] is None


@pytest.mark.parametrize(
    ("fstype", "options"),
    [
        ("ext4", "rw,errors=remount-ro"),
        ("tmpfs", "rw,size=100k,mode=700,uid=1000,gid=1000"),
        ("fusectl", "rw"),  # the FUSE control filesystem is not a FUSE mount
        ("overlay", "rw,lowerdir=/a,upperdir=/b,workdir=/c,user_id=1000"),
    ],
)
def test_other_filesystems_are_unaffected(fstype, options):
    """Only FUSE types are judged by their mounter; any other is as before, whatever its options say."""
    assert not is_fuse(fstype)
    assert mount_problem(line(fstype, options)) is None
    assert line_problem(text(fstype, options)) == (None, None)


@pytest.mark.parametrize("options", ["rw,group_id=0,allow_other", "rw,user_id=,group_id=0", "rw,user_id=-1"])
def test_a_fuse_mount_that_names_no_mounter_is_refused(options):
    """No (or no readable) user_id=: who runs the server cannot be told, so it is not root's."""
    problem = mount_problem(line("fuse.x", options))
    assert problem is not None and "a user it does not name" in problem


def test_odd_names_in_the_refusal_are_escaped():
    """A mount point with a newline stays one line in the message, escaped as mountinfo does."""
    problem = mount_problem(line("fuse.x", BINDFS_BY_USER, point="/run/user/1000/a\\012b"))
    assert problem is not None and "\n" not in problem and "/run/user/1000/a\\012b" in problem


def test_lines_by_id_reads_only_the_lines_asked_for(tmp_path):
    """Only the wanted mount IDs are read back; other lines, even malformed ones, are left alone."""
    table = tmp_path / "mountinfo"
    fuse = text("fuse.bindfs", BINDFS_BY_USER)
    table.write_text(f"{fuse}\nnot a mountinfo line at all\n7 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    found = lines_by_id({41, 7, 99}, str(table))
    assert found == {41: fuse, 7: "7 1 8:1 / / rw - ext4 /dev/sda1 rw"}
    assert lines_by_id(set(), "/nonexistent") == {}
    with pytest.raises(OSError):
        lines_by_id({1}, str(tmp_path / "missing"))


def test_a_fuse_line_that_cannot_be_parsed_is_an_os_error():
    """A FUSE line the parser rejects cannot be judged: an OSError the checks name, never a pass."""
    with pytest.raises(OSError, match="mountinfo"):
        line_problem("x 29 0:52 / /mnt rw - fuse.bindfs src rw,user_id=0")


def test_the_mounts_of_this_machines_root_are_accepted():
    """Looking at / and /etc here finds them in the table and not on a user's FUSE mount."""
    with MountCheck() as mounts:
        assert mounts.lstat("/etc").st_ino == os.lstat("/etc").st_ino
        mounts.lstat("/")
        assert mounts.refused() is None


def test_a_mount_that_left_the_table_is_refused(monkeypatch):
    """A path whose mount is gone from the table by the time it is read (unmounted meanwhile) is refused."""
    monkeypatch.setattr(usermounts, "lines_by_id", lambda ids: {})
    with MountCheck() as mounts:
        mounts.lstat("/etc")
        refused = mounts.refused()
    assert refused is not None and refused.path == "/etc" and refused.mount is None
    assert "left the mount table" in refused.problem


def test_check_close_releases_every_fd():
    """The fds a check held are closed with it (a with block, or close twice)."""
    before = set(os.listdir("/proc/self/fd"))
    mounts = MountCheck()
    mounts.lstat("/")
    mounts.lstat("/etc")
    mounts.close()
    mounts.close()
    assert set(os.listdir("/proc/self/fd")) == before


def test_the_walk_refuses_a_path_on_a_users_fuse_mount(monkeypatch):
    """Every path a trust check walks is judged by its mount: a user's FUSE mount under /etc is refused."""

    def as_users_fuse(ids: set[int]) -> dict[int, str]:
        # Every mount the walk saw, presented as a bindfs that uid 1000 mounted at /etc.
        return {i: text("fuse.bindfs", BINDFS_BY_USER, point="/etc", mount_id=i) for i in ids}

    monkeypatch.setattr(usermounts, "lines_by_id", as_users_fuse)
    for check in (check_directory, check_directory_chain):
        with pytest.raises(UnsafeDirectoryError) as err:
            check("/etc")
        assert err.value.path == "/"  # the first path looked at
        assert err.value.mount_problem is not None and err.value.user_mount is not None
        assert "FUSE filesystem mounted by uid 1000" in str(err.value)
        assert "fix: move it to a filesystem root mounted" in str(err.value)
