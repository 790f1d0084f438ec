"""Real database servers on loop filesystems, and the load that writes to them.

Everything here runs inside the private mount namespace that ``conftest.py`` enters: a
"host" xfs (its image on /tmp, never frozen) holds the "guest" ext4 image that carries
the database's data directory. quiesce freezes only the guest. Servers are started by
hand as their own users (no systemd here), on unix sockets in temporary directories.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiesce.sandbox import LoopFs, Sandbox

ROOT = Path(__file__).resolve().parents[2]
LOADER = Path(__file__).with_name("loader.py")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
STRIDE = 1_000_000_000
#: Bytes of padding per row: rows fill pages, so a torn copy has pages to tear.
PAD = 300
CONNECTIONS = 2


def missing_servers(kind: str) -> str | None:
    """Why the servers of ``kind`` cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts, server users)"
    tools = {
        "postgresql": [str(PG_BIN / "initdb"), str(PG_BIN / "pg_ctl"), "psql", "runuser"],
        "mariadb": ["mariadb-install-db", "mariadbd", "mariadb", "mariadb-admin"],
    }[kind]
    tools += ["systemd-notify", "losetup", "mkfs.ext4", "mkfs.xfs"]
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"{kind} is not installed ({', '.join(absent)} missing): run tests/db/install.sh"
    user = {"postgresql": "postgres", "mariadb": "mysql"}[kind]
    if subprocess.run(["id", "-u", user], capture_output=True, check=False).returncode != 0:
        return f"no {user} user: run tests/db/install.sh"
    return None


