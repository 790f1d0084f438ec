"""The QEMU guest agent (``qemu-ga``) as a freeze contender, held on a short leash.

The agent runs as a child of the benchmark, so it shares the benchmark's
private mount namespace and sees the sandbox's loop mounts (and the machine's
mounts as they were when the namespace was made, nothing mounted since in
other namespaces). It listens on a unix socket in a temporary directory, keeps
its state there (``-t``), and is stopped (SIGTERM, then SIGKILL) by
:meth:`GuestAgent.close`.

What it may be asked, and why nothing else:

- ``guest-sync`` (once, to line up the stream), ``guest-fsfreeze-freeze-list``
  with an explicit ``mountpoints`` list, and ``guest-fsfreeze-thaw``. Every
  mount point in the list is checked first to be one of the sandbox's loop
  mounts, mounted exactly once from that loop device.
- ``guest-fsfreeze-freeze`` (no list) freezes every filesystem the agent
  sees, ``/`` included. This client never sends it, and the agent is started
  with every RPC but the three above disabled (``-b``), so even a mistake
  here could not freeze the machine.
- ``guest-fsfreeze-thaw`` takes no list: it FITHAWs every mount the agent
  sees until FITHAW fails, so it would also thaw a filesystem of the machine
  frozen by another tool. That is acceptable here only because nothing else
  is frozen in this namespace while the benchmark runs; its return value
  (the number of filesystems it thawed) is checked to be exactly ours.

No fsfreeze hook is passed (``-F``): the agent only freezes and thaws.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from quiesce.engine.mountinfo import read_mountinfo

#: The only requests this client sends; the agent disables every other one.
ALLOWED_RPCS = ("guest-sync", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw")
#: How long to wait for the socket to appear, and for any answer.
START_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1
#: Loaded in the parent: the agent's pre-exec hook must not load libraries after fork.
_LIBC = ctypes.CDLL(None, use_errno=True)


class AgentError(RuntimeError):
    """qemu-ga could not be started, refused a request, or answered unexpectedly."""


def agent_binary() -> str | None:
    """Path of ``qemu-ga``: ``$QEMU_GA`` (CI unpacks the binary only), else on PATH; None if none."""
    given = os.environ.get("QEMU_GA")
    if given and os.access(given, os.X_OK):
        return given
    return shutil.which("qemu-ga") or next(
        (p for p in ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga") if os.access(p, os.X_OK)), None
    )


def agent_version(binary: str) -> str:
    """The first line of ``qemu-ga --version``."""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.strip().splitlines() or ["qemu-ga, version unknown"])[0]


def _die_with_parent() -> None:
    """In the agent, before exec: SIGTERM it if the benchmark dies (it then thaws what it holds)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def disabled_rpcs(binary: str) -> list[str]:
    """Every RPC this agent knows but :data:`ALLOWED_RPCS`, for ``-b``."""
    done = subprocess.run([binary, "-b", "help"], capture_output=True, text=True, check=False)
    known = done.stdout.split()
    if "guest-fsfreeze-freeze" not in known or not set(ALLOWED_RPCS) <= set(known):
        raise AgentError(f"{binary} -b help did not list the fsfreeze RPCs: {done.stdout.strip()!r}")
    return [rpc for rpc in known if rpc not in ALLOWED_RPCS]


