"""The fleet's TLS and password files: as root, only files nobody else could have changed or read."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce.cli import main
from quiesce.fleet.credentials import CredentialFileError, checked

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the strict checks apply when run by root")


@pytest.fixture
def safe_dir() -> Iterator[Path]:
    """A directory only root can write, on a chain only root can write (/run)."""
    d = Path(tempfile.mkdtemp(dir="/run", prefix="quiesce-cred-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _file(where: Path, name: str, mode: int, text: str = "x\n") -> Path:
    path = where / name
    path.write_text(text)
    path.chmod(mode)
    return path


@root_only
def test_root_owned_files_that_nobody_else_can_change_are_taken(safe_dir):
    """A CA at 644 and a key at 600 or 400, or a symlink to them in the same kind of place."""
    ca = _file(safe_dir, "ca.pem", 0o644)
    key = _file(safe_dir, "key.pem", 0o400)
    (safe_dir / "current-ca.pem").symlink_to(ca)
    assert checked("--cacert", str(ca), secret=False) == str(ca)
    assert checked("--key", str(key), secret=True) == str(key)
    assert checked("--cacert", str(safe_dir / "current-ca.pem"), secret=False)


@root_only
@pytest.mark.parametrize(
    ("mode", "uid", "secret", "problem", "fix"),
    [
        (0o664, 0, False, "can be written by group", "chmod go-w"),
        (0o646, 0, False, "can be written by others", "chmod go-w"),
        (0o644, 0, True, "mode bits 0044 set", "chmod 600"),
        (0o640, 0, True, "mode bits 0040 set", "chmod 600"),
        (0o644, 4242, False, "owned by uid 4242, not root", "chown root:root"),
    ],
)
def test_a_file_someone_else_could_change_or_read_is_refused(safe_dir, mode, uid, secret, problem, fix):
    """Each refusal names the option, the file, the problem and the fix."""
    path = _file(safe_dir, "f.pem", mode)
    os.chown(path, uid, 0)
    with pytest.raises(CredentialFileError) as err:
        checked("--x", str(path), secret=secret)
    assert str(err.value).startswith(f"--x {path} ") and problem in str(err.value) and fix in str(err.value)


@root_only
def test_a_file_in_a_directory_others_can_write_is_refused(safe_dir):
    """Under /tmp (sticky, writable by all), directly or through a symlink from a safe place."""
    tmp = Path(tempfile.mkdtemp(prefix="quiesce-cred-test-"))  # /tmp: anyone can write there
    try:
        planted = _file(tmp, "ca.pem", 0o600)
        (safe_dir / "ca.pem").symlink_to(planted)
        for path in (planted, safe_dir / "ca.pem"):
            with pytest.raises(CredentialFileError, match="in a directory others can write"):
                checked("--cacert", str(path), secret=False)
    finally:
        shutil.rmtree(tmp)


def test_what_is_not_a_readable_regular_file_is_refused(tmp_path):
    """Missing, a directory, a NUL in the name: a named error for anyone, root or not."""
    for path, why in (
        (tmp_path / "missing", "No such file"),
        (tmp_path, "is a directory, not a regular file"),
        ("a\0b", "null"),
    ):
        with pytest.raises(CredentialFileError, match=why):
            checked("--cacert", str(path), secret=False)


def test_run_by_another_user_the_files_are_that_users_own(tmp_path, monkeypatch):
    """Not root: a file in the user's own /tmp directory, group-readable, is taken as it is."""
    path = _file(tmp_path, "ca.pem", 0o664)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert checked("--cacert", str(path), secret=True) == str(path)


def test_the_commands_say_what_is_wrong_with_a_credential(tmp_path, capsys):
    """A lone --cert is a usage error; a missing or unreadable password file is named, never a traceback."""
    base = ["fleet", "status", "--etcd", "http://127.0.0.1:9", "--group", "g"]
    pytest.importorskip("etcd3gw")
    assert main([*base, "--cert", "/etc/hostname"]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert main([*base, "--user", "u", "--password-file", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "--password-file" in err and "No such file" in err and "Traceback" not in err
    if os.geteuid() == 0:
        assert main([*base, "--user", "u", "--password-file", str(_file(tmp_path, "pw", 0o600))]) == 1
        assert "in a directory others can write" in capsys.readouterr().err