def run(argv: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, raise with its output if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done


def private_dir(prefix: str, owner: str | None = None, under: str | None = None) -> Path:
    """A fresh temporary directory, chowned to ``owner`` (a server's user) if given."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
    if owner is not None:
        shutil.chown(d, owner, owner)
    return d


# -- servers -----------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL 15 server started by hand (initdb, pg_ctl) as the postgres user."""

    kind = "postgresql"
    user = "postgres"
    options = "-c listen_addresses='' -c max_wal_size=256MB -c shared_buffers=64MB -c fsync=on"

    def __init__(self, datadir: Path, rundir: Path, port: int = 5432) -> None:
        self.datadir = datadir
        self.rundir = rundir  # socket and log: never on the frozen filesystem
        self.port = port
        self.log = rundir / "server.log"

    def psql(self, *extra: str) -> list[str]:
        """The client argv, as the postgres user (peer authentication)."""
        return [
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.rundir),
            "-p",
            str(self.port),
            *extra,
        ]

    def sql(self, query: str, db: str = "loadtest", timeout: float = 120) -> str:
        """Run SQL, return its output."""
        return run(self.psql("-d", db, "-c", query), timeout=timeout).stdout

    def init(self) -> None:
        """initdb, start, create the load's database with amcheck."""
        run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "initdb"),
                "-D",
                str(self.datadir),
                "-A",
                "peer",
                "-E",
                "UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ],
            timeout=120,
        )
        self.start()
        self.sql("CREATE DATABASE loadtest", db="postgres")
        self.sql("CREATE EXTENSION amcheck")

    def start(self) -> None:
        """pg_ctl start, waiting until it accepts connections."""
        opts = f"{self.options} -c port={self.port} -c unix_socket_directories={self.rundir}"
        run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "120",
                "-o",
                opts,
                "start",
            ],
            timeout=150,
        )

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop; SIGKILL the postmaster if that fails."""
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        done = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if done.returncode != 0 and pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

    #: What makes the server write out its dirty pages now.
    checkpoint_sql = "CHECKPOINT"

    def sql_argv(self) -> list[str]:
        """The argv that runs one SQL string given as the last argument."""
        return self.psql("-d", "loadtest", "-c")

    def reset_tables(self) -> None:
        """Fresh tables a and b for a new load."""
        self.sql(
            "DROP TABLE IF EXISTS a, b; CREATE TABLE a (n bigint PRIMARY KEY, pad text);"
            " CREATE TABLE b (n bigint PRIMARY KEY, pad text)"
        )

    def loader_argv(self) -> list[str]:
        """The client one load connection runs."""
        return self.psql("-d", "loadtest")


class MariaDB:
    """A MariaDB server started by hand (mariadb-install-db, mariadbd) as the mysql user."""

    kind = "mariadb"
    user = "mysql"
    options = (
        "--innodb-log-file-size=16M",
        "--innodb-buffer-pool-size=64M",
        "--innodb-flush-log-at-trx-commit=1",
    )

    def __init__(self, datadir: Path, rundir: Path) -> None:
        self.datadir = datadir
        self.rundir = rundir
        self.socket = rundir / "mysqld.sock"
        self.log = rundir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, *extra: str) -> list[str]:
        """The client argv, as root (unix_socket authentication)."""
        return ["mariadb", f"--socket={self.socket}", "--batch", "--skip-column-names", *extra]

    def sql(self, query: str, db: str = "loadtest", timeout: float = 120) -> str:
        """Run SQL, return its output."""
        return run([*self.client(db), "-e", query], timeout=timeout).stdout

    def init(self) -> None:
        """mariadb-install-db, start, create the load's database."""
        run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *self.options,
            ],
            timeout=120,
        )
        self.start()
        self.sql("CREATE DATABASE loadtest", db="mysql")

    def start(self, timeout: float = 120) -> None:
        """Start mariadbd in the background and wait until it answers."""
        argv = [
            "mariadbd",
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            "--skip-networking",
            f"--pid-file={self.rundir / 'mysqld.pid'}",
            f"--log-error={self.log}",
            "--user=mysql",
            *self.options,
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited {self.proc.returncode}: {tail(self.log)}")
            ping = subprocess.run(
                ["mariadb-admin", f"--socket={self.socket}", "ping"], capture_output=True, check=False
            )
            if ping.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"mariadbd did not answer within {timeout} s: {tail(self.log)}")

    def stop(self, mode: str = "fast") -> None:
        """mariadb-admin shutdown (``immediate``: SIGKILL); SIGKILL if it does not end."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if mode == "immediate":
                self.proc.kill()
            else:
                subprocess.run(
                    ["mariadb-admin", f"--socket={self.socket}", "shutdown"],
                    capture_output=True,
                    timeout=90,
                    check=False,
                )
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    #: What makes the server write out its dirty pages now (for a second).
    checkpoint_sql = (
        "SET GLOBAL innodb_max_dirty_pages_pct = 0; DO SLEEP(1);"
        " SET GLOBAL innodb_max_dirty_pages_pct = DEFAULT"
    )

    def sql_argv(self) -> list[str]:
        """The argv that runs one SQL string given as the last argument."""
        return [*self.client("loadtest"), "-e"]

    def reset_tables(self) -> None:
        """Fresh tables a and b for a new load."""
        self.sql(
            "DROP TABLE IF EXISTS a, b; CREATE TABLE a (n BIGINT PRIMARY KEY, pad TEXT) ENGINE=InnoDB;"
            " CREATE TABLE b (n BIGINT PRIMARY KEY, pad TEXT) ENGINE=InnoDB"
        )

    def loader_argv(self) -> list[str]:
        """The client one load connection runs."""
        return self.client("--unbuffered", "loadtest")


Server = Postgres | MariaDB


def tail(path: Path, lines: int = 12) -> str:
    """The end of a log file, for messages."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


# -- the world ---------------------------------------------------------------------------


@dataclass
class World:
    """One database on its guest filesystem, stacked on an unfrozen host xfs."""

    sandbox: Sandbox
    host: LoopFs
    guest: LoopFs
    server: Server
    work: Path  # root-only directory under /run: config, scripts, hooks, settings, run dir
    tmp: Path  # scratch on /tmp: acks, backups (labels and WAL), logs

    @property
    def image(self) -> Path:
        """The guest's disk image (on the host filesystem)."""
        return self.guest.image


