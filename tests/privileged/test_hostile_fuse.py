"""A local user's FUSE mount against what quiesce trusts as root.

The user (``nobody``) mounts ``bindfs`` on a directory of theirs below
root's, through the setuid ``fusermount``, showing their own files as owner
root, mode 755 (``--force-user=root``): ``stat()`` there says what the
user's FUSE server says. With ``user_allow_other`` in ``/etc/fuse.conf``
root sees the mount, and the old checks took such a file as root's alone.
Everything here lives in the tests' private mount namespace: a private
``/etc/fuse.conf`` that allows ``allow_other``, and a private ``/dev/fuse``
node any user may open (as distributions ship it), are bind-mounted over
the machine's for the test and unmounted after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quiesce.azure.permissions import read_config_file
from quiesce.engine.mountinfo import read_mountinfo
from quiesce.engine.rundir import open_safe_dir
from quiesce.engine.targets import resolve_target
from quiesce.engine.trust import UnsafeDirectoryError, check_directory
from quiesce.errors import ConfigPermissionError, ScriptPermissionError, UnsafeRunDirError
from quiesce.fleet.credentials import CredentialFileError, checked
from quiesce.qga.fshook import FsfreezeHook
from quiesce.supervise.checked import open_script
from quiesce.supervise.hookdir import discover
from quiesce.supervise.snapshot_command import run_command

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

NOBODY = 65534
FUSE_DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _umount(path: str | Path) -> None:
    """Unmount ``path``; detach it lazily if something (a failed test's fd) still holds it."""
    if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True)


@pytest.fixture
def fuse_allowed(base: Path) -> Iterator[None]:
    """FUSE as a user may use it: /dev/fuse open to all, ``user_allow_other`` set (this namespace only)."""
    if not os.path.exists(FUSE_DEVICE):
        pytest.skip(f"FUSE is unavailable: no {FUSE_DEVICE}")
    assert shutil.which("bindfs"), "bindfs is not installed (apt-get install bindfs)"
    # libfuse 2's or 3's setuid helper, whichever bindfs was built with.
    assert shutil.which("fusermount") or shutil.which("fusermount3"), "no fusermount (apt-get install bindfs)"
    assert os.path.exists(FUSE_CONF), f"{FUSE_CONF} is missing (the fuse package installs it)"
    private = base / "private"
    private.mkdir()
    # A tmpfs of our own: /run may be nodev, and a device node there could not be opened.
    _mount("-t", "tmpfs", "-o", "mode=755", "quiesce-test-fuse", str(private))
    mounted = [private]
    try:
        dev = os.stat(FUSE_DEVICE).st_rdev
        os.mknod(private / "fuse", 0o20666, dev)
        os.chmod(private / "fuse", 0o666)
        (private / "fuse.conf").write_text("user_allow_other\n")
        for source, target in ((private / "fuse", FUSE_DEVICE), (private / "fuse.conf", FUSE_CONF)):
            _mount("--bind", str(source), target)
            mounted.append(Path(target))
        yield
    finally:
        for path in reversed(mounted):
            _umount(path)


@dataclass
class FuseMount:
    """A bindfs mount: its mount point, and the directory whose files it shows."""

    point: Path
    source: Path


