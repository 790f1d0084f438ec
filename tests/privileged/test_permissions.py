"""Permission checks of the config and the scripts on real files owned by root and by others.

Root is needed to chown files to another uid. pytest's tmp_path lies under
/tmp, which the directory rule refuses, so every test builds its files in a
root-only directory under /run (``secure_dir``), removed by its finalizer.
Nothing here freezes anything.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.azure.permissions import read_config_file
from quiesce.azure.text import MAX_CONFIG_BYTES
from quiesce.errors import (
    ConfigNotFoundError,
    ConfigPermissionError,
    ScriptNotFound,
    ScriptPermissionError,
)
from quiesce.supervise.checked import open_script

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="privileged test: needs root"),
]

PERMISSION_NAMES = {
    "pre": "InsufficientPermissionforPre-Script",
    "post": "InsufficientPermissionforPost-Script",
}
NOT_FOUND_NAMES = {"pre": "Pre-ScriptNotFound", "post": "Post-ScriptNotFound"}
CONFIG_NAME = "IncorrectJSONConfigFile"
OTHER_UID = 1000
SCRIPT = "#!/bin/sh\necho original\n"
CONFIG = b'{"pluginName": "ScriptRunner", "timeoutInSeconds": 30}\n'


@pytest.fixture
def secure_dir() -> Iterator[Path]:
    """A directory only root can write, on a chain only root can write (/, /run)."""
    for ancestor in ("/", "/run"):
        st = os.stat(ancestor)
        if st.st_uid != 0 or st.st_mode & 0o022:
            pytest.skip(f"{ancestor} is not a root-only directory on this machine")
    path = tempfile.mkdtemp(prefix="quiesce-test-permissions-", dir="/run")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path)


def make_script(
    where: Path, name: str = "pre.sh", text: str = SCRIPT, mode: int = 0o700, uid: int = 0
) -> Path:
    """A script file with the given content, owner and mode (mode set last: writing clears setuid)."""
    path = where / name
    path.write_text(text)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def make_config(where: Path, mode: int = 0o600, uid: int = 0, data: bytes = CONFIG) -> Path:
    """A plugin config file with the given content, owner and mode."""
    path = where / "VMSnapshotScriptPluginConfig.json"
    path.write_bytes(data)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def make_dir(where: Path, name: str, mode: int = 0o755, uid: int = 0) -> Path:
    """A subdirectory with the given owner and mode."""
    path = where / name
    path.mkdir()
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def refused(path: Path | str, phase: str = "pre") -> str:
    """Open the script, expect ScriptPermissionError with the phase's Azure name, return the message."""
    with pytest.raises(ScriptPermissionError) as info:
        open_script(str(path), phase)
    assert info.value.phase == phase
    assert info.value.azure_name == PERMISSION_NAMES[phase]
    message = str(info.value)
    assert f"{phase}-script {path}" in message
    return message


def config_refused(path: Path | str) -> str:
    """Read the config, expect ConfigPermissionError (Azure code 317), return the message."""
    with pytest.raises(ConfigPermissionError) as info:
        read_config_file(str(path))
    assert info.value.azure_name == CONFIG_NAME
    assert info.value.azure_code == 317
    message = str(info.value)
    assert f"plugin config {path}" in message
    return message


