"""The channel to the host under stress: a host that stops reading, a port whose host side is gone.

Every test freezes only loop filesystems (freeze-lists naming them), with a
writer child on a frozen one as the witness where the thaw's moment matters.
The port is emulated by a pty (:class:`PortHost`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

from quiesce.engine.fdwait import wait_readable
from quiesce.qga import server
from quiesce.qga.events import EventLog
from tests.qga.agents import Agent, mkdir, quiesce_qga, reap, wait_for, writer_blocked
from tests.qga.test_faults import Witness, freeze_list

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

PING = b'{"execute":"guest-ping"}\n'


def stuff(sock: socket.socket) -> int:
    """Send pings without reading replies until the agent stops reading too; bytes sent."""
    sock.setblocking(False)
    sent = 0
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 1.0:
        try:
            sent += sock.send(PING * 64)
            idle_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)
    return sent


def test_sigterm_while_a_reply_waits_for_a_host_that_does_not_read(node, lfs):
    """Stopped while blocked writing replies nobody reads: the freeze is released at once, exit 0."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    q = quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir, config=node.config_path)
    with q, q.client() as c:
        assert freeze_list(c, a) == {"return": 1}
        witness = Witness(a)
        assert stuff(c.sock) > 0
        assert witness.done_within(0.2) is None
        q.proc.send_signal(signal.SIGTERM)
        assert witness.done_within(10) is not None, "still frozen 10 s after SIGTERM"
        assert q.proc.wait(10) == 0
        witness.close()
    assert node.events() == ["pre.sh ", "post.sh "]


TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
SYS_PIDFD_GETFD = 438


class PortHost:
    """The host's end of a virtio-serial-like port: ``quiesce qga --device /dev/ptmx``'s pty.

    The agent opens a new pty master as its port; the test takes the slave
    (``pidfd_getfd`` of the agent's master, then ``TIOCGPTPEER``) and plays
    the host on it. Closed, the host is gone as on a virtio port whose host
    side is closed: the agent reads end-of-file (EIO), its writes fail with
    EAGAIN once the buffer is full, and the port polls as hung up.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        self.buf = bytearray()

    def _agent_master(self) -> int:
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(f"/proc/{self.pid}/fd/{name}") in ("/dev/ptmx", "/dev/pts/ptmx"):
                    return int(name)
        raise FileNotFoundError("the agent has no pty master open")

    def attach(self) -> None:
        """Open the host's end (a new host)."""
        assert wait_for(lambda: self._has_master(), 20)
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(self.pid)
        try:
            master = libc.syscall(SYS_PIDFD_GETFD, pidfd, self._agent_master(), 0)
            if master < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd")
        finally:
            os.close(pidfd)
        try:
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            self.fd = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        finally:
            os.close(master)
        tty.setraw(self.fd)  # bytes as they are, no echo
        self.buf.clear()

    def _has_master(self) -> bool:
        try:
            self._agent_master()
        except FileNotFoundError:
            return False
        return True

    def detach(self) -> None:
        """Close the host's end (the host is gone)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def line(self, timeout: float = 20.0) -> bytes:
        """The next line from the agent."""
        assert self.fd is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not wait_readable(self.fd, left):
                raise TimeoutError(f"no reply; have {bytes(self.buf)!r}")
            self.buf += os.read(self.fd, 1 << 16)
        at = self.buf.index(b"\n") + 1
        out = bytes(self.buf[:at])
        del self.buf[:at]
        return out

    def sync(self, ident: int) -> None:
        """guest-sync-delimited as libvirt does it: 0xFF first, then skip to the reply's 0xFF."""
        self.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":%d}}\n' % ident)
        while not self.line().endswith(b'\xff{"return": %d}\n' % ident):
            pass

    def cmd(self, request: dict) -> dict:
        """Send one request (never a plain freeze) and return its reply."""
        assert request["execute"] != "guest-fsfreeze-freeze"
        self.send(json.dumps(request).encode() + b"\n")
        return json.loads(self.line())

    def stuff(self) -> None:
        """Send pings without reading replies until the agent stops reading too."""
        assert self.fd is not None
        os.set_blocking(self.fd, False)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.0:
            try:
                os.write(self.fd, PING * 64)
                idle_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        os.set_blocking(self.fd, True)


