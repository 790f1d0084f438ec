"""The freeze under the guest agent: the node's quiesce config, qemu-ga's hook, only what it froze.

Each test runs ``quiesce qga --unix-listen`` on loop filesystems in this
process's private mount namespace, sends only freeze-lists naming them (or a
plain freeze when the config's targets are loop mounts), and checks the
replies, the scripts' and hooks' order, and which filesystems are frozen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.qga.agents import QEMU_GA, mkdir, qemu_ga, quiesce_qga, reap, writer_blocked

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]


def freeze_list(c, *mounts) -> dict:
    """guest-fsfreeze-freeze-list naming ``mounts``."""
    return c.cmd("guest-fsfreeze-freeze-list", mountpoints=[str(m.mount_point) for m in mounts])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def frozen(fs) -> bool:
    """Whether a write+fsync on ``fs`` blocks (the writer is reaped once thawed)."""
    return writer_blocked(fs.mount_point / "probe")


def test_config_scripts_hook_directory_and_fsfreeze_hook_around_the_window(node, lfs):
    """fsfreeze-hook freeze, pre-script, hooks pre; frozen; hooks post, post-script, fsfreeze-hook thaw."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    node.hook("10-app")
    hook = node.script("fsfreeze-hook", 'echo "hook says $1"\n', mode=0o755)
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path, hook=hook) as q:
        with q.client() as c:
            assert freeze_list(c, a) == {"return": 1}
            before = node.events()
            assert frozen(a)
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}
            reap()
        log = q.log_text()
    assert before == ["fsfreeze-hook freeze", "pre.sh ", "10-app pre"]
    assert node.events() == [*before, "10-app post", "post.sh ", "fsfreeze-hook thaw"]
    # The hook's output is kept and logged (after the thaw), not thrown away.
    assert "hook says freeze" in log and "hook says thaw" in log


def test_session_hook_holds_across_the_window(node, lfs):
    """A session hook is ready before the freeze and released only after the thaw."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    node.hook(
        "20-db.session",
        'systemd-notify --ready 2>/dev/null || exit 1\ncat >/dev/null\necho "20-db released" >> '
        + node.log
        + "\n",
    )
    with (
        quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q,
        q.client() as c,
    ):
        assert freeze_list(c, a) == {"return": 1}
        assert node.events() == ["pre.sh ", "20-db.session session"]
        assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}
    assert node.events() == ["pre.sh ", "20-db.session session", "20-db released", "post.sh "]


def test_fsfreeze_hook_timeout_kills_it_and_fails_the_freeze(node, lfs):
    """A hung fsfreeze hook is killed at --hook-timeout; the freeze fails, nothing is frozen."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    pidfile = Path(node.base) / "child.pid"
    hook = node.script(
        "fsfreeze-hook", f"echo started-$1\nsleep 60 & echo $! > {pidfile}\nwait\n", mode=0o755
    )
    work = mkdir(Path(node.base) / "w")
    with quiesce_qga(
        work, node.run_dir, config=node.config_path, hook=hook, extra=("--hook-timeout", "1")
    ) as q:
        with q.client() as c:
            start = time.monotonic()
            reply = c.cmd("guest-fsfreeze-freeze-list", mountpoints=[str(a.mount_point)])
            took = time.monotonic() - start
            assert reply == {
                "error": {"class": "GenericError", "desc": "fsfreeze hook timed out after 1 s and was killed"}
            }
            assert 1.0 <= took < 4.0
            assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
            assert not frozen(a)
            reap()
        log = q.log_text()
    # Its whole process group went with it; its output was kept; no pre-script, no thaw call.
    assert not alive(int(pidfile.read_text()))
    assert "started-freeze" in log
    assert node.events() == ["fsfreeze-hook freeze"]


