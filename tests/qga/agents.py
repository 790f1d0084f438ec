"""Test helpers: start ``quiesce qga`` or a stock ``qemu-ga`` on a unix socket, and talk to it.

Safety: a plain ``guest-fsfreeze-freeze`` (or a freeze-list without mount
points) makes qemu-ga freeze every filesystem it sees, this machine's root
included. :class:`Client` refuses to send either unless told the agent is
``quiesce qga`` with a config whose targets are loop mounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from quiesce.engine.fdwait import wait_readable

#: Debian's stock qemu-ga: $QEMU_GA (CI unpacks the binary only), else from PATH.
QEMU_GA = os.environ.get("QEMU_GA") or shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"


class Client:
    """A guest-agent client on a unix socket: raw bytes out, reply lines back."""

    def __init__(self, path: str, *, whole_freeze_ok: bool = False, timeout: float = 20.0) -> None:
        self.whole_freeze_ok = whole_freeze_ok
        self.timeout = timeout
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.buf = bytearray()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        """Send raw bytes (a request line, garbage, a 0xFF)."""
        raw = data.encode("latin-1") if isinstance(data, str) else data
        if b"guest-fsfreeze-freeze" in raw and not self.whole_freeze_ok:
            # Only freeze-list with explicit mount points may go to an agent that could freeze "/".
            obj = json.loads(raw.decode("latin-1").strip())
            mounts = obj.get("arguments", {}).get("mountpoints")
            assert obj.get("execute") == "guest-fsfreeze-freeze-list" and mounts, f"refused to send {raw!r}"
        self.sock.sendall(raw)

    def line(self, timeout: float | None = None) -> bytes:
        """The next reply line (with a leading 0xFF if the agent sent one)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not wait_readable(self.sock.fileno(), left):
                raise TimeoutError(f"no reply; have {bytes(self.buf)!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; have {bytes(self.buf)!r}")
            self.buf += chunk
        at = self.buf.index(b"\n")
        out = bytes(self.buf[: at + 1])
        del self.buf[: at + 1]
        return out

    def reply(self, timeout: float | None = None) -> dict:
        """The next reply, parsed (a 0xFF sentinel is dropped)."""
        return json.loads(self.line(timeout).lstrip(b"\xff"))

    def cmd(self, name: str, timeout: float | None = None, **arguments: object) -> dict:
        """Send one command and return its parsed reply."""
        req: dict[str, object] = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        self.send(json.dumps(req) + "\n")
        return self.reply(timeout)

    def quiet(self, wait: float = 0.2) -> bytes:
        """Whatever arrives within ``wait`` seconds (b"" if nothing)."""
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if wait_readable(self.sock.fileno(), max(0.0, end - time.monotonic())):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        out = bytes(self.buf)
        self.buf.clear()
        return out


class Agent:
    """A running agent process on a unix socket; stopped (SIGTERM, then SIGKILL) on close."""

    def __init__(self, argv: list[str], sock: str, log: Path) -> None:
        self.sock = sock
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def client(self, **kwargs: object) -> Client:
        """A new connection (retries until the agent listens)."""
        return Client(self.sock, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        """What the agent wrote on stdout and stderr."""
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the agent and reap it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def qemu_ga(workdir: Path, *, hook: str | None = None, block: tuple[str, ...] = ()) -> Agent:
    """Debian's stock qemu-ga on ``workdir/qemu-ga.sock``, its state in ``workdir``."""
    sock = str(workdir / "qemu-ga.sock")
    argv = [QEMU_GA, "-m", "unix-listen", "-p", sock, "-t", str(workdir), "-f", str(workdir / "qemu-ga.pid")]
    if hook is not None:
        argv.append(f"-F{hook}")
    if block:
        argv += ["-b", ",".join(block)]
    return Agent(argv, sock, workdir / "qemu-ga.log")


def quiesce_qga(
    workdir: Path,
    run_dir: str,
    *,
    config: str | None = None,
    forward: str | None = None,
    hook: str | None = None,
    hook_option: str | None = None,
    timeout: float | None = None,
    extra: tuple[str, ...] = (),
) -> Agent:
    """``quiesce qga --unix-listen workdir/quiesce-qga.sock`` with no file outside the test's own.

    ``hook_option`` is the hook's option as written (qemu-ga's ``-FPATH``), instead of ``hook``.
    """
    sock = str(workdir / "quiesce-qga.sock")
    argv = [sys.executable, "-m", "quiesce", "qga", "--unix-listen", sock, "--run-dir", run_dir]
    argv += ["--config", config] if config else ["--no-config"]
    if hook_option is not None:
        argv.append(hook_option)
    else:
        argv += ["--fsfreeze-hook", hook] if hook else ["--no-fsfreeze-hook"]
    argv += ["--no-pluginhost", "--no-vmbackup-conf"]
    if forward:
        argv += ["--forward", f"unix:{forward}"]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    return Agent([*argv, *extra], sock, workdir / "quiesce-qga.log")


def wait_for(predicate, timeout: float = 10.0, step: float = 0.005) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout``; whether it became true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def writer_blocked(path: Path, within: float = 0.3) -> bool:
    """True if a small write+fsync to ``path`` does not finish within ``within`` s (frozen).

    The writer is a child process (it may sleep in the kernel until the
    filesystem thaws); it is reaped later by :func:`reap`.
    """
    code = (
        f"import os; fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT, 0o600); "
        "os.write(fd, b'x'); os.fsync(fd)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    _pending.append(proc)
    try:
        proc.wait(within)
    except subprocess.TimeoutExpired:
        return True
    return False


_pending: list[subprocess.Popen[bytes]] = []


def reap(timeout: float = 30.0) -> None:
    """Wait for every writer :func:`writer_blocked` started (call once thawed)."""
    while _pending:
        proc = _pending.pop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)


def mkdir(path: Path) -> Path:
    """Make ``path`` (root-only) and return it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
