"""The distributed writer: cross-node causality, and the check that snapshots form a consistent cut.

Each node serves its part over TCP (``serve``, from inside the node's
namespaces): ``w N`` appends ``N`` to ``seq.log`` on the node's filesystem
and answers ``ok N`` once the write returned. The driver (``drive``) writes
sequence n to node 1 and waits for the answer, then to node 2, ..., then
n+1 to node 1: every write causally follows the one before it, across
machines. A write to a frozen filesystem blocks, so the chain stops while
any node is frozen.

Restored snapshots form a consistent cut exactly when the writes they hold
are a prefix of that chain (:func:`cut_violations`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence

LOG_NAME = "seq.log"
PORT = 7000


def cut_violations(seqs: Sequence[Sequence[int]]) -> list[str]:
    """What in the restored nodes' sequences breaks the cut (empty: a consistent cut).

    ``seqs[k]`` is node k's ``seq.log`` in order. Each must be 1..s_k with no
    gap; the chain (n, 1) -> (n, 2) -> ... -> (n, N) -> (n+1, 1) requires
    s_1 >= s_2 >= ... >= s_N >= s_1 - 1.
    """
    out: list[str] = []
    tops = []
    for k, seq in enumerate(seqs):
        if list(seq) != list(range(1, len(seq) + 1)):
            out.append(f"node {k + 1}: not a gap-free 1..n sequence")
        tops.append(len(seq))
    for k in range(1, len(tops)):
        if tops[k] > tops[k - 1]:
            out.append(
                f"node {k + 1} holds write {tops[k]} but node {k} only up to {tops[k - 1]}: "
                f"it holds a write that causally follows one missing on node {k}"
            )
    if tops and tops[-1] < tops[0] - 1:
        out.append(
            f"node 1 holds write {tops[0]} but node {len(tops)} only up to {tops[-1]}: "
            f"write {tops[0]} on node 1 causally follows write {tops[0] - 1} on node {len(tops)}"
        )
    return out


def parse_seq(data: bytes) -> list[int]:
    """A restored ``seq.log`` as numbers (a torn last line is dropped; it was never acknowledged)."""
    lines = data.split(b"\n")
    return [int(x) for x in lines[:-1] if x.strip().isdigit()]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        fd: int = self.server.log_fd  # type: ignore[attr-defined]
        for line in self.rfile:
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"w" and parts[1].isdigit():
                os.write(fd, parts[1] + b"\n")  # blocks while the filesystem is frozen
                self.wfile.write(b"ok " + parts[1] + b"\n")
                self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(directory: str, port: int = PORT) -> _Server:
    """Serve writes into ``directory/seq.log`` on ``port`` (all addresses of this namespace)."""
    server = _Server(("0.0.0.0", port), _Handler)
    server.log_fd = os.open(  # type: ignore[attr-defined]
        os.path.join(directory, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
    )
    threading.Thread(target=server.serve_forever, name="writer-server", daemon=True).start()
    return server


def drive(nodes: Sequence[tuple[str, int]], stop: threading.Event, timeout_s: float = 60.0) -> int:
    """Write the chain across ``nodes`` until ``stop``; returns the last sequence fully written."""
    conns = [socket.create_connection(addr, timeout=timeout_s) for addr in nodes]
    files = [c.makefile("rwb") for c in conns]
    n = 0
    try:
        while not stop.is_set():
            for f in files:
                f.write(b"w %d\n" % (n + 1))
                f.flush()
                answer = f.readline()
                if answer.strip() != b"ok %d" % (n + 1):
                    raise OSError(f"bad answer {answer!r}")
            n += 1
    finally:
        for f in files:
            f.close()
        for c in conns:
            c.close()
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quiesce.fleet.writer HOST:PORT...``: drive the chain until SIGTERM; print the count."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("nodes", nargs="+", metavar="HOST:PORT")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    addrs = [(h, int(port)) for h, port in (a.rsplit(":", 1) for a in args.nodes)]
    started = time.monotonic()
    print("driving", flush=True)
    n = drive(addrs, stop)
    print(f"{n} {time.monotonic() - started:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
