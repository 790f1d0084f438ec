"""A hostile local user against ``quiesce run``: spoofed readiness, forged target lists, planted hooks.

The session hooks here never say ``READY=1`` themselves; they publish their
``$NOTIFY_SOCKET`` and wait. Another process (one running as ``nobody``,
one running as root outside the hook's cgroup) then sends ``READY=1``: a run
that believed it would freeze and report ``application-consistent`` while
the application was never held.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from quiesce.azure.verdict import APPLICATION
from quiesce.cli.exits import Exit
from quiesce.runner.run import run
from quiesce.sandbox import Sandbox
from quiesce.supervise.cgroups import RunCgroup, ScriptCgroup, cgroup2_root
from quiesce.supervise.checked import open_script
from quiesce.supervise.hookdir import Hook
from quiesce.supervise.notify import NotifyDir
from quiesce.supervise.scripts import ScriptPolicy
from quiesce.supervise.session import SessionHook

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

NOBODY = 65534

# A session hook that never notifies: it tells the test where its socket is and waits.
PUBLISH = """
if [ "$1" = session ]; then
  printf '%s' "$NOTIFY_SOCKET" > {where}.tmp && mv {where}.tmp {where}
  read line
fi
"""


def _published(path: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the hook did not publish its socket"
        time.sleep(0.02)
    with open(path) as f:
        return f.read()


def send_ready(path: str, uid: int | None = None) -> bool:
    """Send READY=1 to ``path`` from a forked child (as ``uid`` if given); True if the send worked."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"READY=1", path)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("sender", ["nobody", "root outside the hook's cgroup"])
