"""A hostile local user against what quiesce executes or trusts by path as root.

The snapshot command and qemu-ga's fsfreeze hook are executed by their path
(not through a held fd, as the scripts are): that is safe only if every
directory and link on the way is root's alone, so the file run is the file
checked. The agent's TLS and password files are opened later by path, the
same way. The user here is ``nobody``: it owns a directory (as a user owns
its home) and plants files and links there.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from quiesce.azure.verdict import FAILED
from quiesce.bench.helpers import Probe
from quiesce.errors import ScriptPermissionError
from quiesce.fleet.credentials import CredentialFileError, checked
from quiesce.qga.forward import Forwarder, ForwardError
from quiesce.qga.fshook import FsfreezeHook
from quiesce.qga.server import serve_device, serve_unix
from quiesce.runner.check import check_setup
from quiesce.runner.run import run
from quiesce.supervise import snapshot_command
from quiesce.supervise.checked import open_script
from quiesce.supervise.snapshot_command import run_command
from tests.privileged.conftest import Setup

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

NOBODY = 65534


@pytest.fixture
def user_dir(base: Path) -> Path:
    """A directory the unprivileged user owns (and may fill with files and links)."""
    d = base / "home"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    return d


def root_program(path: Path, body: str, mode: int = 0o755) -> str:
    """A root-owned shell script at ``path``."""
    path.write_text(f"#!/bin/sh\n{body}")
    os.chmod(path, mode)
    return str(path)


def run_snapshot(argv: list[str]):
    """Run the snapshot command without a freeze, as the unfrozen step does."""
    return run_command(argv, timeout_s=10, grace_s=1, env={}, run_id="hostile-exec")


# -- the snapshot command -----------------------------------------------------------


@pytest.mark.parametrize("how", ["file in a user's directory", "link in a user's directory"])
def test_snapshot_command_reached_through_a_users_directory_is_not_run(base, user_dir, how):
    """A root-owned command the user can swap (its directory, or a link there) never runs as root."""
    marker = base / "ran"
    real = root_program(base / "snap", f"touch {marker}\n")
    if how == "file in a user's directory":
        program = root_program(user_dir / "snap", f"touch {marker}\n")
    else:
        program = str(user_dir / "snap")
        os.symlink(real, program)
    attempt = run_snapshot([program])
    assert attempt.outcome == "spawn-failed"
    assert "is not safe to run as root" in (attempt.error or "")
    assert str(user_dir) in (attempt.error or "")
    assert not marker.exists()
    # A link root planted in a root-only directory is followed: /bin/sh itself is one.
    os.symlink(real, base / "link")
    assert run_snapshot([str(base / "link")]).outcome == "ok"
    assert marker.exists()


@pytest.mark.parametrize(
    ("owner", "mode", "problem"),
    [
        (NOBODY, 0o755, "is owned by uid 65534, not root"),
        (0, 0o757, "is writable by others"),
        (0, 0o775, "is writable by group"),
    ],
)
def test_snapshot_command_others_can_change_is_not_run(base, owner, mode, problem):
    """The command's own owner and mode: root's alone, as a script's."""
    marker = base / "ran"
    program = root_program(base / "snap", f"touch {marker}\n", mode)
    os.chown(program, owner, 0)
    attempt = run_snapshot([program])
    assert attempt.outcome == "spawn-failed"
    assert problem in (attempt.error or "")
    assert not marker.exists()
    assert snapshot_command.unsafe_command(program) is not None


def test_quiesce_check_names_an_unsafe_snapshot_command(base, user_dir):
    """`quiesce check` reports the command as a run would refuse it."""
    setup = Setup(str(base), [])
    program = root_program(user_dir / "snap", "exit 0\n")
    snapshot = {"mode": "command", "argv": [program], "timeoutSeconds": 5}
    setup.config(fsFreezeEnabled=False, quiesce={"snapshot": snapshot})
    report = check_setup(setup.config_path, pluginhost_path=None, vmbackup_conf=None)
    finding = next(f for f in report.findings if f.what == "snapshot command")
    assert finding.ok is False
    assert "is not safe to run as root" in finding.message
    assert not report.ok


def test_children_start_in_root_with_umask_022(base):
    """Wherever and under whatever umask quiesce was started, a child starts in / with umask 022."""
    old_cwd, old_umask = os.getcwd(), os.umask(0)
    try:
        os.chdir(base)
        attempt = run_snapshot(["/bin/sh", "-c", "pwd; umask"])
    finally:
        os.chdir(old_cwd)
        os.umask(old_umask)
    assert attempt.outcome == "ok"
    assert attempt.stdout.split() == ["/", "0022"]
    assert os.getcwd() == old_cwd


