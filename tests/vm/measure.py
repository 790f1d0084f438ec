"""Engine against engine, in the libvirt-booted guest: the bare agents on a second port.

The domain has a second virtio-serial port, ``org.quiesce.measure.0``, whose
host socket nobody but this script uses (libvirt holds the agent port). On it
the guest runs, one after the other, ``quiesce qga --no-config
--no-fsfreeze-hook`` and ``qemu-ga`` with no hook: neither runs a script, so
the writer's longest stall compares the two freezes alone (on a 1-vCPU guest
the node's scripts around quiesce's window also take CPU from the writer).
The writer is started and read through libvirt's own agent connection.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from tests.qga.agents import Client
from tests.vm.guest import WRITER, sync_delimited

PORT = "/dev/virtio-ports/org.quiesce.measure.0"
AGENTS = {
    "quiesce-bare": [
        "/usr/local/bin/quiesce", "qga", "--device", PORT, "--no-config", "--no-fsfreeze-hook",
        "--run-dir", "/run/quiesce-measure",
    ],
    "qemu-ga-bare": [
        "/usr/sbin/qemu-ga", "-m", "virtio-serial", "-p", PORT, "-t", "/run", "-f", "/run/measure-ga.pid",
    ],
}  # fmt: skip


def resync(c: Client, timeout: float = 120) -> None:
    """0xFF + guest-sync-delimited until the agent on the port answers."""
    deadline = time.monotonic() + timeout
    ident = 7000
    while time.monotonic() < deadline:
        ident += 1
        if sync_delimited(c, ident, settle_s=0.2):
            return
    raise TimeoutError("no agent on the measure port")


def bare_cycles(lv: Any, dom: str, work: Path, n: int = 5, quiet_s: float = 3.0) -> dict[str, Any]:
    """For each bare agent: start it in the guest, N cold cycles through the measure port, stop it."""
    from tests.vm.libvirt_run import guest_exec, guest_exec_start, guest_exec_wait

    out: dict[str, Any] = {}
    sock = str(work / "libvirt" / "measure.sock")
    for name, argv in AGENTS.items():
        guest_exec(lv, dom, "/usr/bin/systemd-run", "--unit=measure-agent", *argv)
        rows = []
        with Client(sock, whole_freeze_ok=True, timeout=60) as c:
            resync(c)
            for _ in range(n):
                pid = guest_exec_start(lv, dom, "/usr/bin/python3", "-c", WRITER, str(quiet_s + 4))
                time.sleep(quiet_s)
                start = time.perf_counter()
                frozen = c.cmd("guest-fsfreeze-freeze")
                mid = time.perf_counter()
                thawed = c.cmd("guest-fsfreeze-thaw")
                end = time.perf_counter()
                res = json.loads(guest_exec_wait(lv, dom, pid))
                row = {
                    "freeze": frozen,
                    "thaw": thawed,
                    "freeze_rtt_ms": (mid - start) * 1e3,
                    "thaw_rtt_ms": (end - mid) * 1e3,
                    **res,
                }
                print(f"  {name}: {row}", flush=True)
                rows.append(row)
        guest_exec(lv, dom, "/usr/bin/systemctl", "stop", "measure-agent")
        out[name] = {
            "cycles": rows,
            "median_max_ms": statistics.median(r["max_ms"] for r in rows),
            "median_freeze_rtt_ms": statistics.median(r["freeze_rtt_ms"] for r in rows),
            "median_thaw_rtt_ms": statistics.median(r["thaw_rtt_ms"] for r in rows),
        }
    out["stall_ratio"] = out["quiesce-bare"]["median_max_ms"] / out["qemu-ga-bare"]["median_max_ms"]
    return out
