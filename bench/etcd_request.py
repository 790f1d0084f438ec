"""What one etcd request costs the fleet's client: etcd3gw on quiesce's LeanSession against requests.

Run from the repository root with ``quiesce[fleet]`` and etcd (Debian's
``etcd-server``) installed; no root needed::

    python bench/etcd_request.py [--requests 300] [--etcd URL]

Without ``--etcd`` it starts a throwaway etcd on 127.0.0.1 (a free port, a
temporary data directory, removed at the end). For each session it makes
the same requests through etcd3gw, as the fleet does (a put, and a
transaction with 16 compares like a node's report), and reports the CPU
time of this process and the wall time per request, median of five rounds,
and with the throwaway etcd, etcd's own CPU per request.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The throwaway etcd's pid, to read its CPU time (None with --etcd).
ETCD_PID: list[int] = []


def etcd_cpu_s() -> float | None:
    """The throwaway etcd's CPU time so far (user + system), or None."""
    if not ETCD_PID:
        return None
    with open(f"/proc/{ETCD_PID[0]}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def throwaway_etcd() -> Iterator[str]:
    """An etcd of its own on 127.0.0.1; its URL."""
    data = tempfile.mkdtemp(prefix="quiesce-bench-etcd-")
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    argv = [
        "etcd",
        f"--data-dir={data}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=default=http://127.0.0.1:{peer}",
        "--log-level=error",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ETCD_PID[:] = [proc.pid]
    try:
        yield url
    finally:
        ETCD_PID.clear()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def per_request(fn: Callable[[], Any], n: int) -> tuple[float, float, float]:
    """(CPU µs, wall µs, etcd's CPU µs or NaN) per call of ``fn``, over ``n`` calls."""
    server = etcd_cpu_s()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    cpu, wall = (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6
    after = etcd_cpu_s()
    return cpu, wall, float("nan") if server is None or after is None else (after - server) / n * 1e6


def store_with(url: str, lean: bool) -> Any:
    """A fleet Store; with ``lean`` False its clients get a plain requests.Session instead."""
    import etcd3gw
    import requests

    from quiesce.fleet.store import Store

    store = Store([url])
    if not lean:
        session = requests.Session()
        session.trust_env = False
        host, port = url.rsplit("//", 1)[1].split(":")
        store._clients = [etcd3gw.client(host=host, port=int(port), api_path="/v3/", session=session)]
    return store


def measure(url: str, n: int) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per session and request kind: the median (CPU µs, wall µs, etcd's CPU µs) of five rounds."""
    others = [f"/bench/frozen/n{i}" for i in range(16)]
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, lean in (("requests.Session (etcd3gw's default)", False), ("LeanSession (quiesce)", True)):
        store = store_with(url, lean)
        for k in others:
            store.put(k, {"ok": True})
        kinds: dict[str, Callable[[], Any]] = {
            "put": lambda s=store: s.put("/bench/a", {"a": 1}),
            "txn, 16 compares": lambda s=store: s.put_if(
                {"/bench/mine": {"a": 1}}, present=others, absent=["/bench/abort"], otherwise={}
            ),
        }
        out[name] = {}
        for kind, fn in kinds.items():
            per_request(fn, 30)  # warm: connection open, code paths hot
            rounds = [per_request(fn, n) for _ in range(5)]
            out[name][kind] = (
                statistics.median(r[0] for r in rounds),
                statistics.median(r[1] for r in rounds),
                statistics.median(r[2] for r in rounds),
            )
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per round (default 300)")
    parser.add_argument("--etcd", help="an etcd to use (default: start a throwaway one)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.etcd or stack.enter_context(throwaway_etcd())
        from quiesce.fleet.store import Store

        with Store([url]) as probe:  # wait until it answers
            for _ in range(100):
                with contextlib.suppress(Exception):
                    probe.get_prefix("/bench/")
                    break
                time.sleep(0.1)
        results = measure(url, args.requests)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.requests} requests a round, median of 5 rounds")
    print(f"{'session':<38} {'request':<18} {'CPU µs':>8} {'wall µs':>8} {'etcd CPU µs':>12}")
    for name, kinds in results.items():
        for kind, (cpu, wall, server) in kinds.items():
            print(f"{name:<38} {kind:<18} {cpu:8.0f} {wall:8.0f} {server:12.0f}")


if __name__ == "__main__":
    main()
