"""Tests of the permission checks that need no root: messages, fixes, error mapping, fd ownership."""

from __future__ import annotations

import errno
import gc
import os
import pwd
import stat
from pathlib import Path

import pytest

from quiesce.azure.permissions import read_config_file
from quiesce.engine.trust import UnsafeDirectoryError, check_directory_chain, fix_for, owner_and_mode
from quiesce.errors import (
    ConfigNotFoundError,
    ConfigPermissionError,
    ScriptNotFound,
    ScriptPermissionError,
)
from quiesce.supervise.checked import CheckedScript, open_script, parse_shebang

PERMISSION_NAMES = {
    "pre": "InsufficientPermissionforPre-Script",
    "post": "InsufficientPermissionforPost-Script",
}
NOT_FOUND_NAMES = {"pre": "Pre-ScriptNotFound", "post": "Post-ScriptNotFound"}

# A top-level name that does not exist, so lookups fail at "/" without root.
MISSING_TOP = "/quiesce-test-no-such-directory"


def fake_stat(mode: int, uid: int = 0, nlink: int = 1) -> os.stat_result:
    """A stat result with the given mode (type and permission bits), owner and link count."""
    return os.stat_result((mode, 1, 1, nlink, uid, 0, 0, 0, 0, 0))


def unused_uid() -> int:
    """A uid with no passwd entry."""
    uid = 2_000_000_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def under_sticky_tmp(path: Path) -> bool:
    """True when ``path`` lies under /tmp and /tmp is the usual sticky, world-writable 1777."""
    st = os.stat("/tmp")
    return str(path).startswith("/tmp/") and stat.S_IMODE(st.st_mode) == 0o1777


# ---------------------------------------------------------------------------
# parse_shebang


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"#!/bin/sh\necho hi\n", (True, "/bin/sh")),
        (b"#! /usr/bin/env python3 -u\n", (True, "/usr/bin/env")),
        (b"#!\t/bin/bash\t-e\n", (True, "/bin/bash")),
        (b"#!/bin/sh", (True, "/bin/sh")),
        (b"#!\n", (True, None)),
        (b"#!", (True, None)),
        (b"", (False, None)),
        (b"\x7fELF\x02\x01", (False, None)),
        (b" #!/bin/sh\n", (False, None)),
        (b"#!/opt/\xff/sh\n", (True, os.fsdecode(b"/opt/\xff/sh"))),
        (b"#!/bin/sh\r\necho\r\n", (True, "/bin/sh\r")),
    ],
)
def test_parse_shebang(head, expected):
    """The "#!" flag and the interpreter are read the way the kernel reads the first line."""
    assert parse_shebang(head) == expected


# ---------------------------------------------------------------------------
# fix_for and owner_and_mode


@pytest.mark.parametrize(
    ("mode", "uid", "nlink", "fix"),
    [
        (0o100700, 0, 1, ""),
        (0o100755, 0, 1, ""),
        (0o100770, 0, 1, "chmod go-w /x/pre.sh"),
        (0o104700, 0, 1, "chmod ug-s /x/pre.sh"),
        (0o100600, 0, 1, "chmod u+x /x/pre.sh"),
        (0o102666, 0, 1, "chmod go-w,ug-s,u+x /x/pre.sh"),
        (0o100700, 1000, 1, "chown root:root /x/pre.sh && chmod 700 /x/pre.sh"),
        (0o100700, 0, 2, "cp -p /x/pre.sh /x/pre.sh.new && mv -f /x/pre.sh.new /x/pre.sh"),
        (
            0o100722,
            0,
            3,
            "chmod go-w /x/pre.sh && cp -p /x/pre.sh /x/pre.sh.new && mv -f /x/pre.sh.new /x/pre.sh",
        ),
    ],
)
def test_fix_for_script(mode, uid, nlink, fix):
    """A script's fix is the smallest command that clears exactly what is wrong."""
    assert fix_for("script", "/x/pre.sh", fake_stat(mode, uid, nlink)) == fix


@pytest.mark.parametrize(
    ("mode", "uid", "fix"),
    [
        (0o100600, 0, ""),
        (0o100400, 0, ""),
        (0o100644, 0, "chmod 600 /etc/azure/c.json"),
        (0o100700, 0, "chmod 600 /etc/azure/c.json"),
        (0o104600, 0, "chmod 600 /etc/azure/c.json"),
        (0o100600, 1000, "chown root:root /etc/azure/c.json && chmod 600 /etc/azure/c.json"),
    ],
)
def test_fix_for_config(mode, uid, fix):
    """A config's fix makes it root's with mode 600."""
    assert fix_for("config", "/etc/azure/c.json", fake_stat(mode, uid)) == fix


