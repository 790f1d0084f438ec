"""A fleet on one machine: etcd, and N nodes each in its own network and mount namespace.

Used by ``quiesce fleet demo``, the tests and the benchmarks. Everything is
named with a per-lab prefix (``qf`` + 6 hex digits) and lives only in
namespaces the lab creates:

- a hub network namespace with a bridge (10.213.K.1/24, K random) where etcd
  listens, on that address and its own loopback;
- per node, a network namespace joined to the bridge by a veth pair
  (10.213.K.10+i), a loop filesystem whose image lies on the lab's host xfs
  (so a snapshot is a reflink copy), mounted only in the node's own mount
  namespace (``nodehost``), and the node's agent in both namespaces;
- a client namespace (10.213.K.2) for the coordinator and the writer.

The caller must already be in a private mount namespace (the tests are; the
demo enters one). :meth:`Lab.close` thaws, stops every process, detaches the
loop devices and deletes the namespaces, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.fleet import FleetError
from quiesce.fleet.labnode import (
    Node,
    detach_if_ours,
    kill_namespace_leftovers,
    ns_argv,
    set_config,
    stop_process,
    write_config,
)
from quiesce.fleet.network import Network
from quiesce.sandbox import Sandbox

ETCD_PORT = 2379
GROUP = "lab"


@dataclass
class Lab:
    """See the module doc. Use as a context manager."""

    agents: int
    deadline_s: float = 5.0
    fstype: str = "ext4"
    size_mb: int = 32
    pre_extra: str = ""
    snap_extra: str = ""
    snapshot_command: bool = True
    writer: bool = True
    #: TLS: a directory with ca.pem, server.pem/server-key.pem, client.pem/client-key.pem.
    tls_dir: Path | None = None
    #: Called once etcd answers, before the agents start (users, roles, auth enable).
    setup_etcd: Any = None
    #: The etcd user and password the agents and the coordinator use (with auth enabled).
    credentials: tuple[str, str] | None = None
    prefix: str = field(default_factory=lambda: "qf" + secrets.token_hex(3))
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.net = Network(self.prefix)
        self.hub = self.net.hub
        self.client_ns = ""
        self.root = Path("/run") / self.prefix
        self.etcd: subprocess.Popen[str] | None = None
        self.sandbox: Sandbox | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._store: Any = None

    # -- addresses ---------------------------------------------------------------

    def address(self, host: int) -> str:
        """10.213.K.host: inside the lab's own namespaces only."""
        return self.net.address(host)

    @property
    def etcd_url(self) -> str:
        """etcd's client URL, on the hub's bridge."""
        scheme = "https" if self.tls_dir else "http"
        return f"{scheme}://{self.address(1)}:{ETCD_PORT}"

    def security_args(self) -> list[str]:
        """The TLS and user options of ``quiesce agent`` and ``quiesce fleet``."""
        out: list[str] = []
        if self.tls_dir is not None:
            d = self.tls_dir
            out += [
                "--cacert",
                str(d / "ca.pem"),
                "--cert",
                str(d / "client.pem"),
                "--key",
                str(d / "client-key.pem"),
            ]
        if self.credentials is not None:
            secret = self.root / "etcd-password"
            secret.write_text(self.credentials[1])
            secret.chmod(0o600)
            out += ["--user", self.credentials[0], "--password-file", str(secret)]
        return out

    def security(self) -> Any:
        """The same, as a Store's Security."""
        from quiesce.fleet.store import Security

        d = self.tls_dir
        user, password = self.credentials or (None, None)
        if d is None:
            return Security(user=user, password=password)
        return Security(str(d / "ca.pem"), str(d / "client.pem"), str(d / "client-key.pem"), user, password)

    # -- building ------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the network, the host xfs, the nodes, etcd and the agents."""
        self.root.mkdir(mode=0o755)  # writable by root only; others may traverse (database users)
        self.sandbox = Sandbox()
        self.sandbox.base.chmod(0o755)  # database users must reach their data in restored snapshots
        host = self.sandbox.add("xfs", max(300, self.agents * self.size_mb * 3), name="host")
        (host.mount_point / "snaps").mkdir()
        self.net.build_hub()
        self.client_ns = self.net.join("c", 2)
        self.start_etcd()
        if self.setup_etcd is not None:
            self.setup_etcd(self)
        for i in range(1, self.agents + 1):
            self._make_node(i, host.mount_point)
        for node in self.nodes:
            self.start_agent(node)
        self.wait_registered()

    def set_link(self, node: Node, up: bool) -> None:
        """Cut a node off the network (its veth down at the bridge), or join it again."""
        self.net.set_link(str(node.index), up)

    def start_etcd(self) -> None:
        """Start (or restart, on the same data) etcd in the hub namespace; wait until it answers."""
        data = self.root / "etcd"
        peer = "http://127.0.0.1:2380"
        argv = [
            *ns_argv(self.hub),
            "etcd",
            "--name=lab",
            f"--data-dir={data}",
            f"--listen-client-urls={self.etcd_url},http://127.0.0.1:{ETCD_PORT}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=lab={peer}",
            "--log-level=error",
        ]
        if self.tls_dir is not None:
            d = self.tls_dir
            argv[-1:-1] = [
                f"--cert-file={d / 'server.pem'}",
                f"--key-file={d / 'server-key.pem'}",
                f"--trusted-ca-file={d / 'ca.pem'}",
                "--client-cert-auth",
            ]
            argv = [
                a.replace(f"http://127.0.0.1:{ETCD_PORT}", f"https://127.0.0.1:{ETCD_PORT}") for a in argv
            ]
        log = open(self.root / "etcd.log", "a")  # noqa: SIM115 - handed to the child
        with log:
            self.etcd = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, text=True)
        self.client_call(lambda store: store.get_prefix("/quiesce/"), wait_s=15.0)

    def _make_node(self, i: int, host_dir: Path) -> Node:
        name = f"n{i}"
        image = host_dir / f"{name}.img"
        with open(image, "wb") as f:
            f.truncate(self.size_mb * 1024 * 1024)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
        ).stdout.strip()
        netns = self.net.join(str(i), 10 + i)
        node = Node(i, name, netns, self.address(10 + i), image, device, self.root / name)
        self.nodes.append(node)  # from here on, close() detaches its loop device
        subprocess.run(
            ["mkfs." + self.fstype, "-q", *(["-F"] if self.fstype.startswith("ext") else ["-f"]), device],
            check=True,
            capture_output=True,
        )
        node.home.mkdir(mode=0o755)
        for d in (node.mount_point, node.run_dir, node.home / "hooks.d"):
            d.mkdir(mode=0o700)
        self._write_config(node, host_dir)
        argv = [
            *ns_argv(node.netns),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-P",  # never import from the current directory (as root)
            "-m",
            "quiesce.fleet.nodehost",
            device,
            self.fstype,
            str(node.mount_point),
        ]
        if not self.writer:
            argv.append("--no-writer")
        node.host = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert node.host.stdout is not None
        if node.host.stdout.readline().strip() != "ready":
            raise FleetError(f"node {name}: its host did not start")
        # Only now is the host in its own mount namespace. Held open until teardown, so the
        # namespace (and its inode number) cannot be reused by anyone else meanwhile.
        node.mount_ns_fd = os.open(f"/proc/{node.host.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        # Mounted now: detaching marks the loop device to go with its last user, so even a
        # lab that is killed leaves no attached device behind.
        detach_if_ours(device, image)
        return node

    def _write_config(self, node: Node, host_dir: Path) -> None:
        write_config(node, host_dir, self.deadline_s, self.pre_extra, self.snap_extra, self.snapshot_command)

    def set_config(self, node: Node, keys: dict[str, Any], pre_extra: str | None = None) -> None:
        """Change keys of a node's config (``quiesce`` merged), and the extra lines of its pre-script."""
        set_config(node, keys, pre_extra)

    def start_agent(self, node: Node, name: str | None = None) -> None:
        """Start (or restart) a node's agent in its network and mount namespaces.

        ``name``: the node name the agent registers (the node's own by default; another
        node's makes a second agent claiming that name, as a cloned machine would).
        """
        assert node.host is not None
        argv = [
            *ns_argv(node.netns, node.host.pid),
            sys.executable,
            "-P",  # never import from the current directory (as root)
            "-m",
            "quiesce",
            "agent",
            "--etcd",
            self.etcd_url,
            "--group",
            GROUP,
            "--name",
            name or node.name,
            "--config",
            str(node.config),
            "--run-dir",
            str(node.run_dir),
            "--no-pluginhost",
            "--no-vmbackup-conf",
            "--ttl",
            "2",
            *self.security_args(),
        ]
        log = open(node.home / "agent.log", "a")  # noqa: SIM115 - handed to the child
        with log:
            node.agent = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, text=True)

    def wait_registered(self, timeout_s: float = 30.0) -> None:
        """Until every node whose agent runs is registered."""
        want = {n.name for n in self.nodes if n.agent is not None and n.agent.poll() is None}
        deadline = time.monotonic() + timeout_s
        while True:
            _, members = self.client_call(lambda s: s.get_prefix(f"/quiesce/{GROUP}/members/"))
            have = {k.rsplit("/", 1)[1] for k in members}
            if want <= have:
                return
            if time.monotonic() > deadline:
                missing = [n for n in self.nodes if n.name in want - have]
                raise FleetError(f"agents not registered: {'; '.join(n.agent_state() for n in missing)}")
            time.sleep(0.1)

    # -- using it ----------------------------------------------------------------

    def node_argv(self, node: Node) -> list[str]:
        """Prefix for a command in a node's network and mount namespaces."""
        assert node.host is not None
        return ns_argv(node.netns, node.host.pid)

    def client_argv(self) -> list[str]:
        """Prefix for a command in the client namespace."""
        return ns_argv(self.client_ns)

    def fleet_argv(self, *args: str) -> list[str]:
        """``quiesce fleet run`` in the client namespace, against the lab's etcd and group."""
        return [
            *self.client_argv(),
            sys.executable,
            "-P",  # never import from the current directory (as root)
            "-m",
            "quiesce",
            "fleet",
            "run",
            "--etcd",
            self.etcd_url,
            "--group",
            GROUP,
            "--json",
            *self.security_args(),
            *args,
        ]

    def fleet_run(self, *args: str, timeout_s: float = 120.0) -> tuple[int, dict[str, Any]]:
        """Run one fleet run to its end: (exit code, its JSON)."""
        done = subprocess.run(self.fleet_argv(*args), capture_output=True, text=True, timeout=timeout_s)
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError:
            return done.returncode, {"error": done.stderr.strip()}

    def client_call(self, fn: Any, wait_s: float = 0.0) -> Any:
        """Call ``fn(store)`` with a Store whose connections live in the client namespace."""
        from quiesce.fleet.store import Store

        if self._pool is None:
            from pyroute2 import netns

            self._pool = ThreadPoolExecutor(1, initializer=netns.setns, initargs=(self.client_ns, 0))

        def call() -> Any:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    if self._store is None:
                        self._store = Store([self.etcd_url], self.security())
                    return fn(self._store)
                except FleetError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)

        return self._pool.submit(call).result()

    def writer_argv(self) -> list[str]:
        """The distributed writer, in the client namespace, across every node."""
        return [
            *self.client_argv(),
            sys.executable,
            "-P",  # never import from the current directory (as root)
            "-m",
            "quiesce.fleet.writer",
            *(f"{n.address}:7000" for n in self.nodes),
        ]

    def snapshots(self, run_id: str) -> list[Path]:
        """The nodes' snapshot images of one run, in node order."""
        assert self.sandbox is not None
        snaps = self.sandbox.filesystems[0].mount_point / "snaps"
        return [snaps / f"{run_id}-{n.name}.img" for n in self.nodes]

    def restore(self, image: Path, read: str) -> bytes:
        """Mount a snapshot copy (journal replayed as on any restore) and read one file from it."""
        where = Path(str(image) + ".mnt")
        where.mkdir()
        try:
            subprocess.run(
                ["mount", "-o", "loop", "-t", self.fstype, str(image), str(where)],
                check=True,
                capture_output=True,
            )
            try:
                return (where / read).read_bytes() if (where / read).exists() else b""
            finally:
                subprocess.run(["umount", str(where)], check=True)
        finally:
            where.rmdir()

    # -- teardown --------------------------------------------------------------------

    def close(self) -> None:
        """Thaw, stop everything, detach, delete the namespaces and directories."""
        for node in self.nodes:
            with contextlib.suppress(OSError):
                node.thaw_if_frozen()
        for node in self.nodes:
            stop_process(node.agent)
        for node in self.nodes:
            with contextlib.suppress(OSError):
                node.thaw_if_frozen()
            if node.host is not None and node.host.poll() is None:
                with contextlib.suppress(OSError):
                    assert node.host.stdin is not None
                    node.host.stdin.close()
            stop_process(node.host)
            if node.host is not None and node.host.stdout is not None:
                node.host.stdout.close()
            kill_namespace_leftovers(node)
            detach_if_ours(node.device, node.image)
        stop_process(self.etcd)
        if self._pool is not None:
            if self._store is not None:
                self._pool.submit(self._store.close).result()
            self._pool.shutdown()
        self.net.remove()
        if self.sandbox is not None:
            self.sandbox.close()
        shutil.rmtree(self.root, ignore_errors=True)