@pytest.mark.parametrize(
    ("body", "mode", "desc"),
    [
        ('[ "$1" = freeze ] && exit 3\nexit 0\n', 0o755, "fsfreeze hook has failed with status 3"),
        ("exit 0\n", 0o775, "is not safe to run as root"),
        ("exit 0\n", 0o644, "can't access fsfreeze hook"),
    ],
)
def test_fsfreeze_hook_refused_or_failing_means_no_freeze(node, lfs, body, mode, desc):
    """qemu-ga's texts for a failing or inaccessible hook; a writable-by-others hook is never run."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    hook = node.script("fsfreeze-hook", body, mode=mode)
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path, hook=hook) as q:
        with q.client() as c:
            reply = freeze_list(c, a)
            assert reply["error"]["class"] == "GenericError" and desc in reply["error"]["desc"]
            assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
            assert not frozen(a)
            reap()
    assert "pre.sh " not in node.events()


def test_fsfreeze_hook_failing_on_thaw_makes_the_thaw_an_error(node, lfs):
    """As in qemu-ga, a thaw hook failure is the thaw's error; the filesystems are thawed anyway."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    hook = node.script("fsfreeze-hook", '[ "$1" = thaw ] && exit 4\nexit 0\n', mode=0o755)
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path, hook=hook) as q:
        with q.client() as c:
            assert freeze_list(c, a) == {"return": 1}
            reply = c.cmd("guest-fsfreeze-thaw")
            assert reply == {
                "error": {"class": "GenericError", "desc": "fsfreeze hook has failed with status 4"}
            }
            assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
            assert not frozen(a)
            reap()


def test_only_what_it_froze(node, lfs):
    """Another tool's freeze: quiesce refuses and leaves it frozen, and its thaw touches nothing.

    qemu-ga, in the same situation, skips the filesystem, then thaws it with
    the others (shown here too): the improvement is on purpose.
    """
    a, b = lfs["a"], lfs["b"]
    node.config([str(a.mount_point), str(b.mount_point)])
    subprocess.run(["fsfreeze", "-f", str(b.mount_point)], check=True)
    try:
        with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q:
            with q.client() as c:
                reply = freeze_list(c, a, b)
                assert reply["error"]["class"] == "GenericError"
                assert (
                    str(b.mount_point) in reply["error"]["desc"]
                    and "nothing is frozen" in reply["error"]["desc"]
                )
                assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
                assert c.cmd("guest-fsfreeze-thaw") == {"return": 0}
                assert not frozen(a) and frozen(b)
        if os.access(QEMU_GA, os.X_OK):
            with qemu_ga(mkdir(Path(node.base) / "stock")) as stock, stock.client() as c:
                assert freeze_list(c, a, b) == {"return": 1}
                assert c.cmd("guest-fsfreeze-thaw") == {"return": 2}
            assert not frozen(b)
    finally:
        subprocess.run(["fsfreeze", "-u", str(b.mount_point)], check=False, capture_output=True)
        reap()


def test_freeze_list_is_narrowed_by_the_config(node, lfs):
    """A listed mount point the config does not select is not frozen (and is logged)."""
    a, b = lfs["a"], lfs["b"]
    node.config([str(a.mount_point)])
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q:
        with q.client() as c:
            assert freeze_list(c, a, b) == {"return": 1}
            assert frozen(a) and not frozen(b)
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}
            reap()
        assert f"freeze-list: {b.mount_point} not frozen (not-included" in q.log_text()


@pytest.mark.parametrize("continue_on_failure", [True, False])
def test_pre_script_failure_follows_continue_backup_on_failure(node, lfs, continue_on_failure):
    """continueBackupOnFailure true: frozen anyway (file-system-consistent); false: the freeze fails."""
    a = lfs["a"]
    node.config([str(a.mount_point)], pre="exit 5\n", continueBackupOnFailure=continue_on_failure)
    with (
        quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q,
        q.client() as c,
    ):
        reply = freeze_list(c, a)
        if continue_on_failure:
            assert reply == {"return": 1}
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}
        else:
            assert reply["error"]["class"] == "GenericError"
            assert "Pre-ScriptExecutionFailed" in reply["error"]["desc"]
            assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
    assert node.events() == ["pre.sh ", "post.sh "]


def test_post_script_failure_fails_the_thaw_when_failures_may_not_continue(node, lfs):
    """continueBackupOnFailure false and the post-script fails: the thaw is an error (thawed anyway)."""
    a = lfs["a"]
    node.config([str(a.mount_point)], post="exit 6\n", continueBackupOnFailure=False)
    with (
        quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q,
        q.client() as c,
    ):
        assert freeze_list(c, a) == {"return": 1}
        reply = c.cmd("guest-fsfreeze-thaw")
        assert (
            reply["error"]["class"] == "GenericError"
            and "Post-ScriptExecutionFailed" in reply["error"]["desc"]
        )
        assert not frozen(a)
        reap()


