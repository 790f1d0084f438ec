"""Scripts that cannot start say why (the #! interpreter, CRLF); odd hook directory entries are skipped."""

from __future__ import annotations

import os
import socket

import pytest

from quiesce.azure.verdict import APPLICATION
from quiesce.runner.run import run

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def write_script(path: str, data: bytes, mode: int = 0o700) -> str:
    """A root-owned script with exactly these bytes."""
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def test_a_crlf_pre_script_names_the_interpreter_and_the_line_endings(setup):
    """#!/bin/sh\\r from a Windows editor: the error says CRLF and names '/bin/sh\\r', not the script."""
    setup.config()
    pre = write_script(os.path.join(setup.base, "pre.sh"), b"#!/bin/sh\r\necho hi\r\n")
    r = run(setup.options())
    assert r.pre is not None and r.pre.status == "failed"
    assert r.pre.error_name == "Pre-ScriptExecutionFailed"
    message = str(r.pre.message)
    assert "the script has Windows line endings (CRLF)" in message
    assert "'/bin/sh\\r'" in message and f"sed -i 's/\\r$//' {pre}" in message


@pytest.mark.parametrize(
    ("interpreter", "phrase"),
    [
        ("/usr/bin/no-such-shell", "its interpreter /usr/bin/no-such-shell (on the #! line) does not exist"),
        ("{base}/plain", "its interpreter {base}/plain (on the #! line) is not executable (mode 0644)"),
        ("{base}", "its interpreter {base} (on the #! line) is not a program file"),
        ("{base}/text", "its interpreter {base}/text (on the #! line) is not a program the kernel can run"),
    ],
)
def test_a_post_script_whose_interpreter_cannot_run_names_it(setup, interpreter, phrase):
    """Missing, non-executable, directory or non-program interpreters are named, for the post-script too."""
    write_script(os.path.join(setup.base, "plain"), b"data\n", mode=0o644)
    write_script(os.path.join(setup.base, "text"), b"just text\n", mode=0o755)
    setup.config()
    line = interpreter.format(base=setup.base).encode()
    write_script(os.path.join(setup.base, "post.sh"), b"#!" + line + b"\nexit 0\n")
    r = run(setup.options())
    assert r.post is not None and r.post.status == "failed"
    assert phrase.format(base=setup.base) in str(r.post.message)


def test_a_script_without_a_shebang_runs_with_sh(setup):
    """No #! at all: run with /bin/sh, as Azure does (not an error)."""
    setup.config()
    write_script(os.path.join(setup.base, "pre.sh"), f"echo nosheb >> {setup.log}\n".encode())
    r = run(setup.options())
    assert r.consistency == APPLICATION, r.message
    assert "nosheb" in setup.events()


def test_a_crlf_hook_and_snapshot_command_name_the_interpreter(setup):
    """The same diagnosis for a hook and for the snapshot command."""
    write_script(os.path.join(setup.hooks, "10-crlf"), b"#!/bin/sh\r\nexit 0\r\n")
    setup.config()
    r = run(setup.options())
    assert r.hooks_pre and "Windows line endings (CRLF)" in str(r.hooks_pre[0].message)

    os.unlink(os.path.join(setup.hooks, "10-crlf"))
    snap = write_script(os.path.join(setup.base, "snap.sh"), b"#!/bin/sh\r\nexit 0\r\n")
    setup.config(quiesce={"snapshot": {"mode": "command", "argv": [snap], "timeoutSeconds": 5}})
    r = run(setup.options())
    assert r.snapshot_command is not None and r.snapshot_command.outcome == "spawn-failed"
    assert "Windows line endings (CRLF)" in str(r.snapshot_command.error)


def test_odd_entries_in_the_hook_directory_are_skipped_with_warnings(setup):
    """A subdirectory, FIFO, socket, symlink to a directory, dangling symlink: warnings, not failures."""
    setup.hook("10-a", "exit 0\n")
    os.mkdir(os.path.join(setup.hooks, "20-subdir"))
    os.mkfifo(os.path.join(setup.hooks, "30-fifo"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(setup.hooks, "40-socket"))
    sock.close()
    os.symlink("/etc", os.path.join(setup.hooks, "50-dirlink"))
    os.symlink("/nonexistent", os.path.join(setup.hooks, "60-dangling"))
    setup.config()
    r = run(setup.options())
    assert r.consistency == APPLICATION, r.message
    assert [e for e in setup.events() if e.startswith("10-a")] == ["10-a pre", "10-a post"]
    for name, what in (
        ("20-subdir", "is a directory"),
        ("30-fifo", "is a FIFO"),
        ("40-socket", "is a socket"),
        ("50-dirlink", "is a symlink to a directory"),
        ("60-dangling", "is a dangling symlink"),
    ):
        assert any(name in w and what in w and "skipped" in w for w in r.warnings), (name, r.warnings)