# -- qemu-ga's fsfreeze hook --------------------------------------------------------


def test_fsfreeze_hook_through_a_users_link_is_not_run(base, user_dir):
    """A hook path through a link the user can re-point is refused; the hook never runs."""
    marker = base / "ran"
    root_dir = base / "qemu"
    root_dir.mkdir(mode=0o755)
    root_program(root_dir / "fsfreeze-hook", f"touch {marker}\n")
    os.symlink(root_dir, user_dir / "qemu")
    outcome = FsfreezeHook(str(user_dir / "qemu" / "fsfreeze-hook"), required=True).run("freeze")
    assert outcome.error is not None and "is not safe to run as root" in outcome.error
    assert str(user_dir) in outcome.error
    assert not marker.exists()
    # A final link in a directory the user can write: the same.
    os.symlink(root_dir / "fsfreeze-hook", user_dir / "hook")
    outcome = FsfreezeHook(str(user_dir / "hook"), required=True).run("freeze")
    assert outcome.error is not None and "is not safe to run as root" in outcome.error
    assert not marker.exists()


def test_fsfreeze_hook_gets_a_clean_environment_in_root(base, monkeypatch):
    """Nothing of the agent's environment or current directory reaches the hook; $0 is its path."""
    hook = root_program(base / "fsfreeze-hook", 'echo "$0 $1"; pwd; umask; env | sort\n')
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/evil.so")
    monkeypatch.setenv("QUIESCE_AUDIT_LEAK", "1")
    monkeypatch.setenv("PATH", f"{base}:/usr/bin:/bin")
    monkeypatch.chdir(base)
    old_umask = os.umask(0)
    try:
        outcome = FsfreezeHook(hook, required=True).run("freeze")
    finally:
        os.umask(old_umask)
    assert outcome.ok, outcome.error
    lines = outcome.output.splitlines()
    assert lines[0] == f"{hook} freeze"
    assert lines[1:3] == ["/", "0022"]
    env = dict(line.split("=", 1) for line in lines[3:] if "=" in line)
    assert "LD_PRELOAD" not in env and "QUIESCE_AUDIT_LEAK" not in env
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- qga's sockets ------------------------------------------------------------------


def test_qga_socket_in_a_users_directory_is_refused(user_dir):
    """`quiesce qga --unix-listen` in a directory the user can write: refused before anything is bound."""
    path = user_dir / "qga.sock"
    with pytest.raises(PermissionError, match="unsafe directory"):
        serve_unix(str(path), None, None, None, lambda: None)  # type: ignore[arg-type]
    assert not path.exists()