def open_fd_count() -> int:
    """The number of fds this process has open."""
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------
# scripts that pass


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_good_script_accepted(secure_dir, phase):
    """A root-owned 700 script in a root-only directory opens; its fd is that file, cloexec, blocking."""
    path = make_script(secure_dir)
    with open_script(str(path), phase) as script:
        st = os.stat(path)
        fst = os.fstat(script.fd)
        assert (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino) == (script.dev, script.ino)
        assert script.path == str(path)
        assert script.real_path == str(path)
        assert script.phase == phase
        assert (script.uid, script.mode, script.size) == (0, 0o700, len(SCRIPT))
        assert script.has_shebang is True
        assert script.interpreter == "/bin/sh"
        assert fcntl.fcntl(script.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.get_blocking(script.fd)
        assert os.pread(script.fd, 100, 0) == SCRIPT.encode()
    assert script.closed


def test_group_and_other_readable_script_accepted(secure_dir):
    """755 passes: only write access for group or others is dangerous."""
    with open_script(str(make_script(secure_dir, mode=0o755)), "pre") as script:
        assert script.mode == 0o755


def test_binary_script_has_no_shebang(secure_dir):
    """A file without "#!" (an ELF binary, say) reports has_shebang False and no interpreter."""
    path = make_script(secure_dir, text="\x7fELF not really\n")
    with open_script(str(path), "post") as script:
        assert script.has_shebang is False
        assert script.interpreter is None


def test_empty_script_has_no_shebang(secure_dir):
    """An empty file is checked like any other and has no "#!"."""
    with open_script(str(make_script(secure_dir, text="")), "pre") as script:
        assert (script.has_shebang, script.size) == (False, 0)


def test_symlinked_directory_on_the_way_is_followed(secure_dir):
    """A symlink in the middle of the path, in a root-only directory, is followed; ".." applies after it."""
    real_dir = make_dir(secure_dir, "real")
    deeper = make_dir(real_dir, "deeper")
    path = make_script(real_dir)
    (secure_dir / "link").symlink_to("real/deeper")
    assert deeper.is_dir()
    given = f"{secure_dir}/link/../pre.sh"
    with open_script(given, "pre") as script:
        assert script.path == given
        assert script.real_path == str(path) == os.path.realpath(given)


# ---------------------------------------------------------------------------
# scripts refused: the file itself


@pytest.mark.parametrize(
    ("mode", "problem", "fix"),
    [
        (0o720, "is writable by group (owner uid 0 (root), mode 0720)", "chmod go-w"),
        (0o702, "is writable by others (owner uid 0 (root), mode 0702)", "chmod go-w"),
        (0o777, "is writable by group and others (owner uid 0 (root), mode 0777)", "chmod go-w"),
        (0o4700, "has the setuid bit (owner uid 0 (root), mode 4700)", "chmod ug-s"),
        (0o2700, "has the setgid bit (owner uid 0 (root), mode 2700)", "chmod ug-s"),
        (0o600, "is not executable by its owner (owner uid 0 (root), mode 0600)", "chmod u+x"),
        (0o500 | 0o020, "is writable by group (owner uid 0 (root), mode 0520)", "chmod go-w"),
    ],
)
def test_script_mode_refused(secure_dir, mode, problem, fix):
    """A script whose mode lets others write it, sets an id, or forbids its owner to run it is refused."""
    path = make_script(secure_dir, mode=mode)
    message = refused(path, "post")
    assert problem in message
    assert message.endswith(f"fix: {fix} {path}")


def test_script_owned_by_another_user_refused(secure_dir):
    """A script owned by uid 1000 is refused with chown root:root and chmod 700 as the fix."""
    path = make_script(secure_dir, uid=OTHER_UID)
    message = refused(path)
    assert f"is owned by uid {OTHER_UID}, not root" in message
    assert f"owner uid {OTHER_UID}" in message and "mode 0700" in message
    assert message.endswith(f"fix: chown root:root {path} && chmod 700 {path}")


def test_script_with_several_faults_lists_them_all(secure_dir):
    """Every fault is named at once, with one fix that clears them all."""
    path = make_script(secure_dir, mode=0o4766)
    message = refused(path)
    assert "is writable by group and others; has the setuid bit" in message
    assert message.endswith(f"fix: chmod go-w,ug-s {path}")


def test_symlink_to_good_script_refused(secure_dir):
    """A symlink is refused even to a good script, and the message names the real file to use."""
    target = make_script(secure_dir)
    link = secure_dir / "link.sh"
    link.symlink_to(target)
    message = refused(link)
    assert f"is a symlink (to {target}, owner uid 0 (root), mode 0700)" in message
    assert message.endswith(f"fix: point preScriptLocation at the real file {target}")


def test_dangling_symlink_refused_as_symlink(secure_dir):
    """A symlink to nothing is still a symlink: refused, with the missing target named."""
    link = secure_dir / "link.sh"
    link.symlink_to(secure_dir / "gone.sh")
    message = refused(link)
    assert "is a symlink" in message and "ENOENT" in message


def not_found(path: Path | str, phase: str = "pre") -> str:
    """Open the script, expect ScriptNotFound with the phase's Azure name, return the message."""
    with pytest.raises(ScriptNotFound) as info:
        open_script(str(path), phase)
    assert info.value.phase == phase
    assert (info.value.azure_name, info.value.azure_code) == (
        NOT_FOUND_NAMES[phase],
        302 if phase == "pre" else 303,
    )
    message = str(info.value)
    assert f"{phase}-script {path}" in message
    return message


@pytest.mark.parametrize("slash", ["", "/", "/."])
def test_directory_instead_of_script_is_not_found(secure_dir, slash):
    """A directory at the script's location is no script there: ScriptNotFound, as Azure's isfile says."""
    path = f"{make_dir(secure_dir, 'pre.sh', mode=0o700)}{slash}"
    message = not_found(path)
    assert "is a directory, not a regular file: no script there" in message
    assert message.endswith("fix: point preScriptLocation at the script file itself")


@pytest.mark.timeout(10)
def test_fifo_instead_of_script_is_not_found_without_blocking(secure_dir):
    """A FIFO at the script's location is no script, said at once (opening it must not wait for a writer)."""
    path = secure_dir / "pre.sh"
    os.mkfifo(path, 0o700)
    message = not_found(path, "post")
    assert "is a FIFO, not a regular file" in message


@pytest.mark.parametrize("tail", ["/", "/.", "//", "/./"])
def test_script_path_with_a_slash_after_the_file_is_not_found(secure_dir, tail):
    """A path "pre.sh/" names no file (the kernel says ENOTDIR): pre.sh must not run for it."""
    path = make_script(secure_dir)
    message = not_found(f"{path}{tail}")
    assert "ENOTDIR" in message


@pytest.mark.parametrize(
    ("name", "reason"),
    [("a" * 256, "ENAMETOOLONG"), ("a" * 5000, "ENAMETOOLONG"), ("a/" * 2100 + "pre.sh", "ENOENT")],
    ids=["over-NAME_MAX", "over-PATH_MAX", "long-missing-path"],
)
def test_script_name_too_long_for_the_kernel_is_not_found(secure_dir, name, reason):
    """A name no file can have (over NAME_MAX or PATH_MAX) is ScriptNotFound, not an unchecked error."""
    message = not_found(secure_dir / name)
    assert reason in message


def test_hard_linked_script_refused(secure_dir):
    """A script with a second hard link is refused, saying why and how to give it its own copy."""
    path = make_script(secure_dir)
    os.link(path, secure_dir / "old-copy.sh")
    message = refused(path)
    assert "has 2 hard links: another name for this file can keep a stale or altered copy" in message
    assert message.endswith(f"fix: cp -p {path} {path}.new && mv -f {path}.new {path}")


def test_hard_link_fix_works(secure_dir):
    """Running the suggested fix for a hard-linked script makes it pass."""
    path = make_script(secure_dir)
    os.link(path, secure_dir / "old-copy.sh")
    fix = refused(path).rsplit("fix: ", 1)[1]
    subprocess.run(["sh", "-c", fix], check=True)
    with open_script(str(path), "pre") as script:
        assert os.fstat(script.fd).st_nlink == 1


# ---------------------------------------------------------------------------
# scripts refused: the directories above


@pytest.mark.parametrize(("mode", "who"), [(0o775, "group"), (0o757, "others"), (0o777, "group and others")])
def test_writable_parent_directory_refused(secure_dir, mode, who):
    """A good script in a directory writable by group or others is refused, naming that directory."""
    parent = make_dir(secure_dir, "scripts", mode=mode)
    path = make_script(parent)
    message = refused(path)
    assert f"is in an unsafe directory: directory {parent} is writable by {who}" in message
    assert f"mode {mode:04o}" in message
    assert message.endswith(f"fix: chmod go-w {parent}")


def test_parent_directory_owned_by_another_user_refused(secure_dir):
    """A good script in a directory owned by uid 1000 is refused, even with mode 755."""
    parent = make_dir(secure_dir, "scripts", uid=OTHER_UID)
    path = make_script(parent)
    message = refused(path, "post")
    assert f"directory {parent} is owned by uid {OTHER_UID}, not root" in message
    assert f"owner uid {OTHER_UID}" in message
    assert f"fix: chown root:root {parent}, or move the file" in message


def test_grandparent_directory_checked(secure_dir):
    """Every ancestor counts, not only the nearest one."""
    outer = make_dir(secure_dir, "outer", mode=0o777)
    inner = make_dir(outer, "inner", mode=0o700)
    message = refused(make_script(inner))
    assert f"directory {outer} is writable by group and others" in message


def test_sticky_writable_parent_refused(secure_dir):
    """A sticky, world-writable directory (like /tmp) is refused, and the fix is to move, not chmod."""
    parent = make_dir(secure_dir, "shared", mode=0o1777)
    message = refused(make_script(parent))
    assert (
        f"directory {parent} is writable by group and others (the sticky bit does not make it safe" in message
    )
    assert "mode 1777" in message
    assert f"chmod go-w {parent}" not in message
    assert message.endswith(
        "fix: move the file to a directory only root can write, such as /etc/azure"
        f" ({parent} is a shared directory: do not change it)"
    )


def test_script_under_tmp_refused():
    """A root-owned 700 script under /tmp is refused because of /tmp itself."""
    if stat.S_IMODE(os.stat("/tmp").st_mode) != 0o1777:
        pytest.skip("/tmp is not 1777 here")
    where = Path(tempfile.mkdtemp(prefix="quiesce-test-permissions-", dir="/tmp"))
    try:
        message = refused(make_script(where))
        assert "directory /tmp is writable by group and others" in message
        assert "/tmp is a shared directory: do not change it" in message
    finally:
        shutil.rmtree(where)


def test_symlink_living_in_unsafe_directory_refused(secure_dir):
    """A symlink on the way that sits in a writable directory is refused: anyone could re-point it."""
    good = make_dir(secure_dir, "good")
    make_script(good)
    unsafe = make_dir(secure_dir, "unsafe", mode=0o777)
    (unsafe / "link").symlink_to(good)
    message = refused(f"{unsafe}/link/pre.sh")
    assert f"directory {unsafe} is writable by group and others" in message


def test_symlink_leading_into_unsafe_directory_refused(secure_dir):
    """A symlink on the way is followed, and the directories it leads to are checked too."""
    unsafe = make_dir(secure_dir, "unsafe", mode=0o777)
    make_script(unsafe)
    (secure_dir / "link").symlink_to(unsafe)
    message = refused(f"{secure_dir}/link/pre.sh")
    assert f"directory {unsafe} is writable by group and others" in message


def test_symlink_loop_is_not_found(secure_dir):
    """A symlink loop on the way leaves no file to find: ScriptNotFound naming ELOOP, not a traceback."""
    (secure_dir / "a").symlink_to("b")
    (secure_dir / "b").symlink_to("a")
    message = not_found(f"{secure_dir}/a/pre.sh")
    assert "does not exist" in message and "(ELOOP)" in message


# ---------------------------------------------------------------------------
# scripts not found


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_missing_script_not_found(secure_dir, phase):
    """No file at the location is ScriptNotFound with the phase's Azure name and the path."""
    path = secure_dir / f"{phase}.sh"
    with pytest.raises(ScriptNotFound) as info:
        open_script(str(path), phase)
    assert info.value.azure_name == NOT_FOUND_NAMES[phase]
    assert info.value.phase == phase
    message = str(info.value)
    assert f"{phase}-script {path} does not exist" in message
    assert f"fix: install the script there (owner root, mode 700) or correct {phase}ScriptLocation" in message


def test_missing_directory_not_found(secure_dir):
    """A missing directory on the way is ScriptNotFound too, naming the missing component."""
    path = secure_dir / "nowhere" / "pre.sh"
    with pytest.raises(ScriptNotFound) as info:
        open_script(str(path), "pre")
    assert f"(ENOENT) at {secure_dir / 'nowhere'}" in str(info.value)


# ---------------------------------------------------------------------------
# the fd is the file that was checked


def test_swapped_file_does_not_change_the_fd(secure_dir):
    """After open_script returns, renaming another file over the path leaves the fd on the original."""
    path = make_script(secure_dir)
    with open_script(str(path), "pre") as script:
        impostor = make_script(secure_dir, "impostor.sh", text="#!/bin/sh\necho swapped\n")
        os.rename(impostor, path)
        assert path.read_text() == "#!/bin/sh\necho swapped\n"
        assert os.pread(script.fd, 100, 0) == SCRIPT.encode()
        assert os.fstat(script.fd).st_ino != os.stat(path).st_ino


def test_swapped_file_never_runs(secure_dir):
    """Executing the fd (fexecve, i.e. execveat with AT_EMPTY_PATH) runs the checked script, not the swap."""
    if os.execve not in os.supports_fd:
        pytest.skip("no fexecve on this platform")
    path = make_script(secure_dir)
    with open_script(str(path), "pre") as script:
        make_script(secure_dir, "impostor.sh", text="#!/bin/sh\necho swapped\n")
        os.rename(secure_dir / "impostor.sh", path)
        # pass_fds hands the child a copy without close-on-exec, as the spawner's dup does:
        # /bin/sh reads the script through /dev/fd/N.
        code = f"import os; os.execve({script.fd}, ['pre.sh'], {{'PATH': '/usr/bin:/bin'}})"
        done = subprocess.run(
            [sys.executable, "-c", code], pass_fds=(script.fd,), capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "original\n"


def test_no_fd_leaks(secure_dir):
    """Many accepted and refused checks leave the number of open fds unchanged."""
    good = str(make_script(secure_dir, "good.sh"))
    bad_mode = str(make_script(secure_dir, "bad.sh", mode=0o777))
    make_script(secure_dir, "linked.sh")
    os.link(secure_dir / "linked.sh", secure_dir / "linked-again.sh")
    config = str(make_config(secure_dir))
    bad_config = str(make_config(make_dir(secure_dir, "c"), mode=0o644))
    before = open_fd_count()
    for _ in range(200):
        with open_script(good, "pre"):
            pass
        open_script(good, "post").close()
        for bad in (bad_mode, str(secure_dir / "linked.sh"), str(secure_dir / "missing.sh")):
            with pytest.raises((ScriptPermissionError, ScriptNotFound)):
                open_script(bad, "pre")
        read_config_file(config)
        with pytest.raises(ConfigPermissionError):
            read_config_file(bad_config)
    assert open_fd_count() == before


# ---------------------------------------------------------------------------
# the plugin config


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o200, 0o000])
def test_config_600_or_stricter_accepted(secure_dir, mode):
    """A root-owned config with mode 600 or stricter is read, and the bytes are the file's."""
    path = make_config(secure_dir, mode=mode)
    assert read_config_file(str(path)) == CONFIG


