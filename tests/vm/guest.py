"""A booted guest and its agent port, driven from the host.

The guest runs in QEMU with TCG (``-accel tcg -cpu max``; ``--kvm`` where
nested KVM works), so every freeze happens inside the guest, on the guest's
own disks: the host only talks to a unix socket and never freezes anything.
The agent port ``org.qemu.guest_agent.0`` is a QEMU chardev socket the host
connects to, exactly the channel libvirt uses.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.qga.agents import Client  # noqa: E402

#: A writer for inside the guest: write 4 KiB + fdatasync in a loop on /data for
#: the given seconds, then print the longest gap between completions (the stall a
#: freeze causes) and the median.
WRITER = """
import json, os, sys, time
end = time.monotonic() + float(sys.argv[1])
fd = os.open("/data/writer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
buf, gaps, last = b"x" * 4096, [], time.monotonic()
while last < end:
    os.write(fd, buf)
    os.fdatasync(fd)
    now = time.monotonic()
    gaps.append(now - last)
    last = now
gaps.sort()
print(json.dumps({"n": len(gaps), "max_ms": gaps[-1] * 1e3, "median_ms": gaps[len(gaps) // 2] * 1e3}))
"""


def sync_delimited(c: Client, ident: int, settle_s: float) -> bool:
    """One 0xFF + ``guest-sync-delimited`` with ``ident``: True once the agent echoed it (within 3 s).

    What the agent had queued before is read and dropped; after the answer,
    ``settle_s`` of quiet drops any late output too.
    """
    c.send(
        b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": ident}}).encode() + b"\n"
    )
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            line = c.line(max(0.05, end - time.monotonic()))
        except TimeoutError:
            return False
        if line.startswith(b"\xff") and json.loads(line[1:]).get("return") == ident:
            c.quiet(settle_s)
            return True
    return False


class Guest:
    """The guest's QEMU process, its console log, and its agent socket."""

    def __init__(self, work: Path, *, kvm: bool = False, memory_mb: int = 1024) -> None:
        self.work = work
        self.sock = str(work / "qga.sock")
        self.console = work / "console.log"
        accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
        argv = [
            "qemu-system-x86_64", *accel, "-smp", "1", "-m", str(memory_mb),
            "-display", "none", "-monitor", "none", "-nic", "none",
            "-serial", f"file:{self.console}",
            "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0",
            "-drive", f"file={work / 'root.img'},format=raw,if=virtio",
            "-drive", f"file={work / 'data.img'},format=raw,if=virtio",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=qga0,path={self.sock},server=on,wait=off",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]  # fmt: skip
        Path(self.sock).unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.client: Client | None = None

    def connect(self, timeout: float = 900.0) -> Client:
        """Connect to the port and wait until an agent in the guest answers (boot included)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock):
            self._alive()
            time.sleep(0.2)
        self.client = Client(self.sock, whole_freeze_ok=True, timeout=60)
        self.resync(deadline)
        return self.client

    def resync(self, deadline: float | None = None) -> None:
        """0xFF + guest-sync-delimited until the agent answers (after a boot or an agent switch)."""
        c = self._c()
        deadline = deadline or time.monotonic() + 120
        ident = 1000
        while True:
            self._alive()
            ident += 1
            if sync_delimited(c, ident, settle_s=0.1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("no agent answered on the port")

    def cmd(self, name: str, timeout: float = 120, **arguments: object) -> dict:
        """One command; its parsed reply."""
        return self._c().cmd(name, timeout, **arguments)

    def timed(self, name: str, **arguments: object) -> tuple[dict, float]:
        """One command and its round trip in ms, as the host sees it."""
        start = time.perf_counter()
        reply = self.cmd(name, **arguments)
        return reply, (time.perf_counter() - start) * 1e3

    def exec(self, path: str, *args: str, wait: bool = True, timeout: float = 120) -> dict:
        """guest-exec with captured output; with ``wait``, the finished status (output decoded)."""
        started = self.cmd("guest-exec", path=path, arg=list(args), **{"capture-output": True})
        if "error" in started or not wait:
            return started
        pid = started["return"]["pid"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            reply = self.cmd("guest-exec-status", pid=pid)
            if "return" not in reply:
                raise RuntimeError(f"guest-exec-status {pid}: {reply}")
            status = reply["return"]
            if status["exited"]:
                for key in ("out-data", "err-data"):
                    if key in status:
                        status[key] = base64.b64decode(status[key]).decode(errors="replace")
                return status
            time.sleep(0.2)
        raise TimeoutError(f"{path} {args} did not finish")

    def writer(self, seconds: float) -> int:
        """Start the writer on /data; its guest-exec pid."""
        reply = self.exec("/usr/bin/python3", "-c", WRITER, str(seconds), wait=False)
        return int(reply["return"]["pid"])

    def writer_result(self, pid: int, timeout: float = 120) -> dict:
        """The writer's summary, once it finished."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            reply = self.cmd("guest-exec-status", pid=pid)
            if "return" not in reply:
                raise RuntimeError(f"guest-exec-status {pid}: {reply}")
            status = reply["return"]
            if status["exited"]:
                return json.loads(base64.b64decode(status["out-data"]))
            time.sleep(0.2)
        raise TimeoutError("the writer did not finish")

    def wait_exit(self, timeout: float = 180) -> int | None:
        """Wait for QEMU to end (after guest-shutdown); kill it past ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        """Disconnect and make sure QEMU is gone."""
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _c(self) -> Client:
        if self.client is None:
            raise RuntimeError("connect() first")
        return self.client

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.console.read_text(errors="replace")[-3000:] if self.console.exists() else ""
            raise RuntimeError(f"QEMU exited ({self.proc.returncode}); console:\n{tail}")