@contextlib.contextmanager
def world(kind: str) -> Iterator[World]:
    """Build the filesystems, init and start the server; tear all of it down afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"quiesce-db-{kind}-", dir="/run"))
    tmp = private_dir(f"quiesce-db-{kind}-")
    # The server's user must reach its data directory and sockets through these.
    os.chmod(tmp, 0o711)
    server: Server | None = None
    try:
        with Sandbox() as sb:
            os.chmod(sb.base, 0o711)
            host = sb.add("xfs", 8192, name="host")
            guest = sb.add("ext4", 2048, on=host, name=f"{kind}-data")
            user = "postgres" if kind == "postgresql" else "mysql"
            datadir = guest.mount_point / "data"
            datadir.mkdir(mode=0o700)
            shutil.chown(datadir, user, user)
            rundir = private_dir("server-", user, str(tmp))
            server = Postgres(datadir, rundir) if kind == "postgresql" else MariaDB(datadir, rundir)
            try:
                server.init()
                yield World(sb, host, guest, server, work, tmp)
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """One acknowledged transaction."""

    conn: int
    n: int
    t_ns: int


class Load:
    """The load generator process (tests/db/loader.py) and its acknowledgements."""

    #: How long the load may go without one new acknowledgement before it counts as stopped.
    STALL_S = 60.0

    def __init__(self, server: Server, acks: Path) -> None:
        server.reset_tables()
        self.server = server
        self.acks_path = acks
        self.stderr_path = acks.with_name(acks.name + ".stderr")
        spec = {
            "kind": server.kind,
            "argv": server.loader_argv(),
            "connections": CONNECTIONS,
            "pad": PAD,
            "acks": str(acks),
        }
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(LOADER), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        # Whatever fails from here on, the process and its pipes are closed:
        # a Load that never reaches its caller cannot be stopped by it.
        try:
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().strip() != "started":
                raise RuntimeError(f"the load generator did not start: {self.why_stopped()}")
            self.wait_for(50)
        except BaseException:
            self.stop()
            raise

    def acks(self) -> list[Ack]:
        """Every acknowledgement so far, in file order."""
        out = []
        with open(self.acks_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    out.append(Ack(int(parts[0]), int(parts[1]), int(parts[2])))
        return out

    def why_stopped(self) -> str:
        """The loader's exit status and the end of its stderr, for an error message."""
        rc = self.proc.poll()
        status = "still running" if rc is None else f"exit status {rc}"
        return f"{status}; its stderr: {tail(self.stderr_path) or '(empty)'}"

    def wait_for(self, count: int, within: float | None = None) -> None:
        """Wait until ``count`` more transactions are acknowledged.

        It waits on progress, not on a fixed time: a machine under load may
        commit slowly, so only ``STALL_S`` without a single new acknowledgement,
        or the loader's exit, counts as the load having stopped. ``within``
        bounds the whole wait, for a test that asserts the load resumes promptly.
        """
        start = seen = len(self.acks())
        began = last_progress = time.monotonic()
        while seen < start + count:
            now_s = time.monotonic()
            stalled = now_s - last_progress > self.STALL_S
            if self.proc.poll() is not None or stalled or (within is not None and now_s - began > within):
                raise RuntimeError(
                    f"the load stopped after {seen} acknowledgements ({seen - start} of the {count} "
                    f"awaited): {self.why_stopped()}"
                )
            time.sleep(0.02)
            now = len(self.acks())
            if now > seen:
                seen, last_progress = now, time.monotonic()

    def quiet_second(self) -> None:
        """Let the load run a second undisturbed (the baseline the next cycle compares with)."""
        self.wait_for(20)
        time.sleep(1.0)

    def stop(self) -> None:
        """Close its stdin: it finishes the transactions in flight and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def longest_gap_ms(times: list[int], start: int, end: int) -> float:
    """The longest time without an acknowledgement that overlaps [start, end], in ms."""
    ts = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(ts) if b > start and a < end]
    return max(gaps, default=0) / 1e6