def test_bad_config_fails_the_freeze_naming_it(node, lfs):
    """An invalid config: the freeze fails with Azure's error name, nothing runs or freezes."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    with open(node.config_path, "w") as f:
        json.dump({"preScriptLocation": "/nonexistent"}, f)
    with (
        quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q,
        q.client() as c,
    ):
        reply = freeze_list(c, a)
        assert reply["error"]["class"] == "GenericError"
        assert "IncorrectJSONConfigFile" in reply["error"]["desc"]
        assert not frozen(a)
        reap()


def test_without_config_a_freeze_list_freezes_and_thaws(node, lfs):
    """No config: the bare engine (guardian, order, only-what-it-froze), no scripts."""
    a, c_ = lfs["a"], lfs["c"]
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir) as q, q.client() as c:
        assert freeze_list(c, a, c_) == {"return": 2}
        assert frozen(a) and frozen(c_)
        assert c.cmd("guest-fsfreeze-thaw") == {"return": 2}
        reap()
    assert node.events() == []


def test_freeze_refused_while_another_quiesce_freeze_holds_the_lock(node, lfs):
    """Another quiesce freeze in progress (its lock): the host's freeze fails, nothing more is frozen."""
    a, c_ = lfs["a"], lfs["c"]
    node.config([str(a.mount_point)])
    base = [sys.executable, "-m", "quiesce"]
    held = subprocess.run(
        [*base, "freeze", "--hold", "--timeout", "20", "--run-dir", node.run_dir, str(c_.mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert held.returncode == 0, held.stderr
    try:
        with (
            quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q,
            q.client() as c,
        ):
            reply = freeze_list(c, a)
            assert reply["error"]["class"] == "GenericError"
            assert "nothing is frozen" in reply["error"]["desc"] and "lock" in reply["error"]["desc"]
            assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
            assert not frozen(a)
    finally:
        subprocess.run(
            [*base, "thaw", "--run-dir", node.run_dir], capture_output=True, timeout=30, check=False
        )
        reap()
    assert not frozen(c_)
    reap()


def test_fsfreeze_hook_in_a_directory_others_can_write_is_refused(node, lfs):
    """The hook's whole directory chain must be root's alone: one writable directory refuses it."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    shared = Path(node.base) / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    hook = shared / "fsfreeze-hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    with quiesce_qga(
        mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path, hook=str(hook)
    ) as q:
        with q.client() as c:
            reply = freeze_list(c, a)
            assert (
                "is not safe to run as root" in reply["error"]["desc"]
                and str(shared) in reply["error"]["desc"]
            )
            assert not frozen(a)
            reap()


@pytest.mark.parametrize("with_config", [False, True])
def test_quiesce_thaw_on_the_guest_thaws_and_the_agent_lives_on(node, lfs, with_config):
    """``quiesce thaw`` on the guest while the host holds a freeze: thawed, the agent not signalled.

    SIGUSR1 (the release of quiesce's own commands) would end the agent; its
    ledger says to thaw instead. The host's later thaw is told its window was
    cut short, and the post steps ran.
    """
    a = lfs["a"]
    if with_config:
        node.config([str(a.mount_point)])
    config = node.config_path if with_config else None
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=config) as q, q.client() as c:
        assert freeze_list(c, a) == {"return": 1}
        assert frozen(a)
        thawed = subprocess.run(
            [sys.executable, "-m", "quiesce", "thaw", "--json", "--run-dir", node.run_dir],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert thawed.returncode == 0, thawed.stdout + thawed.stderr
        assert json.loads(thawed.stdout)["holder"] == q.proc.pid
        assert not frozen(a)
        assert q.proc.poll() is None, q.log_text()
        reply = c.cmd("guest-fsfreeze-thaw")
        assert "thawed by another tool" in reply["error"]["desc"], reply
        assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
        reap()
    if with_config:
        assert node.events()[-1].startswith("post"), node.events()