def test_fix_for_directory():
    """A directory's fix is chmod go-w, a chown for a foreign owner, and never a change to /tmp."""
    assert fix_for("directory", "/opt/app", fake_stat(0o40755)) == ""
    assert fix_for("directory", "/opt/app", fake_stat(0o40775)) == "chmod go-w /opt/app"
    assert fix_for("directory", "/opt/app", fake_stat(0o40757)) == "chmod go-w /opt/app"
    foreign = fix_for("directory", "/home/al", fake_stat(0o40755, uid=1000))
    assert foreign.startswith("chown root:root /home/al, or move the file to a directory only root can write")
    foreign_writable = fix_for("directory", "/home/al", fake_stat(0o40775, uid=1000))
    assert foreign_writable.startswith("chown root:root /home/al && chmod go-w /home/al, or move")
    shared = fix_for("directory", "/tmp", fake_stat(0o41777))
    assert "chmod" not in shared
    assert shared == (
        "move the file to a directory only root can write, such as /etc/azure"
        " (/tmp is a shared directory: do not change it)"
    )


def test_fix_for_quotes_paths():
    """A path with spaces or quotes is shell-quoted, so the fix can be pasted as it is."""
    fix = fix_for("script", "/opt/my app/it's.sh", fake_stat(0o100770))
    assert fix == "chmod go-w '/opt/my app/it'\"'\"'s.sh'"


def test_fix_for_rejects_unknown_kind():
    """An unknown kind is a programming error."""
    with pytest.raises(ValueError, match="kind"):
        fix_for("socket", "/x", fake_stat(0o100600))


def test_owner_and_mode():
    """The state is shown as uid (with its name when known) and the octal mode, special bits included."""
    assert owner_and_mode(fake_stat(0o41777, uid=0)) == "owner uid 0 (root), mode 1777"
    uid = unused_uid()
    assert owner_and_mode(fake_stat(0o100644, uid=uid)) == f"owner uid {uid}, mode 0644"


# ---------------------------------------------------------------------------
# open_script refusals that need no file


@pytest.mark.parametrize("phase", ["pre", "post"])
@pytest.mark.parametrize("path", ["pre.sh", "./pre.sh", "scripts/pre.sh", ""])
def test_relative_script_path_refused(path, phase):
    """A relative script path is refused: it would depend on the current directory."""
    with pytest.raises(ScriptPermissionError) as info:
        open_script(path, phase)
    err = info.value
    assert err.phase == phase
    assert err.azure_name == PERMISSION_NAMES[phase]
    assert f"{phase}-script {path} is not an absolute path" in str(err)
    assert f"fix: set {phase}ScriptLocation to the script's full path" in str(err)


def test_script_path_with_nul_refused():
    """A NUL byte in the path is a named refusal, not a ValueError from the os module."""
    with pytest.raises(ScriptPermissionError) as info:
        open_script("/etc/azure/pre.sh\0x", "pre")
    assert "contains a NUL byte" in str(info.value)
    assert info.value.azure_name == PERMISSION_NAMES["pre"]


def test_unknown_phase_is_a_value_error():
    """The phase must be "pre" or "post"."""
    with pytest.raises(ValueError, match="phase"):
        open_script("/etc/azure/pre.sh", "during")


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_missing_script_is_not_found(phase):
    """No file at the location is ScriptNotFound with the phase's Azure name and the missing component."""
    path = f"{MISSING_TOP}/{phase}.sh"
    with pytest.raises(ScriptNotFound) as info:
        open_script(path, phase)
    err = info.value
    assert err.azure_name == NOT_FOUND_NAMES[phase]
    assert err.phase == phase
    assert path in str(err)
    assert f"(ENOENT) at {MISSING_TOP}" in str(err)
    assert f"correct {phase}ScriptLocation" in str(err)


def test_path_through_a_file_is_not_found():
    """A path that continues below a regular file (ENOTDIR) means no script there either."""
    with pytest.raises(ScriptNotFound) as info:
        open_script("/proc/self/status/pre.sh", "pre")
    assert "ENOTDIR" in str(info.value)


