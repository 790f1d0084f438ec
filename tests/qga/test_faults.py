"""Faults under the guest agent: a killed agent, a silent host, a flood of garbage, a stop, a hang-up.

Every test freezes only loop filesystems (freeze-lists naming them), with a
writer child on a frozen one as the witness: it finishes the moment the
filesystem thaws.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.qga.agents import mkdir, quiesce_qga, reap, wait_for, writer_blocked

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]


class Witness:
    """A child writing to a filesystem: blocked while it is frozen, done (pidfd readable) once thawed."""

    def __init__(self, fs) -> None:
        path = fs.mount_point / f"witness-{time.monotonic_ns()}"
        code = (
            f"import os; fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT); "
            "os.write(fd, b'x'); os.fsync(fd)"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        self.pidfd = os.pidfd_open(self.proc.pid)

    def done_within(self, seconds: float) -> float | None:
        """Seconds until the writer finished, or None if it did not within ``seconds``."""
        start = time.monotonic()
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if not poller.poll(int(seconds * 1000)):
            return None
        return time.monotonic() - start

    def close(self) -> None:
        """Reap the writer (everything must be thawed by now)."""
        self.proc.wait(30)
        os.close(self.pidfd)


def remove_run_cgroup(pid: int) -> None:
    """Remove the (empty) run cgroup a SIGKILLed agent left behind, and only that one."""
    with open("/proc/self/mountinfo") as f:
        roots = [line.split()[4] for line in f if " - cgroup2 " in line]
    for root in roots:
        parent = Path(root) / "quiesce"
        for run in parent.glob(f"*-{pid}") if parent.is_dir() else []:
            for child in sorted(run.rglob("*"), reverse=True):
                if child.is_dir():
                    child.rmdir()
            run.rmdir()


def freeze_list(c, *mounts) -> dict:
    """guest-fsfreeze-freeze-list naming ``mounts``."""
    return c.cmd("guest-fsfreeze-freeze-list", mountpoints=[str(m.mount_point) for m in mounts])


def test_sigkill_of_the_agent_while_frozen_thaws_within_300ms(node, lfs):
    """The guardian notices the agent's death and thaws at once."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    q = quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path)
    try:
        with q.client() as c:
            assert freeze_list(c, a) == {"return": 1}
            witness = Witness(a)
            assert witness.done_within(0.3) is None
            killed = time.monotonic()
            q.proc.kill()
            took = witness.done_within(5)
            assert took is not None, "still frozen 5 s after the agent was killed"
            assert time.monotonic() - killed <= 0.3
            witness.close()
    finally:
        q.stop()
        remove_run_cgroup(q.proc.pid)


def test_silent_host_thawed_at_the_deadline_and_the_late_thaw_errors(node, lfs):
    """No thaw comes: thawed at --timeout, post steps run, status says thawed, the late thaw errors."""
    a, b = lfs["a"], lfs["b"]
    node.config([str(a.mount_point), str(b.mount_point)])
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path, timeout=1.5) as q:
        with q.client() as c:
            assert freeze_list(c, a, b) == {"return": 2}
            frozen_at = time.monotonic()
            witness = Witness(b)
            assert witness.done_within(5) is not None
            thawed_after = time.monotonic() - frozen_at
            witness.close()
            assert 1.2 <= thawed_after <= 1.5 + 0.3
            # The post steps ran without waiting for the host.
            assert wait_for(lambda: node.events() == ["pre.sh ", "post.sh "], 10)
            assert c.cmd("guest-fsfreeze-status") == {"return": "thawed"}
            late = c.cmd("guest-fsfreeze-thaw")
            assert late["error"]["class"] == "GenericError"
            assert "guardian thawed them (deadline" in late["error"]["desc"]
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 0}
            # The agent goes on: the next freeze is a normal one.
            assert freeze_list(c, a) == {"return": 1}
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}