@contextlib.contextmanager
def bindfs(source: Path, point: Path, uid: int) -> Iterator[FuseMount]:
    """``bindfs --force-user=root`` of ``source`` on ``point``, mounted by ``uid``; unmounted after."""
    argv = ["bindfs", "-f", "-o", "allow_other", "--force-user=root", "--force-group=root"]
    process = subprocess.Popen(
        [*argv, str(source), str(point)],
        user=uid,
        group=uid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not any(m.mount_point == str(point) and m.fstype.startswith("fuse") for m in read_mountinfo()):
            if process.poll() is not None:
                pytest.fail(f"bindfs as uid {uid} did not mount: {process.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "bindfs did not mount within 10 s"
            time.sleep(0.02)
        yield FuseMount(point, source)
    finally:
        _umount(point)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def user_files(base: Path, owner: int) -> Path:
    """What a user serves: a script, a shell, a config, a CA file, hooks, a link; owned by ``owner``."""
    source = base / f"src-{owner}"
    source.mkdir(mode=0o755)
    (source / "pre.sh").write_text(f"#!/bin/sh\ntouch {base}/ran\n")
    (source / "pre.sh").chmod(0o700)
    shutil.copy("/bin/sh", source / "sh")
    (source / "sh").chmod(0o755)
    (source / "config.json").write_text("{}")
    (source / "config.json").chmod(0o600)
    (source / "ca.pem").write_text("not a certificate\n")
    (source / "ca.pem").chmod(0o644)
    (source / "hooks").mkdir(mode=0o755)
    os.symlink("/", source / "data")
    for path in (source, *source.rglob("*")):
        os.lchown(path, owner, owner)
    return source


@pytest.fixture
def user_fuse(base: Path, fuse_allowed: None) -> Iterator[FuseMount]:
    """bindfs mounted by the user on a directory of theirs, showing their files as root's (755, 700...)."""
    point = base / "home"
    point.mkdir(mode=0o755)
    os.chown(point, NOBODY, NOBODY)
    with bindfs(user_files(base, NOBODY), point, NOBODY) as mount:
        yield mount


def test_the_users_fuse_shows_root_owned_files(user_fuse):
    """The premise: through the mount, the user's files look root's and safe."""
    for name in ("", "pre.sh", "sh", "config.json"):
        st = os.lstat(user_fuse.point / name)
        assert st.st_uid == 0 and not st.st_mode & 0o022, name
    assert os.lstat(user_fuse.source / "pre.sh").st_uid == NOBODY


def _assert_names_the_mount(message: str, mount: FuseMount) -> None:
    assert "FUSE filesystem mounted by uid 65534 (nobody)" in message
    assert f"at {mount.point}" in message


def test_script_and_config_on_a_users_fuse_are_refused(user_fuse, base):
    """A pre-script and a config the user serves as root's: refused, naming the mount and the mounter."""
    with pytest.raises(ScriptPermissionError) as err:
        open_script(str(user_fuse.point / "pre.sh"), "pre")
    _assert_names_the_mount(str(err.value), user_fuse)
    assert err.value.azure_name == "InsufficientPermissionforPre-Script"
    with pytest.raises(ConfigPermissionError) as config_err:
        read_config_file(str(user_fuse.point / "config.json"))
    _assert_names_the_mount(str(config_err.value), user_fuse)
    assert not (base / "ran").exists()


def test_programs_run_by_path_on_a_users_fuse_never_run(user_fuse, base):
    """The snapshot command and qemu-ga's fsfreeze hook the user serves: not run."""
    program = str(user_fuse.point / "pre.sh")
    attempt = run_command([program], timeout_s=10, grace_s=1, env={}, run_id="hostile-fuse")
    assert attempt.outcome == "spawn-failed"
    _assert_names_the_mount(attempt.error or "", user_fuse)
    outcome = FsfreezeHook(program, required=True).run("freeze")
    assert outcome.error is not None
    _assert_names_the_mount(outcome.error, user_fuse)
    assert not (base / "ran").exists()


def test_interpreter_on_a_users_fuse_is_refused(user_fuse, base):
    """A root script in a root directory whose #! interpreter the user serves: refused."""
    script = base / "pre.sh"
    script.write_text(f"#!{user_fuse.point}/sh\nexit 0\n")
    script.chmod(0o700)
    with pytest.raises(ScriptPermissionError, match="interpreter") as err:
        open_script(str(script), "pre")
    _assert_names_the_mount(str(err.value), user_fuse)


def test_directories_and_credentials_on_a_users_fuse_are_refused(user_fuse):
    """The mount point itself as a hook or run directory, a directory in it, the agent's CA file: refused."""
    for directory in (user_fuse.point, user_fuse.point / "hooks"):
        with pytest.raises(UnsafeDirectoryError) as err:
            check_directory(str(directory))
        _assert_names_the_mount(str(err.value), user_fuse)
        assert err.value.user_mount is not None and err.value.user_mount.mount_point == str(user_fuse.point)
        found = discover(str(directory))
        assert found.error is not None and "FUSE" in found.error and not found.hooks
        with pytest.raises(UnsafeRunDirError) as run_dir_err:
            open_safe_dir(str(directory), create=False)
        _assert_names_the_mount(str(run_dir_err.value), user_fuse)
        assert "chown" not in str(run_dir_err.value)  # no chown makes a user's FUSE mount root's
    with pytest.raises(CredentialFileError) as cred_err:
        checked("--cacert", str(user_fuse.point / "ca.pem"), secret=False)
    _assert_names_the_mount(str(cred_err.value), user_fuse)


def test_target_through_a_link_on_a_users_fuse_is_refused(user_fuse):
    """A target named through a link the user serves (it could point at any filesystem) is refused."""
    resolved = resolve_target(str(user_fuse.point / "data" / "run"))
    assert resolved.path is None
    assert resolved.problem is not None and "FUSE filesystem mounted by uid 65534" in resolved.problem


def test_a_fuse_mount_by_root_is_trusted_as_before(base, fuse_allowed):
    """bindfs mounted by root (user_id=0): its root-owned files pass the checks as any of root's."""
    point = base / "rootfuse"
    point.mkdir(mode=0o755)
    with bindfs(user_files(base, 0), point, 0) as mount:
        with open_script(str(mount.point / "pre.sh"), "pre") as script:
            assert script.uid == 0
        assert read_config_file(str(mount.point / "config.json")) == b"{}"
        check_directory(str(mount.point / "hooks"))