def test_other_os_errors_become_permission_errors(monkeypatch):
    """An OSError other than ENOENT/ENOTDIR is a ScriptPermissionError naming the errno and path."""
    blocked = f"{MISSING_TOP}-eacces"

    def blocking(real):
        def look_up(path, *args, **kwargs):
            # As the kernel does: a directory that cannot be searched hides everything below it.
            if os.fspath(path) == blocked or os.fspath(path).startswith(blocked + "/"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return real(path, *args, **kwargs)

        return look_up

    # The walk looks each name up by opening it (O_PATH), the config check by lstat first.
    monkeypatch.setattr(os, "lstat", blocking(os.lstat))
    monkeypatch.setattr(os, "open", blocking(os.open))
    with pytest.raises(ScriptPermissionError) as info:
        open_script(f"{blocked}/post.sh", "post")
    message = str(info.value)
    assert info.value.azure_name == PERMISSION_NAMES["post"]
    assert f"post-script {blocked}/post.sh cannot be checked" in message
    assert f"(EACCES) at {blocked}" in message
    assert isinstance(info.value.__cause__, PermissionError)
    with pytest.raises(ConfigPermissionError) as config_info:
        read_config_file(f"{blocked}/c.json")
    assert f"(EACCES) at {blocked}" in str(config_info.value)


def test_script_under_tmp_refused(tmp_path):
    """A script under sticky, world-writable /tmp is refused, and the fix never touches /tmp."""
    if not under_sticky_tmp(tmp_path):
        pytest.skip("tmp_path is not under a 1777 /tmp")
    script = tmp_path / "pre.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    with pytest.raises(ScriptPermissionError) as info:
        open_script(str(script), "pre")
    message = str(info.value)
    assert info.value.azure_name == PERMISSION_NAMES["pre"]
    assert f"pre-script {script} is in an unsafe directory: directory /tmp is writable" in message
    assert "mode 1777" in message
    assert "chmod go-w /tmp" not in message
    assert "move the file to a directory only root can write" in message


# ---------------------------------------------------------------------------
# read_config_file refusals that need no root


def test_missing_config_is_not_found():
    """A missing config is ConfigNotFoundError naming the path."""
    path = f"{MISSING_TOP}/VMSnapshotScriptPluginConfig.json"
    with pytest.raises(ConfigNotFoundError) as info:
        read_config_file(path)
    assert info.value.azure_name == "IncorrectJSONConfigFile"
    assert info.value.azure_code == 316
    assert path in str(info.value)


def test_config_under_tmp_refused(tmp_path):
    """A config under /tmp is refused whoever owns it: anyone could have put it there."""
    if not under_sticky_tmp(tmp_path):
        pytest.skip("tmp_path is not under a 1777 /tmp")
    config = tmp_path / "c.json"
    config.write_text("{}")
    config.chmod(0o600)
    with pytest.raises(ConfigPermissionError) as info:
        read_config_file(str(config))
    assert info.value.azure_code == 317
    assert f"plugin config {config} is in an unsafe directory: directory /tmp" in str(info.value)


def test_relative_config_is_resolved_from_cwd(tmp_path, monkeypatch):
    """A relative config path is checked through the current directory's whole chain."""
    if not under_sticky_tmp(tmp_path):
        pytest.skip("tmp_path is not under a 1777 /tmp")
    (tmp_path / "c.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigPermissionError, match="directory /tmp is writable"):
        read_config_file("c.json")


# ---------------------------------------------------------------------------
# check_directory_chain


def test_check_directory_chain_names_the_first_unsafe_directory(tmp_path):
    """The generic error carries the directory, its owner and mode, and the fix."""
    if not under_sticky_tmp(tmp_path):
        pytest.skip("tmp_path is not under a 1777 /tmp")
    with pytest.raises(UnsafeDirectoryError) as info:
        check_directory_chain(str(tmp_path / "anything"))
    err = info.value
    assert err.path == "/tmp"
    assert stat.S_IMODE(err.mode) == 0o1777
    assert err.uid == os.stat("/tmp").st_uid
    assert "shared directory" in err.fix


def test_check_directory_chain_needs_an_absolute_path():
    """A relative path is a programming error."""
    with pytest.raises(ValueError, match="absolute"):
        check_directory_chain("etc/azure")


def test_check_directory_chain_lets_os_errors_through():
    """A missing directory on the way is the caller's to name: FileNotFoundError passes through."""
    with pytest.raises(FileNotFoundError):
        check_directory_chain(f"{MISSING_TOP}/x/y")


# ---------------------------------------------------------------------------
# CheckedScript owns its fd


def checked(fd: int) -> CheckedScript:
    """A CheckedScript around ``fd`` (the fields other than fd are irrelevant here)."""
    return CheckedScript(
        path="/x/pre.sh",
        real_path="/x/pre.sh",
        fd=fd,
        phase="pre",
        has_shebang=False,
        interpreter=None,
        uid=0,
        mode=0o700,
        size=0,
        dev=0,
        ino=0,
    )


def test_checked_script_closes_in_with_block():
    """Leaving the with block closes the fd; closing again is harmless; fileno then fails."""
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    with checked(fd) as script:
        assert script.fileno() == fd
        assert not script.closed
    assert script.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    script.close()
    with pytest.raises(ValueError, match="closed"):
        script.fileno()


def test_unclosed_checked_script_warns():
    """A CheckedScript collected while open warns with ResourceWarning, and closes its fd."""
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    script = checked(fd)
    with pytest.warns(ResourceWarning, match=r"pre-script /x/pre.sh was not closed"):
        del script
        gc.collect()
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