def test_status_is_thawed_right_after_the_deadline(node, lfs):
    """Asked in a tight loop, the status turns "thawed" once, and never while a writer is still blocked."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path, timeout=1) as q:
        with q.client() as c:
            assert freeze_list(c, a) == {"return": 1}
            witness = Witness(a)
            statuses = []
            while True:
                status = c.cmd("guest-fsfreeze-status")["return"]
                if status == "thawed":
                    break
                statuses.append(status)
            # "thawed" was said: the writer finishes at once, it is not still blocked.
            assert witness.done_within(0.3) is not None
            witness.close()
            assert statuses and set(statuses) == {"frozen"}
            assert "error" in c.cmd("guest-fsfreeze-thaw")


def garbage(seed: int, size: int) -> bytes:
    """Random bytes, plus the malformed shapes a broken host could send."""
    rnd = random.Random(seed)
    parts = [rnd.randbytes(size)]
    parts += [b"[" * 3000, b"]" * 3000, b"{" * 50, b'"' + b"x" * 200_000, b"\n", b"}" * 60]
    parts += [
        b'{"execute":',
        b"tru",
        b"-",
        b"1e",
        b"\x00\x01\x02",
        b"\xfe\xff" * 100,
        b'{"execute":"guest-ping"',
    ]
    return b"\n".join(parts)


def test_garbage_flood_does_not_disturb_a_freeze(node, lfs):
    """A megabyte of garbage while frozen: error replies, still frozen, then a normal thaw."""
    a, b = lfs["a"], lfs["b"]
    node.config([str(a.mount_point), str(b.mount_point)])
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q:
        with q.client() as c:
            assert freeze_list(c, a, b) == {"return": 2}
            received = bytearray()
            marker = b'\xff{"return": 4242}\n'

            def drain() -> None:
                while True:
                    chunk = c.sock.recv(1 << 16)
                    if not chunk:
                        return
                    seen = max(0, len(received) - len(marker))
                    received.extend(chunk)
                    if received.find(marker, seen) >= 0:
                        return

            reader = threading.Thread(target=drain)
            reader.start()
            flood = garbage(15, 1 << 20)
            for i in range(0, len(flood), 4096):
                c.sock.sendall(flood[i : i + 4096])
            c.sock.sendall(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":4242}}\n')
            reader.join(60)
            assert not reader.is_alive()
            lines = bytes(received).split(b"\n")
            errors = [json.loads(x) for x in lines if x.startswith(b'{"error"')]
            assert len(errors) > 100 and {e["error"]["class"] for e in errors} == {"GenericError"}
            assert all(x.startswith((b'{"error"', b'\xff{"return": 4242}')) for x in lines if x)
            assert c.cmd("guest-fsfreeze-status") == {"return": "frozen"}
            assert writer_blocked(a.mount_point / "probe")
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 2}
            reap()
        assert "application-consistent" in q.log_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_while_frozen_thaws_runs_post_and_exits_0(node, lfs, sig):
    """Stopping the agent (systemctl stop; a hang-up, ^C) releases the freeze: thawed, post steps
    run, exit 0."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    q = quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path)
    with q, q.client() as c:
        assert freeze_list(c, a) == {"return": 1}
        witness = Witness(a)
        assert witness.done_within(0.2) is None
        assert q.stop(sig) == 0
        assert witness.done_within(5) is not None
        witness.close()
    assert node.events() == ["pre.sh ", "post.sh "]
    assert f"stopped by signal {int(sig)}" in q.log_text()


def test_host_hang_up_while_frozen_keeps_the_freeze_for_the_next_client(node, lfs):
    """A host that reconnects (libvirtd restart) finds the freeze and can thaw it, as with qemu-ga."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path) as q:
        with q.client() as c:
            assert freeze_list(c, a) == {"return": 1}
        with q.client() as c:
            c.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":1}}\n')
            assert c.line().startswith(b'{"error"') and c.line() == b'\xff{"return": 1}\n'
            assert c.cmd("guest-fsfreeze-status") == {"return": "frozen"}
            assert writer_blocked(a.mount_point / "probe")
            assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}
            reap()


def frozen_by_last_run(run_dir: str) -> list[str]:
    """The mount points the run directory's last report says were frozen (none without a report)."""
    try:
        report = json.loads(Path(run_dir, "last-report.json").read_text())
    except FileNotFoundError:
        return []
    return [
        t["mount_point"] for t in report["targets"] if t["freeze_ns"] is not None and not t["freeze_errno"]
    ]