def test_config_bytes_come_from_the_checked_file(secure_dir):
    """The bytes returned are exactly the file's, including ones that are not valid text."""
    data = b'{"a": "\xff\x00"}'
    assert read_config_file(str(make_config(secure_dir, data=data))) == data


def test_config_size_capped_one_byte_past_the_limit(secure_dir):
    """An oversized config yields MAX_CONFIG_BYTES + 1 bytes, so the caller can reject it."""
    path = make_config(secure_dir, data=b" " * (MAX_CONFIG_BYTES + 4096))
    assert len(read_config_file(str(path))) == MAX_CONFIG_BYTES + 1
    exact = make_config(make_dir(secure_dir, "exact"), data=b" " * MAX_CONFIG_BYTES)
    assert len(read_config_file(str(exact))) == MAX_CONFIG_BYTES


@pytest.mark.parametrize(
    ("mode", "bits"),
    [(0o644, "0044"), (0o700, "0100"), (0o640, "0040"), (0o606, "0006"), (0o4600, "4000")],
)
def test_config_mode_refused(secure_dir, mode, bits):
    """Any group or other bit, the owner execute bit, or a special bit is refused; the fix is chmod 600."""
    path = make_config(secure_dir, mode=mode)
    message = config_refused(path)
    assert f"has mode bits {bits} set: only owner read and write are allowed (600 or stricter)" in message
    assert f"owner uid 0 (root), mode {mode:04o}" in message
    assert message.endswith(f"fix: chmod 600 {path}")


