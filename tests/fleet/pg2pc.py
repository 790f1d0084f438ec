"""Three PostgreSQL shards on three lab nodes, cross-shard transfers with two-phase commit.

A transfer of x from shard a to shard b: on a, ``UPDATE`` the balance by -x,
record it in ``xfer`` and ``PREPARE TRANSACTION``; the same on b with +x;
then the decision is logged on shard 1 (``decisions``, autocommit); then
``COMMIT PREPARED`` on both (or, for about one in ten, the decision is
abort and both are rolled back). After restoring every node's snapshot, each
in-doubt prepared transaction is resolved from shard 1's decision log: the
total must be conserved and no transfer may be applied on one side only.

``python -m tests.fleet.pg2pc HOST...`` is the load (run in the lab's client
namespace); it prints the number of transfers decided when stopped by SIGTERM.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INITIAL = 1_000_000
SCHEMA = (
    "CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL);"
    f"INSERT INTO acct VALUES (1, {INITIAL});"
    "CREATE TABLE xfer (gid text PRIMARY KEY, amount bigint NOT NULL);"
    "CREATE TABLE decisions (gid text PRIMARY KEY, outcome text NOT NULL);"
)
OPTIONS = "-c max_prepared_transactions=50 -c shared_buffers=32MB -c fsync=on -c max_wal_size=64MB"


def _run(argv: list[str], timeout: float = 120) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def start_shard(lab, node) -> None:
    """initdb on the node's filesystem and start the server in the node's namespaces."""
    ns = lab.node_argv(node)
    data = node.mount_point / "pg"
    sock = node.home / "pgrun"
    sock.mkdir(mode=0o755)
    subprocess.run(["chown", "postgres:postgres", str(sock)], check=True)
    _run([*ns, "sh", "-c", f"mkdir {data} && chown postgres:postgres {data}"])
    _run(
        [
            *ns,
            *_as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--locale=C",
                "-E",
                "UTF8",
            ),
        ]
    )
    # The data directory is visible only in the node's mount namespace: edit pg_hba.conf there.
    _run([*ns, "sh", "-c", f"echo 'host all all 10.213.0.0/16 trust' >> {data}/pg_hba.conf"])
    opts = f"{OPTIONS} -c listen_addresses={node.address} -c unix_socket_directories={sock}"
    _run(
        [
            *ns,
            *_as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(sock / "log"), "-w", "-o", opts, "start"
            ),
        ]
    )
    _run(
        [
            *ns,
            *_as_postgres(
                "psql", "-X", "-q", "-h", str(sock), "-d", "postgres", "-c", "CREATE DATABASE bank"
            ),
        ]
    )
    _run([*ns, *_as_postgres("psql", "-X", "-q", "-h", str(sock), "-d", "bank", "-c", SCHEMA)])


def stop_shard(lab, node) -> None:
    """pg_ctl stop in the node's namespaces (fast; thawed first by the lab if needed)."""
    node.thaw_if_frozen()
    subprocess.run(
        [
            *lab.node_argv(node),
            *_as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(node.mount_point / "pg"), "-m", "immediate", "-w", "stop"
            ),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


class _Session:
    """One persistent psql to a shard; ``sql`` returns its output lines."""

    def __init__(self, host: str) -> None:
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-At", "-h", host, "-U", "postgres", "-d", "bank"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def sql(self, text: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{text}\n\\echo __done__\n")
        self.proc.stdin.flush()
        out = []
        for line in self.proc.stdout:
            if line.strip() == "__done__":
                break
            out.append(line.strip())
        if any(line.startswith(("ERROR", "FATAL")) for line in out):
            raise RuntimeError("; ".join(out))
        return out

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def drive(hosts: list[str], stop: threading.Event) -> int:
    """Transfers until ``stop``; returns how many were decided."""
    sessions = [_Session(h) for h in hosts]
    rng = random.Random()
    n = 0
    try:
        while not stop.is_set():
            a, b = rng.sample(range(len(sessions)), 2)
            x = rng.randint(1, 100)
            gid = f"t{n}-{rng.getrandbits(32):08x}"
            for side, amount in ((a, -x), (b, x)):
                sessions[side].sql(
                    f"BEGIN; UPDATE acct SET bal = bal + ({amount}) WHERE id = 1; "
                    f"INSERT INTO xfer VALUES ('{gid}', {amount}); PREPARE TRANSACTION '{gid}';"
                )
            outcome = "abort" if rng.random() < 0.1 else "commit"
            sessions[0].sql(f"INSERT INTO decisions VALUES ('{gid}', '{outcome}');")
            verb = "COMMIT PREPARED" if outcome == "commit" else "ROLLBACK PREPARED"
            for side in (a, b):
                sessions[side].sql(f"{verb} '{gid}';")
            n += 1
    finally:
        for s in sessions:
            s.close()
    return n


