"""Named targets: resolved without trusting user-planted links; a target that matches nothing is an error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from quiesce.azure.config import Extensions
from quiesce.azure.planning import check_config_targets, make_plan, plan_config
from quiesce.engine import targets as targets_mod
from quiesce.engine.mountfd import open_target
from quiesce.engine.mountinfo import Mount, parse_mountinfo
from quiesce.engine.plan import SkipReason, Target
from quiesce.engine.selection import select
from quiesce.engine.targets import check_explicit, resolve_target
from quiesce.engine.usermounts import mount_id_of_fd
from quiesce.errors import IncorrectJSONConfigFile, QuiesceOSError, TargetError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a trusted directory")


def row(mount_id: int, dev: str, mount_point: str, fstype: str = "ext4", source: str = "/dev/sda1") -> str:
    """One mountinfo line."""
    return f"{mount_id} 1 {dev} / {mount_point} rw,relatime shared:1 - {fstype} {source} rw"


def mountinfo(tmp_path: Path, *rows: str) -> str:
    """A mountinfo file with ``/`` plus ``rows``; returns its path."""
    path = tmp_path / "mountinfo"
    path.write_text("\n".join([row(1, "8:1", "/"), *rows]) + "\n")
    return str(path)


def no_loops(major: int, minor: int) -> str | None:
    """A loop_backing that knows no loop device."""
    return None


# ---------------------------------------------------------------------------
# resolve_target


def test_a_symlink_in_a_directory_others_can_write_is_refused(tmp_path):
    """/srv/u/app -> elsewhere, where another user can write /srv/u: never followed, named instead."""
    user_dir = tmp_path / "u"
    user_dir.mkdir()
    user_dir.chmod(0o777)
    (tmp_path / "elsewhere").mkdir()
    (user_dir / "app").symlink_to(tmp_path / "elsewhere")
    res = resolve_target(str(user_dir / "app" / "data"))
    assert res.path is None
    assert f"goes through the symlink {user_dir / 'app'}, in {user_dir}" in str(res.problem)
    assert "name the mount point itself" in str(res.problem)


@needs_root
def test_a_symlink_in_a_directory_another_user_owns_is_refused(tmp_path):
    """A directory owned by uid 65534 (mode 755): its symlinks are that user's to re-point."""
    user_dir = tmp_path / "u"
    user_dir.mkdir(mode=0o755)
    os.chown(user_dir, 65534, 65534)
    (user_dir / "app").symlink_to("/")
    res = resolve_target(str(user_dir / "app"))
    assert res.path is None and "is owned by uid 65534" in str(res.problem)


@needs_root
def test_a_symlink_in_a_root_only_directory_is_followed(tmp_path):
    """A link only root could have made leads to the path it names; the link is recorded."""
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o755)
    (tmp_path / "real").mkdir()
    (trusted / "data").symlink_to(tmp_path / "real")
    res = resolve_target(str(trusted / "data"))
    assert (res.path, res.problem, res.links) == (str(tmp_path / "real"), None, (str(trusted / "data"),))


@needs_root
def test_a_link_to_root_never_selects_root(tmp_path):
    """Even a root-made link that leads to / is refused: / is frozen only when named as /."""
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o755)
    (trusted / "data").symlink_to("/")
    res = resolve_target(str(trusted / "data"))
    assert res.path is None and "resolves to / through the symlink" in str(res.problem)
    assert resolve_target("/").path == "/"
    assert resolve_target("//").path == "/"


def test_a_missing_path_is_named(tmp_path):
    """A typo is "no such file or directory", naming what was written."""
    res = resolve_target(str(tmp_path / "typo" / "data"))
    assert res.path is None
    assert str(res.problem).startswith(f"{tmp_path / 'typo' / 'data'}: no such file or directory")


# ---------------------------------------------------------------------------
# plans with named targets