def test_config_owned_by_another_user_refused(secure_dir):
    """A config owned by uid 1000 is refused with chown root:root and chmod 600 as the fix."""
    path = make_config(secure_dir, uid=OTHER_UID)
    message = config_refused(path)
    assert f"is owned by uid {OTHER_UID}, not root (owner uid {OTHER_UID}" in message
    assert message.endswith(f"fix: chown root:root {path} && chmod 600 {path}")


def test_config_symlink_refused(secure_dir):
    """A symlink to a good config is refused; the fix replaces the link with the file."""
    target = make_config(secure_dir)
    link = secure_dir / "link.json"
    link.symlink_to(target)
    message = config_refused(link)
    assert f"is a symlink (to {target}, owner uid 0 (root), mode 0600)" in message
    assert f"fix: replace it with the file: cp --remove-destination {target} {link}" in message


def test_config_missing_not_found(secure_dir):
    """A missing config is ConfigNotFoundError (Azure code 316) naming the path."""
    path = secure_dir / "VMSnapshotScriptPluginConfig.json"
    with pytest.raises(ConfigNotFoundError) as info:
        read_config_file(str(path))
    assert info.value.azure_name == CONFIG_NAME
    assert info.value.azure_code == 316
    assert f"plugin config {path} does not exist" in str(info.value)
    assert "create it (owner root, mode 600)" in str(info.value)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_config_in_writable_directory_refused(secure_dir, mode):
    """A good config in a directory others can write is refused, naming the directory."""
    parent = make_dir(secure_dir, "azure", mode=mode)
    message = config_refused(make_config(parent))
    assert f"is in an unsafe directory: directory {parent} is writable by" in message
    assert f"mode {mode:04o}" in message