def test_sigterm_during_the_pre_steps_fails_the_freeze_and_leaves_nothing_frozen(node, lfs):
    """Stopped while the pre-script runs: the host is told the freeze failed, and nothing is frozen
    after the pre-script either (the stop came before the first FIFREEZE)."""
    a = lfs["a"]
    node.config([str(a.mount_point)], pre="sleep 2\n")
    q = quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path)
    with q, q.client() as c:
        c.send(
            json.dumps(
                {"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [str(a.mount_point)]}}
            )
            + "\n"
        )
        assert wait_for(lambda: node.events() == ["pre.sh "], 10)
        q.proc.send_signal(signal.SIGTERM)
        reply = c.reply()
        assert reply == {
            "error": {
                "class": "GenericError",
                "desc": "freeze failed, nothing is frozen: the agent is stopping",
            }
        }
        assert q.proc.wait(30) == 0
    assert not writer_blocked(a.mount_point / "probe")
    reap()
    assert node.events() == ["pre.sh ", "post.sh "]
    assert frozen_by_last_run(node.run_dir) == []
    assert "window " not in q.log_text()


@pytest.mark.parametrize("with_config", [True, False])
def test_sigterm_during_the_fsfreeze_hook_freezes_nothing(node, lfs, with_config):
    """Stopped while qemu-ga's hook runs its "freeze" call: no FIFREEZE follows, the hook's "thaw"
    call still comes (as after any failed freeze), the host is told, exit 0."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    hook = node.script("fsfreeze-hook", "sleep 2\n", mode=0o755)
    config = node.config_path if with_config else None
    q = quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=config, hook=hook)
    with q, q.client() as c:
        c.send(
            json.dumps(
                {"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [str(a.mount_point)]}}
            )
            + "\n"
        )
        assert wait_for(lambda: node.events() == ["fsfreeze-hook freeze"], 10)
        q.proc.send_signal(signal.SIGTERM)
        assert c.reply()["error"]["desc"] == "freeze failed, nothing is frozen: the agent is stopping"
        assert q.proc.wait(30) == 0
    assert frozen_by_last_run(node.run_dir) == []
    assert "window " not in q.log_text()
    assert node.events()[-1] == "fsfreeze-hook thaw"


def test_agent_whose_log_and_socket_are_on_the_frozen_filesystem_still_thaws(node, lfs):
    """The agent writes nothing while frozen: its stderr on the frozen filesystem cannot stall it."""
    a, b = lfs["a"], lfs["b"]
    node.config([str(a.mount_point), str(b.mount_point)])
    # b's filesystem, reached through a root-only path (the sandbox lives under /tmp, where
    # quiesce qga, as root, refuses a socket): a bind mount in this private namespace.
    on_b = Path(node.base) / "on-b"
    on_b.mkdir(mode=0o700)
    subprocess.run(["mount", "--bind", str(b.mount_point), str(on_b)], check=True)
    try:
        work = mkdir(on_b / f"agent-{time.monotonic_ns()}")
        with quiesce_qga(work, node.run_dir, config=node.config_path) as q, q.client() as c:
            assert freeze_list(c, a, b) == {"return": 2}
            c.send(b"garbage\n")
            assert c.reply()["error"]["class"] == "GenericError"
            assert c.cmd("guest-fsfreeze-thaw", timeout=10) == {"return": 2}
            assert wait_for(lambda: "window " in q.log_text(), 10)
    finally:
        subprocess.run(["umount", str(on_b)], check=False)