def test_forwarding_to_another_users_agent_is_refused(base):
    """A socket served by someone but root (planted at the forward path) gets none of the host's commands."""
    path = str(base / "qemu-ga.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the user's fake agent: accepts and records what it is sent
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            # listen() records the peer credentials a client sees: the user's.
            listener.listen(1)
            os.write(ready_w, b"x")
            conn, _ = listener.accept()
            conn.settimeout(5)
            got = conn.recv(4096)
            os._exit(10 if got else 0)
        finally:
            os._exit(1)
    listener.close()
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    try:
        # The fake agent's process runs as nobody: its credentials are what the peer check sees.
        with pytest.raises(ForwardError, match="uid 65534, not root"):
            _connect(path)
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the fake agent received bytes"


def _connect(path: str) -> None:
    """Connect a forwarder to ``path`` (what its first forwarded command does)."""
    fwd = Forwarder(path)
    try:
        fwd._connected()
    finally:
        fwd.close()


# -- the agent's credential files ---------------------------------------------------


def test_credential_file_through_a_users_link_is_refused(base, user_dir):
    """A key reached through a link in the user's directory (re-pointable later) is refused."""
    key = base / "client.key"
    key.write_text("secret\n")
    os.chmod(key, 0o600)
    os.symlink(key, user_dir / "key")  # the user's link, to root's real key
    os.symlink(user_dir / "key", base / "agent.key")  # root's link, to the user's link
    assert checked("--key", str(key), secret=True) == str(key)
    with pytest.raises(CredentialFileError, match="directory others can write"):
        checked("--key", str(base / "agent.key"), secret=True)


# -- the interpreter on a #! line ---------------------------------------------------


@pytest.fixture(params=["in a user's directory", "owned by the user"])
def user_interpreter(request, base: Path, user_dir: Path) -> str:
    """A working shell the user could change: in the user's directory, or the user's own file."""
    where = user_dir if request.param == "in a user's directory" else base
    path = where / "sh"
    shutil.copy("/bin/sh", path)
    os.chmod(path, 0o755)
    if request.param == "owned by the user":
        os.chown(path, NOBODY, NOBODY)
    return str(path)


def test_script_with_a_users_interpreter_is_refused(base, user_interpreter):
    """A root script whose #! interpreter another user could change is refused before it runs."""
    script = base / "pre.sh"
    script.write_text(f"#!{user_interpreter}\nexit 0\n")
    os.chmod(script, 0o700)
    with pytest.raises(ScriptPermissionError, match="interpreter") as err:
        open_script(str(script), "pre")
    assert user_interpreter in str(err.value)
    assert err.value.azure_name == "InsufficientPermissionforPre-Script"


def test_snapshot_command_and_fsfreeze_hook_with_a_users_interpreter_are_not_run(base, user_interpreter):
    """The same for the programs run by path: the command and qemu-ga's hook never start."""
    marker = base / "ran"
    program = base / "prog"
    program.write_text(f"#!{user_interpreter}\ntouch {marker}\n")
    os.chmod(program, 0o755)
    attempt = run_snapshot([str(program)])
    assert attempt.outcome == "spawn-failed"
    assert "interpreter" in (attempt.error or "") and user_interpreter in (attempt.error or "")
    outcome = FsfreezeHook(str(program), required=True).run("freeze")
    assert outcome.error is not None and "interpreter" in outcome.error
    assert not marker.exists()


def test_run_with_an_unsafe_snapshot_command_freezes_nothing_and_fails(setup, fs):
    """`quiesce run`: the command another user could swap is refused with the checks: nothing runs."""
    user = Path(setup.base) / "home"
    user.mkdir(mode=0o755)
    os.chown(user, NOBODY, NOBODY)
    marker = Path(setup.base) / "ran"
    program = root_program(user / "snap", f"touch {marker}\n")
    setup.config(quiesce={"snapshot": {"mode": "command", "argv": [program], "timeoutSeconds": 5}})
    r = run(setup.options())
    assert r.consistency == FAILED and r.error_name == "SnapshotFailed"
    assert "is not safe to run as root" in (r.message or "") and program in (r.message or "")
    assert r.snapshot_command is None and r.freeze is None, "something ran or froze for a command refused"
    assert r.pre is not None and r.post is not None
    assert (r.pre.status, r.post.status) == ("skipped", "skipped")
    assert not marker.exists()
    # No snapshot can be taken: no script runs, as when a script fails its own check.
    assert setup.events() == []


# -- Python children ------------------------------------------------------------------


def test_bench_helpers_import_nothing_from_the_current_directory(base, user_dir, monkeypatch):
    """bench --probe/--dirty started from a user's directory: a planted module never runs as root."""
    marker = base / "imported"
    for name in ("quiesce", "json"):  # the package itself, and a module the helper imports
        planted = user_dir / name
        planted.mkdir()
        (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(user_dir)
    probe = Probe(str(base))
    probe.wait_ready(lambda: False)
    probe.finish(10)
    assert not marker.exists(), "a module from the current directory was imported by the helper"


def test_no_fd_of_quiesce_reaches_a_child(base):
    """Even an fd quiesce holds without close-on-exec (one it inherited) stays out of a child and a hook."""
    fd = os.open(str(base), os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    try:
        # What each of the shell's fds is (the glob's own fd is gone by the time readlink runs).
        listing = "readlink /proc/$$/fd/* 2>/dev/null; true\n"
        attempt = run_snapshot(["/bin/sh", "-c", listing])
        assert attempt.outcome == "ok"
        assert str(base) not in attempt.stdout.splitlines()
        assert len(attempt.stdout.splitlines()) == 3  # stdin, stdout, stderr
        hook = root_program(base / "fsfreeze-hook", listing)
        outcome = FsfreezeHook(hook, required=True).run("freeze")
        assert outcome.ok, outcome.error
        # The shell holds its script open; nothing else of quiesce's.
        assert str(base) not in outcome.output.splitlines()
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["a user's terminal", "a link in a user's directory"])
def test_qga_port_another_user_could_hold_is_refused(base, user_dir, how):
    """`quiesce qga --device`: a path a user could point at their own terminal (the user'd be the host)."""
    leader, follower = os.openpty()
    try:
        tty = os.ttyname(follower)
        if how == "a user's terminal":
            os.chown(tty, NOBODY, -1)  # as a user's own terminal is
            os.symlink(tty, base / "port")
            port, why = str(base / "port"), "owned by uid 65534, not root"
        else:
            os.symlink(tty, user_dir / "port")
            port, why = str(user_dir / "port"), "unsafe path to the port"
        with pytest.raises(PermissionError, match=why):
            serve_device(port, None, None, None)  # type: ignore[arg-type]
    finally:
        os.close(follower)
        os.close(leader)