def test_a_directory_inside_a_mount_names_the_mount(tmp_path):
    """A directory that is not a mount point is refused, naming the filesystem it lives on."""
    (tmp_path / "data" / "db").mkdir(parents=True)
    info = mountinfo(tmp_path, row(2, "8:2", str(tmp_path / "data"), "xfs"))
    plan = make_plan([str(tmp_path / "data" / "db")], vmbackup_conf=None, mountinfo=info)
    assert plan.targets == ()
    with pytest.raises(TargetError) as err:
        check_explicit(plan, [str(tmp_path / "data" / "db")])
    message = str(err.value)
    assert f"{tmp_path / 'data' / 'db'}: not a mount point" in message
    assert f"on the filesystem mounted at {tmp_path / 'data'} (xfs, 8:2)" in message


def test_a_typo_among_good_targets_is_an_error_not_a_smaller_freeze(tmp_path):
    """One good target and one typo: the plan says so, and check_explicit refuses the whole freeze."""
    (tmp_path / "data").mkdir()
    info = mountinfo(tmp_path, row(2, "8:2", str(tmp_path / "data")))
    named = [str(tmp_path / "data"), str(tmp_path / "dtaa")]
    plan = make_plan(named, vmbackup_conf=None, mountinfo=info)
    assert [t.mount.mount_point for t in plan.targets] == [str(tmp_path / "data")]
    assert [given for given, _ in plan.problems] == [str(tmp_path / "dtaa")]
    with pytest.raises(TargetError, match="dtaa: no such file or directory"):
        check_explicit(plan, named)


def test_a_glob_matching_nothing_is_an_error(tmp_path):
    """A glob that matches no mount point is named as such."""
    info = mountinfo(tmp_path, row(2, "8:2", str(tmp_path / "data")))
    plan = make_plan([str(tmp_path / "nothing*")], vmbackup_conf=None, mountinfo=info)
    with pytest.raises(TargetError, match=r"nothing\*: matches no mount point"):
        check_explicit(plan, [str(tmp_path / "nothing*")])


def test_config_targets_that_match_nothing_are_a_config_error(tmp_path, monkeypatch):
    """quiesce.targets with a typo: IncorrectJSONConfigFile (305) naming the key and the target."""
    (tmp_path / "data").mkdir()
    info = mountinfo(tmp_path, row(2, "8:2", str(tmp_path / "data")))
    monkeypatch.setattr(targets_mod, "read_mountinfo", lambda path: parse_mountinfo(Path(info).read_text()))
    ext = Extensions(targets=(str(tmp_path / "data"), str(tmp_path / "dtaa")))
    with pytest.raises(TargetError, match=r"quiesce.targets: cannot freeze: .*dtaa"):
        plan_config(ext, vmbackup_conf=None)
    with pytest.raises(IncorrectJSONConfigFile) as err:
        check_config_targets(ext, vmbackup_conf=None, source="/etc/azure/c.json")
    assert err.value.azure_code == 305
    assert str(err.value).startswith("/etc/azure/c.json: quiesce.targets: cannot freeze:")
    good = plan_config(Extensions(targets=(str(tmp_path / "data"),)), vmbackup_conf=None)
    assert [t.mount.mount_point for t in good.targets] == [str(tmp_path / "data")]


# ---------------------------------------------------------------------------
# loop devices whose image lives on FUSE or a network filesystem


def _loop_plan(**options):
    mounts = parse_mountinfo(
        "\n".join(
            [
                row(1, "8:1", "/"),
                row(2, "0:50", "/home/u/remote", "fuse.sshfs", "u@host:"),
                row(3, "0:51", "/srv/nfs", "nfs4", "server:/export"),
                row(4, "7:0", "/img", source="/dev/loop0"),
                row(5, "7:1", "/img2", source="/dev/loop1"),
                row(6, "7:2", "/nfsimg", source="/dev/loop2"),
                row(7, "8:3", "/data"),
            ]
        )
    )
    backing = {(7, 0): "/home/u/remote/disk.img", (7, 1): "/img/inner.img", (7, 2): "/srv/nfs/d.img"}
    return select(
        mounts, loop_backing=lambda ma, mi: backing.get((ma, mi)), source_device=lambda p: None, **options
    )


