"""The load generator: numbered transactions, committed one after another on each connection.

Run as a script (``python loader.py SPEC``, SPEC a JSON object) by the tests in this
directory, never imported by pytest. Each connection is one client process (``psql`` or
``mariadb``) fed one transaction at a time on its stdin; a transaction writes row ``n`` to
table ``a`` and row ``n`` to table ``b`` and answers ``n`` once committed. The answer is
the acknowledgement: its time (``time.time_ns()``, the clock the snapshot step stamps with
``date +%s%N``) goes to the ack file as ``connection n time`` at once, so the test can
read every acknowledgement up to any moment. Connection ``k`` numbers its transactions
``k * STRIDE + 1, + 2, ...``: on one connection each starts after the previous one
committed, so a restored copy must hold a prefix of each connection's numbers.

The loader runs until its stdin closes, then finishes the transaction in flight and exits.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from typing import IO

STRIDE = 1_000_000_000

STATEMENTS = {
    "postgresql": (
        "WITH x AS (INSERT INTO a VALUES ({n}, repeat('a', {pad})))"
        " INSERT INTO b VALUES ({n}, repeat('b', {pad})) RETURNING n;\n"
    ),
    "mariadb": (
        "BEGIN; INSERT INTO a VALUES ({n}, REPEAT('a', {pad}));"
        " INSERT INTO b VALUES ({n}, REPEAT('b', {pad})); COMMIT; SELECT {n};\n"
    ),
}


def connection(
    k: int,
    argv: list[str],
    statement: str,
    pad: int,
    acks: IO[str],
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    """Commit transactions on one client until ``stop``; record each acknowledgement."""
    client = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert client.stdin is not None and client.stdout is not None
    i = 0
    try:
        while not stop.is_set():
            i += 1
            n = k * STRIDE + i
            try:
                client.stdin.write(statement.format(n=n, pad=pad))
                client.stdin.flush()
            except BrokenPipeError:
                pass  # the client is gone: what it said before it went is read below
            answer = client.stdout.readline()
            now = time.time_ns()
            if answer.strip() != str(n):
                rest = answer + client.stdout.read(4000) if answer else ""
                print(
                    f"loader: connection {k}: transaction {n} answered {rest!r}", file=sys.stderr, flush=True
                )
                return
            with lock:
                acks.write(f"{k} {n} {now}\n")
                acks.flush()
    finally:
        with contextlib.suppress(BrokenPipeError):
            client.stdin.close()
        client.wait(timeout=30)
        client.stdout.close()


def main() -> None:
    """Start the connections, run until stdin closes, stop them."""
    spec = json.loads(sys.argv[1])
    statement = STATEMENTS[spec["kind"]]
    stop = threading.Event()
    lock = threading.Lock()
    with open(spec["acks"], "a") as acks:
        threads = [
            threading.Thread(
                target=connection,
                args=(k, spec["argv"], statement, spec["pad"], acks, lock, stop),
                daemon=True,
            )
            for k in range(1, spec["connections"] + 1)
        ]
        for t in threads:
            t.start()
        print("started", flush=True)
        sys.stdin.read()
        stop.set()
        for t in threads:
            t.join(timeout=60)


if __name__ == "__main__":
    main()