@pytest.mark.timeout(10)
def test_config_fifo_refused_without_blocking(secure_dir):
    """A FIFO at the config's location is refused at once."""
    path = secure_dir / "VMSnapshotScriptPluginConfig.json"
    os.mkfifo(path, 0o600)
    assert "is a FIFO, not a regular file" in config_refused(path)


def test_relative_config_path_checked_from_cwd(secure_dir, monkeypatch):
    """A relative config path is read through the current directory, whose chain is checked."""
    make_config(secure_dir)
    monkeypatch.chdir(secure_dir)
    assert read_config_file("VMSnapshotScriptPluginConfig.json") == CONFIG


# ---------------------------------------------------------------------------
# the plugin host INI and vmbackup.conf: checked like the config


PLUGINHOST = "[pre_post]\nnumberOfPlugins = 0\ntimeoutInSeconds = 60\n"
VMBACKUP = "[SnapshotThread]\nMountsToSkip = /mnt/resource\n"


def make_file(where: Path, name: str, text: str, mode: int, uid: int = 0) -> Path:
    """A file with the given content, owner and mode."""
    path = where / name
    path.write_text(text)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("mode", "uid", "problem"), [(0o666, 0, "mode bits 0066"), (0o600, 65534, "uid 65534")]
)
def test_unsafe_pluginhost_is_incorrect_pluginhost_file(secure_dir, mode, uid, problem):
    """A plugin host INI that others can write, or that another user owns: 304, never used."""
    from quiesce.errors import IncorrectPluginhostFile
    from quiesce.runner.run import load_checked_pluginhost

    path = make_file(secure_dir, "VMSnapshotPluginHost.conf", PLUGINHOST, mode, uid)
    with pytest.raises(IncorrectPluginhostFile) as info:
        load_checked_pluginhost(str(path))
    assert info.value.azure_code == 304
    assert f"plugin host file {path}" in str(info.value) and problem in str(info.value)
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)
    host = load_checked_pluginhost(str(path))
    assert host is not None and host.timeout_s == 60
    assert load_checked_pluginhost(str(secure_dir / "absent.conf")) is None