def test_a_loop_filesystem_on_fuse_or_nfs_is_skipped_with_its_reason():
    """The image on FUSE (and one stacked on it) and the image on NFS are skipped, each named."""
    plan = _loop_plan()
    assert [t.mount.mount_point for t in plan.targets] == ["/data", "/"]
    by_point = {s.mount.mount_point: s for s in plan.skipped}
    assert by_point["/img"].reason is SkipReason.FUSE_BACKED
    assert "/home/u/remote/disk.img lives on fuse.sshfs at /home/u/remote" in by_point["/img"].detail
    assert "--loop-backing-fstype fuse.sshfs" in by_point["/img"].detail
    assert by_point["/img2"].reason is SkipReason.FUSE_BACKED  # through /img, itself on FUSE
    assert by_point["/nfsimg"].reason is SkipReason.NETWORK_BACKED


def test_loop_backing_fstypes_opts_in():
    """Naming the backing types (or a glob) keeps those loop filesystems freezable."""
    plan = _loop_plan(loop_backing_fstypes=["fuse.*", "nfs4"])
    assert {t.mount.mount_point for t in plan.targets} == {"/img", "/img2", "/nfsimg", "/data", "/"}


def test_a_named_fuse_backed_target_is_refused_with_the_reason(tmp_path):
    """Naming such a filesystem explicitly is an error that says why and how to opt in."""
    plan = _loop_plan(include=["/img"])
    with pytest.raises(TargetError) as err:
        check_explicit(plan, ["/img"])
    assert "/img: fuse-backed: on a loop device whose image" in str(err.value)


# ---------------------------------------------------------------------------
# opening a planned mount point


def _target_at(path: Path, mount_id: int, dev: str = "8:1") -> Target:
    mount = Mount(
        mount_id, 1, *map(int, dev.split(":")), "/", str(path), ("rw",), (), "ext4", "/dev/x", ("rw",)
    )
    return Target(mount, None, None)


def _mount_id(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mnt = mount_id_of_fd(fd)
    finally:
        os.close(fd)
    assert mnt is not None
    return mnt


def test_open_target_refuses_a_link_in_the_mount_points_path(tmp_path):
    """A symlink planted in the planned path (any component) is never followed."""
    (tmp_path / "real" / "mnt").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    mnt = _mount_id(tmp_path / "real" / "mnt")
    for planted in (tmp_path / "link" / "mnt", tmp_path / "link"):
        with pytest.raises(QuiesceOSError) as err:
            open_target(_target_at(planted, mnt))
        assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)
    os.close(open_target(_target_at(tmp_path / "real" / "mnt", mnt)))


def test_open_target_checks_mount_id_and_device_on_the_fd(tmp_path):
    """Another mount ID, or the same ID now naming another device, is a changed mount."""
    mnt = _mount_id(tmp_path)
    with pytest.raises(TargetError, match="the mount changed since it was planned"):
        open_target(_target_at(tmp_path, mnt + 100000))
    now = _target_at(tmp_path, mnt, "9:9").mount
    with pytest.raises(TargetError, match=r"is now 9:9 at .*, planned 8:1"):
        open_target(_target_at(tmp_path, mnt, "8:1"), {mnt: now})
    os.close(open_target(_target_at(tmp_path, mnt, "9:9"), {mnt: now}))


def test_a_glob_matching_only_unfreezable_mounts_is_an_error(tmp_path):
    """A glob whose every match is skipped (pseudo, not freezable) selects nothing: named with reasons."""
    info = mountinfo(
        tmp_path,
        row(2, "0:30", "/dev/shm", "tmpfs", "tmpfs"),
        row(3, "8:2", "/data"),
    )
    plan = make_plan(["/data", "/dev/sh*"], vmbackup_conf=None, mountinfo=info)
    with pytest.raises(
        TargetError, match=r"/dev/sh\*: matches no freezable filesystem \(only /dev/shm pseudo\)"
    ):
        check_explicit(plan, ["/data", "/dev/sh*"])
    fine = make_plan(["/dat*"], vmbackup_conf=None, mountinfo=info)
    check_explicit(fine, ["/dat*"])