def check_restored(images: list[Path], fstype: str) -> dict[str, object]:
    """Restore every shard's snapshot, resolve in-doubt transactions from shard 1's log, check."""
    servers: list[_Restored] = []
    try:
        for image in images:
            servers.append(_Restored(image, fstype))
        decisions = dict(
            line.split("|") for line in servers[0].sql("SELECT gid, outcome FROM decisions") if line
        )
        in_doubt = 0
        for srv in servers:
            for gid in [g for g in srv.sql("SELECT gid FROM pg_prepared_xacts WHERE database = 'bank'") if g]:
                in_doubt += 1
                verb = "COMMIT PREPARED" if decisions.get(gid) == "commit" else "ROLLBACK PREPARED"
                srv.sql(f"{verb} '{gid}'")
        sides: dict[str, list[int]] = {}
        total = 0
        problems = []
        for k, srv in enumerate(servers):
            bal = int(srv.sql("SELECT bal FROM acct WHERE id = 1")[0])
            rows = [line.split("|") for line in srv.sql("SELECT gid, amount FROM xfer") if line]
            if bal != INITIAL + sum(int(a) for _, a in rows):
                problems.append(f"shard {k + 1}: balance {bal} does not match its transfers")
            for gid, amount in rows:
                sides.setdefault(gid, []).append(int(amount))
            total += bal
        half = sorted(g for g, amounts in sides.items() if len(amounts) != 2 or sum(amounts) != 0)
        if total != INITIAL * len(servers):
            problems.append(f"total {total} != {INITIAL * len(servers)}")
        if half:
            problems.append(f"half-applied transfers: {half[:5]}")
        return {
            "problems": problems,
            "in_doubt": in_doubt,
            "applied": len(sides),
            "decisions": len(decisions),
        }
    finally:
        for srv in servers:
            srv.close()


class _Restored:
    """A snapshot image mounted (journal replayed) and its PostgreSQL started on a private socket."""

    def __init__(self, image: Path, fstype: str) -> None:
        self.mnt = Path(str(image) + ".mnt")
        self.mnt.mkdir()
        self.sock = Path(tempfile.mkdtemp(dir="/run", prefix="qf-pg-"))
        subprocess.run(["chown", "postgres:postgres", str(self.sock)], check=True)
        self.data = self.mnt / "pg"
        _run(["mount", "-o", "loop", "-t", fstype, str(image), str(self.mnt)])
        try:
            (self.data / "postmaster.pid").unlink(missing_ok=True)  # the live server's, from the snapshot
            opts = f"{OPTIONS} -c listen_addresses='' -c unix_socket_directories={self.sock}"
            _run(
                _as_postgres(
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.sock / "log"),
                    "-w",
                    "-o",
                    opts,
                    "start",
                )
            )
        except BaseException:
            self.close()
            raise

    def sql(self, query: str) -> list[str]:
        return _run(
            _as_postgres(
                "psql",
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.sock),
                "-d",
                "bank",
                "-c",
                query,
            )
        ).splitlines()

    def close(self) -> None:
        subprocess.run(
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        subprocess.run(["umount", str(self.mnt)], capture_output=True, check=False)
        self.mnt.rmdir()
        subprocess.run(["rm", "-rf", str(self.sock)], check=False)


def main() -> int:
    """The load, until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("driving", flush=True)
    n = drive(sys.argv[1:], stop)
    print(n, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