def test_pluginhost_in_an_unsafe_directory_is_refused(secure_dir):
    """The directory chain counts for the plugin host INI as for the config."""
    from quiesce.errors import IncorrectPluginhostFile
    from quiesce.runner.run import load_checked_pluginhost

    shared = make_dir(secure_dir, "shared", mode=0o777)
    path = make_file(shared, "VMSnapshotPluginHost.conf", PLUGINHOST, 0o600)
    with pytest.raises(IncorrectPluginhostFile, match="is in an unsafe directory"):
        load_checked_pluginhost(str(path))


def test_unsafe_vmbackup_conf_is_refused_and_a_readable_one_is_fine(secure_dir):
    """vmbackup.conf steers the freeze: writable by others is refused; 644 (Azure's own) is fine."""
    from quiesce.azure.planning import make_plan
    from quiesce.errors import VmbackupConfError

    path = make_file(secure_dir, "vmbackup.conf", VMBACKUP, 0o666)
    with pytest.raises(VmbackupConfError, match=r"vmbackup.conf .* has mode bits 0022"):
        make_plan(vmbackup_conf=str(path))
    os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)
    with pytest.raises(VmbackupConfError, match="uid 65534"):
        make_plan(vmbackup_conf=str(path))
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)
    plan = make_plan(vmbackup_conf=str(path))
    assert "/" in {t.mount.mount_point for t in plan.targets}


def test_a_missing_config_is_reported_missing_before_its_directory(tmp_path):
    """--config /tmp/nope.json: "does not exist" (316), not "unsafe directory /tmp"."""
    from quiesce.errors import ConfigNotFoundError

    path = tmp_path / "nope.json"
    with pytest.raises(ConfigNotFoundError) as info:
        read_config_file(str(path))
    assert info.value.azure_code == 316 and "does not exist" in str(info.value)