class GuestAgent:
    """One ``qemu-ga`` child and a connection to it.

    ``sandbox_mounts`` maps every mount point the agent may freeze to the
    loop device it must be mounted from. Use as a context manager.
    """

    def __init__(self, binary: str, work_dir: str, sandbox_mounts: Mapping[str, str]) -> None:
        self.binary = binary
        self.sandbox_mounts = dict(sandbox_mounts)
        self.dir = os.path.join(work_dir, "qga")
        os.mkdir(self.dir, 0o700)
        self.socket_path = os.path.join(self.dir, "qga.sock")
        self.log_path = os.path.join(self.dir, "qga.log")
        self.argv = [
            binary,
            "-m",
            "unix-listen",
            "-p",
            self.socket_path,
            "-t",
            os.path.join(self.dir, "state"),
            "-f",
            os.path.join(self.dir, "qga.pid"),
            "-b",
            ",".join(disabled_rpcs(binary)),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._sync_id = 0

    # -- lifetime -----------------------------------------------------------

    def start(self) -> None:
        """Start the agent, connect, and line the stream up with ``guest-sync``."""
        os.mkdir(os.path.join(self.dir, "state"), 0o700)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent
            )
        end = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AgentError(f"qemu-ga exited with {self.proc.returncode}: {self.log()}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > end:
                    raise AgentError(f"qemu-ga did not listen on {self.socket_path}") from None
                time.sleep(0.01)
                continue
            break
        sock.settimeout(REPLY_TIMEOUT_S)
        self._sock = sock
        self.sync()

    def close(self) -> None:
        """Disconnect and stop the agent (SIGTERM: it thaws what it still holds frozen)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self) -> str:
        """What the agent wrote to stderr/stdout so far."""
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return f.read().strip()
        return ""

    # -- the protocol -------------------------------------------------------

    def _send(self, rpc: str, arguments: dict[str, Any] | None = None) -> None:
        if rpc not in ALLOWED_RPCS:
            raise AgentError(f"refusing to send {rpc}: only {', '.join(ALLOWED_RPCS)} are allowed")
        if self._sock is None:
            raise AgentError("qemu-ga is not connected")
        msg: dict[str, Any] = {"execute": rpc}
        if arguments is not None:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")

    def _reply(self) -> dict[str, Any]:
        """The next JSON object from the agent (one per line)."""
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise AgentError(f"qemu-ga closed the connection: {self.log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _call(self, rpc: str, arguments: dict[str, Any] | None = None) -> Any:
        self._send(rpc, arguments)
        reply = self._reply()
        if "error" in reply:
            raise AgentError(f"{rpc}: {reply['error']}")
        return reply.get("return")

    def sync(self) -> None:
        """``guest-sync``: drop anything stale until the agent echoes our id."""
        self._sync_id += 1
        want = os.getpid() * 1000 + self._sync_id
        self._send("guest-sync", {"id": want})
        for _ in range(100):
            reply = self._reply()
            if reply.get("return") == want:
                return
        raise AgentError(f"guest-sync: no echo of id {want}")

    def check_mounts(self, mounts: Sequence[str]) -> None:
        """Every mount is a sandbox loop mount, mounted once, from its loop device, right now."""
        if not mounts:
            raise AgentError("refusing an empty mountpoints list (the agent would freeze everything)")
        seen: dict[str, list[str]] = {}
        for m in read_mountinfo():
            seen.setdefault(m.mount_point, []).append(m.source)
        for mp in mounts:
            device = self.sandbox_mounts.get(mp)
            if device is None:
                raise AgentError(f"refusing to freeze {mp}: not one of the sandbox's loop mounts")
            if seen.get(mp) != [device]:
                raise AgentError(f"refusing to freeze {mp}: mounted from {seen.get(mp)}, not just {device}")

    def window(self, mounts: Sequence[str]) -> dict[str, int]:
        """freeze-list ``mounts`` then thaw: wall time around the two requests, in ns.

        Includes both JSON round trips over the socket and the agent's own
        work (it re-reads mountinfo for each request, and the thaw opens every
        mount it sees): that is what using the agent costs.
        """
        self.check_mounts(mounts)
        args = {"mountpoints": list(mounts)}
        t0 = time.monotonic_ns()
        try:
            frozen = self._call("guest-fsfreeze-freeze-list", args)
        except BaseException:
            # The agent thaws what it froze when freeze-list fails; make sure.
            with contextlib.suppress(Exception):
                self._call("guest-fsfreeze-thaw")
            raise
        t1 = time.monotonic_ns()
        thawed = self._call("guest-fsfreeze-thaw")
        t2 = time.monotonic_ns()
        if frozen != len(mounts) or thawed != len(mounts):
            raise AgentError(
                f"qemu-ga froze {frozen} and thawed {thawed} filesystems, expected {len(mounts)} "
                "(more thawed would mean something else on the machine was frozen)"
            )
        return {"window_ns": t2 - t0, "freeze_rtt_ns": t1 - t0, "thaw_rtt_ns": t2 - t1}
