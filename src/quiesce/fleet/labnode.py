"""A lab node: its files (config, scripts, run dir), its processes, and how to reach them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiesce.sandbox import thaw_quietly

PRE = '#!/bin/sh\necho "pre" >> {events}\n{extra}\n'
POST = '#!/bin/sh\necho "post $QUIESCE_SNAPSHOT $QUIESCE_PRE_STATUS" >> {events}\n'
SNAP = '#!/bin/sh\ncp --reflink=always {image} {snaps}/"$QUIESCE_FLEET_RUN"-{node}.img\n{extra}\n'


def ns_argv(netns: str, mount_pid: int | None = None) -> list[str]:
    """Prefix for a command in a network namespace (and a process's mount namespace)."""
    argv = ["nsenter", f"--net=/run/netns/{netns}"]
    if mount_pid is not None:
        argv.append(f"--mount=/proc/{mount_pid}/ns/mnt")
    return [*argv, "--"]


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 5.0) -> None:
    """SIGTERM (after SIGCONT), then SIGKILL after the grace."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Node:
    """One lab node."""

    index: int
    name: str
    netns: str
    address: str
    image: Path
    device: str
    home: Path  # root-only dir under /run: config, scripts, run dir, events log
    host: subprocess.Popen[str] | None = None
    agent: subprocess.Popen[str] | None = None
    #: An fd on the node's own mount namespace (made by its host), held until teardown.
    mount_ns_fd: int | None = None

    @property
    def mount_point(self) -> Path:
        """Where the node's filesystem is mounted (in its own mount namespace only)."""
        return self.home / "data"

    @property
    def run_dir(self) -> Path:
        """The agent's run dir (lock, ledger, guardian log)."""
        return self.home / "run"

    @property
    def config(self) -> Path:
        """The node's Azure config."""
        return self.home / "config.json"

    def events(self) -> list[str]:
        """What the node's pre/post scripts logged."""
        try:
            return (self.home / "events.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def agent_state(self) -> str:
        """The agent for an error: the node's name, whether it still runs, its log's last lines."""
        code = self.agent.poll() if self.agent is not None else None
        try:
            tail = " | ".join((self.home / "agent.log").read_text().splitlines()[-5:])
        except OSError as err:
            tail = f"(no log: {err.strerror})"
        return f"{self.name} ({'running' if code is None else f'exited {code}'}): {tail or '(empty log)'}"

    def thaw_if_frozen(self) -> bool:
        """FITHAW the node's filesystem through its host's mount namespace; True if it was frozen."""
        if self.host is None or self.host.poll() is not None:
            return False
        return thaw_quietly(f"/proc/{self.host.pid}/root{self.mount_point}")


def detach_if_ours(device: str, image: Path) -> bool:
    """``losetup -d`` the device only while it is still backed by our image.

    A device marked to detach with its last user may already be gone, and
    its number taken by someone else's image: that one is left alone.
    """
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            backing = f.read().strip()
    except OSError:
        return False  # not attached any more
    if backing != str(image):
        return False
    subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
    return True


def kill_namespace_leftovers(node: Node) -> list[int]:
    """SIGKILL what still runs in the node's own mount namespace (a database server the test left).

    Only processes in the namespace the lab made for this node; they keep
    its mount (and so its loop device and directory) alive otherwise.
    """
    killed: list[int] = []
    if node.mount_ns_fd is None:
        return killed
    ns = os.fstat(node.mount_ns_fd)
    own = os.stat("/proc/self/ns/mnt")
    if (ns.st_dev, ns.st_ino) == (own.st_dev, own.st_ino):
        os.close(node.mount_ns_fd)
        node.mount_ns_fd = None
        raise RuntimeError(f"node {node.name}: its mount namespace is the lab's own; not killing it")
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/mnt")
                if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
                    os.kill(int(entry), signal.SIGKILL)
                    killed.append(int(entry))
            except OSError:
                continue  # gone meanwhile
    finally:
        os.close(node.mount_ns_fd)
        node.mount_ns_fd = None
    return killed


def write_config(
    node: Node, host_dir: Path, deadline_s: float, pre_extra: str, snap_extra: str, snapshot_command: bool
) -> None:
    """A node's Azure config and its pre, post and snapshot scripts, under its home."""

    def script(name: str, body: str) -> str:
        path = node.home / name
        path.write_text(body)
        path.chmod(0o700)
        return str(path)

    events = node.home / "events.log"
    snapshot: dict[str, Any] = {"mode": "none"}
    if snapshot_command:
        snap = script(
            "snap.sh",
            SNAP.format(image=node.image, snaps=host_dir / "snaps", node=node.name, extra=snap_extra),
        )
        snapshot = {
            "mode": "command",
            "argv": ["/bin/sh", snap],
            "timeoutSeconds": max(1.0, deadline_s - 1),
        }
    config = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": script("pre.sh", PRE.format(events=events, extra=pre_extra)),
        "postScriptLocation": script("post.sh", POST.format(events=events)),
        "preScriptParams": [],
        "postScriptParams": [],
        "timeoutInSeconds": 30,
        "continueBackupOnFailure": True,
        "fsFreezeEnabled": True,
        "quiesce": {
            "targets": [str(node.mount_point)],
            "freezeTimeoutSeconds": deadline_s,
            "hookDirectory": str(node.home / "hooks.d"),
            "snapshot": snapshot,
        },
    }
    node.config.write_text(json.dumps(config, indent=1))
    node.config.chmod(0o600)


def set_config(node: Node, keys: dict[str, Any], pre_extra: str | None = None) -> None:
    """Change keys of a node's config (``quiesce`` merged), and the extra lines of its pre-script."""
    config = json.loads(node.config.read_text())
    ext = {**config["quiesce"], **keys.pop("quiesce", {})}
    config.update(keys)
    config["quiesce"] = ext
    node.config.write_text(json.dumps(config, indent=1))
    if pre_extra is not None:
        (node.home / "pre.sh").write_text(PRE.format(events=node.home / "events.log", extra=pre_extra))