def test_ready_from_anyone_but_the_hook_is_ignored(setup, sender):
    """A spoofed READY=1 does not make the run freeze on an unheld application.

    The run directory is root-owned mode 755 and quiesce runs under umask 000
    (what a tmpfiles.d line and a careless unit make), so a socket bound with
    the umask's mode in it could be reached by anyone.
    """
    os.chmod(setup.base, 0o755)
    os.mkdir(setup.run_dir, 0o755)
    where = os.path.join(setup.base, "socket")
    setup.hook("10-db.session", PUBLISH.format(where=where))
    setup.config(timeoutInSeconds=3)
    proc = subprocess.Popen(
        setup.run_argv("--json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0),
    )
    try:
        path = _published(where)
        sent = send_ready(path, NOBODY if sender == "nobody" else None)
    finally:
        out, err = proc.communicate(timeout=60)
    result = json.loads(out)
    assert result["consistency"] != APPLICATION, "a spoofed READY=1 was believed"
    assert result["hooks_pre"][0]["status"] == "timeout", err
    assert result["error_name"] == "Pre-ScriptTimeout"
    if sender == "nobody":
        assert not sent, "nobody could reach the notify socket"
    else:
        assert sent
        assert any("ignored 1 notification(s)" in w for w in result["warnings"]), result["warnings"]
    assert not [n for n in os.listdir(setup.run_dir) if n.startswith("notify")], "notify dir left behind"


def test_the_notify_socket_is_in_a_private_directory(setup):
    """$NOTIFY_SOCKET is in a per-run directory of the run dir, mode 700; the socket is mode 600."""
    where = os.path.join(setup.base, "socket")
    seen = os.path.join(setup.base, "modes")
    body = PUBLISH.format(where=where).replace(
        "  read line",
        f'  stat -c "%a %U" "$(dirname "$NOTIFY_SOCKET")" "$NOTIFY_SOCKET" > {seen}\n  read line',
    )
    setup.hook("10-db.session", body)
    setup.config(timeoutInSeconds=1)
    run(setup.options())
    path = _published(where)
    assert os.path.dirname(os.path.dirname(path)) == setup.run_dir
    with open(seen) as f:
        assert f.read().split("\n")[:2] == ["700 root", "600 root"]


@pytest.mark.parametrize("notify", [False, True])
def test_without_cgroups_only_the_hooks_session_may_notify(setup, monkeypatch, notify):
    """Without cgroup v2 (process-group fallback), READY=1 counts only from the hook's own session."""
    monkeypatch.setattr(ScriptCgroup, "create", lambda *a, **k: None)
    where = os.path.join(setup.base, "socket")
    go = os.path.join(setup.base, "go")
    body = PUBLISH.format(where=where)
    if notify:  # after the spoof: datagrams are read in order, the spoof first
        wait = f"  while [ ! -e {go} ]; do sleep 0.02; done\n"
        body = body.replace("  read line", wait + "  systemd-notify --ready\n  read line")
    path = setup.hook("10-db.session", body)
    checked = open_script(path, "pre")
    notify_dir = NotifyDir(setup.run_dir, "test-run")
    session = SessionHook(
        Hook("10-db.session", path, True),
        checked,
        ScriptPolicy(timeout_s=2, grace_s=0.2),
        {},
        "t",
        notify_dir,
    )
    try:
        assert session.isolation == "process-group"
        assert send_ready(_published(where))  # from this test's session: not the hook's
        open(go, "w").close()
        assert session.wait_ready() is notify
        assert session.notify.refused == 1
    finally:
        session.close()
        checked.close()
        notify_dir.close()
    assert not os.path.exists(os.path.dirname(session.notify_path))


def test_quiesce_targets_cannot_be_forged_by_a_mount_point_name(setup, fs):
    """A mount point named "m\\nforged" stays one line of $QUIESCE_TARGETS, escaped as in mountinfo."""
    seen = os.path.join(setup.base, "targets")
    with Sandbox() as sb:
        odd = sb.add("ext4", name="m\nforged x\\y")
        cmd = ["/bin/sh", "-c", f"printf '%s' \"$QUIESCE_TARGETS\" > {seen}"]
        setup.config(
            quiesce={
                "targets": [str(odd.mount_point), *setup.targets],
                "snapshot": {"mode": "command", "argv": cmd, "timeoutSeconds": 10},
            }
        )
        r = run(setup.options())
        assert r.consistency == APPLICATION, r.message
        with open(seen) as f:
            lines = f.read().split("\n")
    frozen_mounts = [t.mount_point for t in r.freeze.targets]
    assert len(lines) == len(frozen_mounts) == 3
    assert [_unescape(line) for line in lines] == frozen_mounts
    assert str(odd.mount_point) in frozen_mounts
    assert "\\012forged\\040x\\134y" in lines[frozen_mounts.index(str(odd.mount_point))]


def test_text_outputs_keep_one_mount_point_per_field(fs, run_dir):
    """``quiesce freeze``'s "frozen:" line and ``quiesce mounts`` escape odd names as mountinfo does."""
    with Sandbox() as sb:
        odd = sb.add("ext4", name="a b\nc")
        done = subprocess.run(
            [sys.executable, "-m", "quiesce", "freeze", "--run-dir", run_dir, str(odd.mount_point)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == Exit.OK, done.stderr
        first = done.stdout.splitlines()[0]
        assert first.startswith("frozen: ")
        mounts = first.removeprefix("frozen: ").split(";")[0].split(" ")
        assert [_unescape(m) for m in mounts] == [str(odd.mount_point)]
        listed = subprocess.run(
            [sys.executable, "-m", "quiesce", "mounts", str(odd.mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert "a\\040b\\012c" in listed.stdout
    assert "a b" not in listed.stdout


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def test_a_hook_directory_others_can_write_runs_no_hook(setup):
    """A hook directory writable by others (anyone could plant a hook) is refused as unsafe."""
    setup.hook("10-a", "exit 0\n")
    os.chmod(setup.hooks, 0o777)
    setup.config()
    r = run(setup.options())
    assert r.error_name == "InsufficientPermissionforPre-Script"
    assert f"hook directory {setup.hooks} is unsafe" in r.message
    assert "10-a pre" not in setup.events()


def test_run_cgroups_nest_under_a_delegated_cgroup():
    """In a cgroup systemd delegated (Delegate=yes: trusted.delegate=1), a run's cgroups go under it."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy")
    delegated = os.path.join(root, f"quiesce-test-delegated-{os.getpid()}")
    os.mkdir(delegated)
    try:
        os.setxattr(delegated, "trusted.delegate", b"1")
        code = (
            "import os, sys\n"
            "with open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w') as f: f.write(str(os.getpid()))\n"
            "from quiesce.supervise.cgroups import RunCgroup\n"
            "cg = RunCgroup(f'test-{os.getpid()}')\n"
            "print(cg.path, flush=True)\n"
            "cg.close()\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, delegated], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith(os.path.join(delegated, "quiesce") + "/")
    finally:
        inner = os.path.join(delegated, "quiesce")
        if os.path.isdir(inner):
            os.rmdir(inner)
        os.rmdir(delegated)
    # Not delegated: today's place, at the top of the hierarchy.
    with RunCgroup(f"test-top-{os.getpid()}") as cg:
        if cg.path is not None:
            assert os.path.dirname(cg.path) == os.path.join(root, "quiesce")
