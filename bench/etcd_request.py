"""What one etcd request costs the fleet's client: etcd3gw on quiesce's LeanSession against requests.

Run from the repository root with ``quiesce[fleet]`` and etcd (Debian's
``etcd-server``) installed; no root needed::

    python bench/etcd_request.py [--requests 300] [--etcd URL] [--grpc]

Without ``--etcd`` it starts a throwaway etcd on 127.0.0.1 (a free port, a
temporary data directory, removed at the end). For each session it makes
the same requests through etcd3gw, as the fleet does (a put; a
transaction with one compare per other node, like a node's ``ready`` report
with 16 others; and the same check as two key-range compares over the
others' ``progress`` keys, like its ``frozen`` and ``snapshotted`` reports
inside the window), and reports the CPU
time of this process and the wall time per request, median of five rounds,
and with the throwaway etcd, etcd's own CPU per request.

Then what one watch event costs its receiver: another process puts a key
every ``--event-gap-ms`` (so each event wakes the receiver on its own, as
the freeze, cut and thaw keys wake a node), and this process takes the
events, in turns, through the fleet's :class:`~quiesce.fleet.watch.Watch`
(read in the caller's thread) and through a reader thread handing them
over a ``queue.Queue`` (how the watch was read before): this process's
CPU per event, median of the rounds.

With ``--grpc`` (the throwaway etcd, and ``etcdctl`` from Debian's
``etcd-client``), last: etcd's own CPU per write when the writes come
through gRPC, not the JSON gateway (``etcdctl check perf --load s``, 60 s):
how much of a request's cost in etcd is the gateway's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any


def _free_ports(n: int) -> list[int]:
    """``n`` ports free now on 127.0.0.1, all different (every socket is held while they are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(port: int) -> bool:
    """Whether an etcd answers on ``port`` (its ``/version``: anything else listening there is not it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=0.5) as answer:
            return "etcdserver" in json.loads(answer.read())
    except (OSError, ValueError):
        return False


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
    proc, url = _start_etcd(data)
    ETCD_PID[:] = [proc.pid]
    try:
        yield url
    finally:
        ETCD_PID.clear()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def _start_etcd(data: str, attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """Start etcd on two free ports and wait until it listens; again on new ports if one was taken since.

    Each attempt has a data directory of its own under ``data``: one that
    began with other peer URLs could not start again with new ones.
    """
    why = ""
    for attempt in range(attempts):
        client, peer = _free_ports(2)
        url = f"http://127.0.0.1:{client}"
        argv = [
            "etcd",
            f"--data-dir={os.path.join(data, str(attempt))}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--log-level=error",
        ]
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(client):
                    return proc, url
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.seek(0)
            why = log.read().decode(errors="replace").strip()[-2000:]
    raise SystemExit(f"etcd did not start on 127.0.0.1 in {attempts} attempts; it said: {why or 'nothing'}")


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
    others = [f"/bench/frozen/n{i:02d}" for i in range(16)]
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, lean in (("requests.Session (etcd3gw's default)", False), ("LeanSession (quiesce)", True)):
        store = store_with(url, lean)
        store.put("/bench/alive", {})
        for k in others:
            store.put(k, {"ok": True})
        since, _ = store.get_prefix("/bench/none/")
        for k in others:
            store.put(k.replace("frozen", "progress"), {"ok": True})
        kinds: dict[str, Callable[[], Any]] = {
            "put": lambda s=store: s.put("/bench/a", {"a": 1}),
            # Both report transactions commit their step here: etcd evaluates every compare.
            "txn, 16 key compares": lambda s=store: s.put_if(
                {"/bench/mine": {"a": 1}, "/bench/step": {"by": 1}},
                present=[*others, "/bench/alive"],
                absent=["/bench/abort", "/bench/none"],
            ),
            "txn, 2 range compares": lambda s=store, after=since: s.put_if(
                {"/bench/mine": {"a": 1}, "/bench/progress/n07x": {"last": "x"}, "/bench/step": {"by": 1}},
                present=["/bench/alive"],
                absent=["/bench/abort", "/bench/none"],
                newer=[
                    ("/bench/progress/", "/bench/progress/n07x", after),
                    ("/bench/progress/n07x\0", "/bench/progress0", after),
                ],
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


#: The other process: puts a key every gap once told to start (a line on stdin).
PUTTER = """
import sys, time
from quiesce.fleet.store import Store
url, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Store([url]) as store:
    store.put("/bench/watched", {"i": -1})
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        store.put("/bench/watched", {"i": i})
        time.sleep(gap)
"""


class ThreadedWatch:
    """The baseline: the watch's stream read by a thread of its own, events handed over a queue."""

    def __init__(self, url: str, prefix: str, start_revision: int) -> None:
        import requests

        from quiesce.fleet.wire import b64, decode_value, range_end

        self.events: queue.Queue[Any] = queue.Queue()
        self._session = requests.Session()
        create: dict[str, Any] = {
            "key": b64(prefix),
            "range_end": b64(range_end(prefix)),
            "start_revision": start_revision,
        }
        self._response = self._session.post(
            f"{url}/v3/watch", json={"create_request": create}, stream=True, timeout=(2, None)
        )

        def read() -> None:
            pending = b""
            with contextlib.suppress(requests.RequestException, OSError):  # close() ends the stream
                for chunk in self._response.iter_content(chunk_size=None):
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        for ev in json.loads(line).get("result", {}).get("events", []):
                            self.events.put(decode_value(ev["kv"].get("value")))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def get(self, timeout_s: float) -> Any:
        return self.events.get(timeout=timeout_s)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            socket.socket(fileno=os.dup(self._response.raw.fileno())).shutdown(socket.SHUT_RDWR)
        self._response.close()
        self._session.close()


def per_event(url: str, reader: str, n: int, gap_s: float) -> float:
    """This process's CPU µs per watch event taken through ``reader`` (``Watch`` or ``thread``)."""
    from quiesce.fleet.store import Store

    putter = subprocess.Popen(
        [sys.executable, "-c", PUTTER, url, str(n), str(gap_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert putter.stdin is not None and putter.stdout is not None
    store = Store([url])
    try:
        if putter.stdout.readline().strip() != "ready":
            raise RuntimeError("the putting process did not start")
        start = store.get_prefix("/bench/watched")[0] + 1
        watch: Any = (
            store.watch("/bench/", start) if reader == "Watch" else ThreadedWatch(url, "/bench/", start)
        )
        try:
            putter.stdin.write("go\n")
            putter.stdin.flush()
            first = watch.get(10.0)  # the clock starts once the first event is in
            if first is None:
                raise RuntimeError("no watch event arrived")
            cpu = time.process_time()
            for _ in range(n - 1):
                if watch.get(10.0) is None:
                    raise RuntimeError("a watch event did not arrive")
            return (time.process_time() - cpu) / (n - 1) * 1e6
        finally:
            watch.close()
    finally:
        store.close()
        putter.stdin.close()
        putter.wait(30)


def measure_events(url: str, n: int, gap_s: float, rounds: int) -> dict[str, float]:
    """Per reader: the median CPU µs per event, the readers taking turns round by round."""
    samples: dict[str, list[float]] = {"Watch": [], "thread": []}
    for _ in range(rounds):
        for reader, got in samples.items():
            got.append(per_event(url, reader, n, gap_s))
    return {reader: statistics.median(got) for reader, got in samples.items()}


def grpc_write_cost(url: str) -> tuple[int, float] | str:
    """etcd's own CPU per write without the gateway: ``etcdctl check perf`` (gRPC, 60 s) against it.

    Returns (writes, etcd CPU µs per write), or why it was not measured.
    """
    from quiesce.fleet.store import Store

    if shutil.which("etcdctl") is None:
        return "etcdctl is not installed (Debian: etcd-client)"
    with Store([url]) as store:
        before_rev, _ = store.get_prefix("/bench/none/")
        before_cpu = etcd_cpu_s()
        done = subprocess.run(
            ["etcdctl", "--endpoints", url, "check", "perf", "--load", "s"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        after_cpu = etcd_cpu_s()
        after_rev, _ = store.get_prefix("/bench/none/")
    if before_cpu is None or after_cpu is None:
        return "needs the throwaway etcd (its CPU time is read from /proc)"
    writes = after_rev - before_rev - 1  # check perf deletes its keys at the end: one revision
    if done.returncode not in (0, 1) or writes <= 0:  # 1: a check that did not pass still wrote
        return f"etcdctl check perf exited {done.returncode}: {done.stderr.strip()[-200:]}"
    return writes, (after_cpu - before_cpu) / writes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per round (default 300)")
    parser.add_argument("--etcd", help="an etcd to use (default: start a throwaway one)")
    parser.add_argument("--events", type=int, default=200, help="watch events a round (default 200)")
    parser.add_argument("--event-gap-ms", type=float, default=3.0, help="between two events (default 3)")
    parser.add_argument("--event-rounds", type=int, default=5, help="rounds per reader (default 5)")
    parser.add_argument(
        "--grpc",
        action="store_true",
        help="also etcd's CPU per write through gRPC, without the gateway (etcdctl check perf, 60 s)",
    )
    args = parser.parse_args()
    if args.events < 2 or args.event_rounds < 1 or args.event_gap_ms < 0:
        parser.error("--events must be >= 2, --event-rounds >= 1, --event-gap-ms >= 0")
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
        events = measure_events(url, args.events, args.event_gap_ms / 1000, args.event_rounds)
        grpc = grpc_write_cost(url) if args.grpc else None
    print(f"load average {os.getloadavg()[0]:.2f}; {args.requests} requests a round, median of 5 rounds")
    print(f"{'session':<38} {'request':<22} {'CPU µs':>8} {'wall µs':>8} {'etcd CPU µs':>12}")
    for name, kinds in results.items():
        for kind, (cpu, wall, server) in kinds.items():
            print(f"{name:<38} {kind:<22} {cpu:8.0f} {wall:8.0f} {server:12.0f}")
    print()
    print(
        f"watch events: {args.events} a round, one every {args.event_gap_ms:g} ms, "
        f"median of {args.event_rounds} rounds per reader, in turns"
    )
    print(f"{'reader':<38} {'CPU µs per event':>17}")
    print(f"{'Watch (the caller reads the stream)':<38} {events['Watch']:17.0f}")
    print(f"{'a reader thread and a queue.Queue':<38} {events['thread']:17.0f}")
    print(f"{'ratio':<38} {events['Watch'] / events['thread']:17.2f}")
    if isinstance(grpc, str):
        print(f"\netcd's CPU per write through gRPC: not measured: {grpc}")
    elif grpc is not None:
        writes, per_write = grpc
        what = f"etcd's CPU per write through gRPC (etcdctl check perf, {writes} writes)"
        print(f"\n{what}: {per_write:.0f} µs")


if __name__ == "__main__":
    main()
