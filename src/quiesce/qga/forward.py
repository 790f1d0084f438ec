"""Forwarding to a stock qemu-ga listening on a unix socket (``qemu-ga -m unix-listen``).

Every command quiesce does not serve itself (files, exec, network, OS info,
users, time...) goes to the stock agent unchanged, and its reply comes back
byte for byte, so the host gets exactly what qemu-ga gives. The connection
is opened on first use and again after any failure, each time synchronised
with ``guest-sync-delimited`` (0xFF first, as the protocol asks, so stale
input is discarded) and followed by a ``guest-info`` to learn the agent's
commands: which exist (a name it does not know is "not found", also while
frozen) and which send no reply on success (``guest-shutdown``,
``guest-suspend-*``: after those, a ``guest-sync`` tells whether an error
came).
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import time
from typing import Any

from quiesce.qga.protocol import SENTINEL, QgaError, Request

#: How long the connection and its handshake may take.
CONNECT_TIMEOUT_S = 5.0
#: The longest reply line accepted from the agent (its own limit is far below).
MAX_LINE = 64 << 20


class ForwardError(QgaError):
    """The stock agent could not be reached or stopped answering."""


class Forwarder:
    """A client of the stock agent at ``path``; used from one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self.info: dict[str, Any] | None = None

    # -- what the agent has -------------------------------------------------

    def refresh(self) -> dict[str, Any] | None:
        """The agent's ``guest-info`` (connecting if needed); None when it cannot be reached."""
        try:
            self._connected()
        except ForwardError:
            return None
        return self.info

    def success_response(self, name: str) -> bool:
        """Whether ``name`` replies on success (as far as the agent said)."""
        for cmd in (self.info or {}).get("supported_commands", []):
            if cmd.get("name") == name:
                return bool(cmd.get("success-response", True))
        return True

    def knows(self, name: str) -> bool:
        """Whether the agent (as last seen) has a command ``name``."""
        return any(c.get("name") == name for c in (self.info or {}).get("supported_commands", []))

    # -- calls --------------------------------------------------------------

    def call(self, request: Request) -> list[bytes]:
        """Send ``request``; the raw reply lines to pass on (none for a silent success)."""
        sock = self._connected()
        try:
            try:
                sock.sendall(request.to_json())
            except OSError:
                # A connection the agent closed since (restarted): nothing was
                # delivered, so sending again on a fresh one cannot run it twice.
                self.close()
                sock = self._connected()
                sock.sendall(request.to_json())
            if self.success_response(request.name):
                return [self._readline(None)]
            return self._sync_after_silent()
        except (OSError, ForwardError) as err:
            self.close()
            raise ForwardError(
                f"the forwarded agent at {self.path} failed during {request.name}: {err}"
            ) from err

    def _sync_after_silent(self) -> list[bytes]:
        """After a command with no success reply: its error, if any, comes before our sync's reply."""
        ident = random.randrange(1 << 62)
        assert self._sock is not None
        self._sock.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": ident}}).encode() + b"\n")
        out: list[bytes] = []
        while True:
            line = self._readline(None)
            if _is_return(line, ident):
                return out
            out.append(line)

    # -- the connection -----------------------------------------------------

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(self.path)
            sock.settimeout(None)
            _peer_is_root(sock)
            self._sock, self._buf = sock, bytearray()
            self._handshake()
            self.info = self._own_call("guest-info")
        except (OSError, ValueError, ForwardError) as err:
            self.close()
            sock.close()  # not yet ours when the connect or the peer check failed
            raise ForwardError(f"the forwarded agent at {self.path} cannot be reached: {err}") from err
        return sock

    def _handshake(self) -> None:
        assert self._sock is not None
        ident = random.randrange(1 << 62)
        sync = {"execute": "guest-sync-delimited", "arguments": {"id": ident}}
        self._sock.sendall(SENTINEL + json.dumps(sync).encode() + b"\n")
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            # Everything before the sentinel is stale (or the agent's complaint about our 0xFF).
            at = self._buf.find(SENTINEL)
            if at >= 0:
                del self._buf[: at + 1]
                if _is_return(self._readline(deadline), ident):
                    return
                continue
            self._buf.clear()
            self._fill(deadline)

    def _own_call(self, name: str) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
        reply = json.loads(self._readline(time.monotonic() + CONNECT_TIMEOUT_S))
        ret = reply.get("return") if isinstance(reply, dict) else None
        if not isinstance(ret, dict):
            raise ForwardError(f"unexpected reply to {name}: {reply!r}")
        return ret

    def _readline(self, deadline: float | None) -> bytes:
        while True:
            at = self._buf.find(b"\n")
            if at >= 0:
                line = bytes(self._buf[: at + 1])
                del self._buf[: at + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise ForwardError("reply too long")
            self._fill(deadline)

    def _fill(self, deadline: float | None) -> None:
        assert self._sock is not None
        if deadline is not None:
            left = deadline - time.monotonic()
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                raise ForwardError("no reply in time")
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise ForwardError("connection closed")
        self._buf += chunk

    def close(self) -> None:
        """Drop the connection (the next call reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = bytearray()


def _peer_is_root(sock: socket.socket) -> None:
    """Refuse a forwarded agent another user runs, when we are root.

    The host's other commands (``guest-exec``, ``guest-set-user-password``,
    files) go to whoever listens at the path: a socket another user planted
    there, or bound after the real agent stopped, must not receive them.
    """
    if os.geteuid() != 0:
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != 0:
        raise ForwardError(f"it is run by uid {uid}, not root: refusing to forward the host's commands to it")


def _is_return(line: bytes, ident: int) -> bool:
    try:
        reply = json.loads(line)
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("return") == ident