def port_agent(node) -> Agent:  # type: ignore[no-untyped-def]
    """``quiesce qga --device /dev/ptmx`` with the node's config (its ``sock`` is not used)."""
    work = mkdir(Path(node.base) / "w")
    argv = [sys.executable, "-m", "quiesce", "qga", "--device", "/dev/ptmx", "--run-dir", node.run_dir]
    argv += ["--config", node.config_path, "--no-fsfreeze-hook", "--no-pluginhost", "--no-vmbackup-conf"]
    return Agent(argv, "", work / "quiesce-qga.log")


def cpu_seconds(pid: int) -> float:
    """User and system time ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_port_host_gone_with_replies_pending_drops_them_and_serves_the_next_host(node, lfs):
    """The host closes its end while replies wait: they are dropped (no busy loop); the next host
    finds the freeze (status "frozen") and thaws it."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    with port_agent(node) as q:
        host = PortHost(q.proc.pid)
        host.attach()
        host.sync(1)
        freeze = {"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [str(a.mount_point)]}}
        assert host.cmd(freeze) == {"return": 1}
        host.stuff()
        host.detach()
        used = cpu_seconds(q.proc.pid)
        time.sleep(1)
        used = cpu_seconds(q.proc.pid) - used
        assert used < 0.3, f"the agent used {used:.2f} s of CPU in 1 s with the host gone"
        host.attach()
        host.sync(2)
        assert host.cmd({"execute": "guest-fsfreeze-status"}) == {"return": "frozen"}
        assert writer_blocked(a.mount_point / "probe")
        assert host.cmd({"execute": "guest-fsfreeze-thaw"}) == {"return": 1}
        reap()
        host.detach()
    assert "the host hung up" in q.log_text()


def test_sigterm_while_the_port_host_is_gone_with_replies_pending(node, lfs):
    """Stopped while replies wait for a host that closed its end: thawed at once, post steps run, exit 0."""
    a = lfs["a"]
    node.config([str(a.mount_point)])
    with port_agent(node) as q:
        host = PortHost(q.proc.pid)
        host.attach()
        host.sync(1)
        freeze = {"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [str(a.mount_point)]}}
        assert host.cmd(freeze) == {"return": 1}
        witness = Witness(a)
        host.stuff()
        host.detach()
        assert witness.done_within(0.2) is None
        q.proc.send_signal(signal.SIGTERM)
        assert witness.done_within(10) is not None, "still frozen 10 s after SIGTERM"
        assert q.proc.wait(10) == 0
        witness.close()
    assert node.events() == ["pre.sh ", "post.sh "]


def test_a_half_sent_request_does_not_reach_the_next_client(node):
    """A client that leaves a request half-sent: the next connection starts afresh (qemu-ga would
    join the two)."""
    with quiesce_qga(mkdir(Path(node.base) / "w"), node.run_dir) as q:
        with q.client() as c:
            c.send(b'{"execute":')
        with q.client() as c:
            c.send(PING)
            assert c.line() == b'{"return": {}}\n'


def test_a_host_that_reads_slowly_gets_every_reply(monkeypatch):
    """The write gives up only after a time with no progress: a slow reader, taking longer than
    that in all, still gets every byte."""
    monkeypatch.setattr(server, "WRITE_TIMEOUT_S", 1.0)
    ours, host = socket.socketpair()
    data = bytes(range(256)) * 8192  # 2 MiB: about 3 s at the reader's pace
    got = bytearray()

    def read_slowly() -> None:
        while len(got) < len(data):
            chunk = host.recv(32 << 10)
            if not chunk:
                return
            got.extend(chunk)
            time.sleep(0.05)

    reader = threading.Thread(target=read_slowly)
    stop = server.Stopper()
    try:
        reader.start()
        assert server.Channel(ours.fileno(), EventLog(io.StringIO()), stop).write(data)
        reader.join()
    finally:
        stop.close()
        ours.close()
        host.close()
    assert bytes(got) == data
