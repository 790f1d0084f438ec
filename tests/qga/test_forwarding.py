"""Forwarding: the commands quiesce does not serve give, through it, what qemu-ga gives directly.

Two stock qemu-ga instances of the same binary on this machine: one asked
directly, one behind ``quiesce qga --forward``. Both block shutdown and
suspend (and the fsfreeze commands), so nothing here can stop the machine.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from tests.qga.agents import QEMU_GA, Client, mkdir, qemu_ga, quiesce_qga
from tests.qga.test_parity import FORWARD_BLOCK

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.access(QEMU_GA, os.X_OK), reason="qemu-guest-agent is not installed"),
]


def without_counters(interfaces: dict) -> dict:
    """guest-network-get-interfaces minus the traffic counters, which move between two calls."""
    out = []
    for iface in interfaces["return"]:
        iface = dict(iface)
        iface.pop("statistics", None)
        out.append(iface)
    return {"return": out}


def exec_output(c: Client, path: str, *args: str) -> dict:
    """guest-exec with captured output, then guest-exec-status until it exited."""
    started = c.cmd("guest-exec", path=path, arg=list(args), **{"capture-output": True})
    assert set(started) == {"return"} and set(started["return"]) == {"pid"}
    for _ in range(200):
        status = c.cmd("guest-exec-status", pid=started["return"]["pid"])
        if status["return"]["exited"]:
            return status["return"]
        time.sleep(0.02)
    raise AssertionError("guest-exec never finished")


def test_forwarded_commands_give_what_qemu_ga_gives(node):
    """guest-get-osinfo, guest-network-get-interfaces and guest-exec agree; ids pass through."""
    work = mkdir(Path(node.base) / "agents")
    with (
        qemu_ga(mkdir(work / "direct"), block=FORWARD_BLOCK) as direct,
        qemu_ga(mkdir(work / "forward"), block=FORWARD_BLOCK) as fwd,
        quiesce_qga(work, node.run_dir, forward=fwd.sock) as q,
        direct.client() as d,
        q.client() as c,
    ):
        assert c.cmd("guest-get-osinfo") == d.cmd("guest-get-osinfo")
        assert without_counters(c.cmd("guest-network-get-interfaces")) == without_counters(
            d.cmd("guest-network-get-interfaces")
        )
        ours, theirs = (
            exec_output(c, "/bin/echo", "hello", "qga"),
            exec_output(d, "/bin/echo", "hello", "qga"),
        )
        assert ours == theirs and base64.b64decode(ours["out-data"]) == b"hello qga\n"
        assert ours["exitcode"] == 0
        failed = exec_output(c, "/bin/sh", "-c", "echo oops >&2; exit 3")
        assert failed["exitcode"] == 3 and base64.b64decode(failed["err-data"]) == b"oops\n"
        # An error from the agent, and the request's id, come back unchanged.
        c.send('{"execute":"guest-exec","arguments":{"path":"/nonexistent/x"},"id":"e1"}\n')
        d.send('{"execute":"guest-exec","arguments":{"path":"/nonexistent/x"},"id":"e1"}\n')
        assert c.line() == d.line()
        # Two id members in one of qemu's buckets: their order in the reply is the order sent.
        for raw in ('{"execute":"guest-get-osinfo","id":{"k10":1,"k11":[{"k11":2,"k10":3}]}}\n',):
            c.send(raw)
            d.send(raw)
            assert c.line() == d.line()


def test_silent_commands_errors_still_come_back(node):
    """guest-shutdown sends nothing on success; its error (blocked here) still reaches the host, in order."""
    work = mkdir(Path(node.base) / "agents")
    with (
        qemu_ga(mkdir(work / "direct"), block=FORWARD_BLOCK) as direct,
        qemu_ga(mkdir(work / "forward"), block=FORWARD_BLOCK) as fwd,
        quiesce_qga(work, node.run_dir, forward=fwd.sock) as q,
        direct.client() as d,
        q.client() as c,
    ):
        for agent in (c, d):
            agent.send('{"execute":"guest-shutdown","arguments":{"mode":"powerdown"}}\n')
            agent.send('{"execute":"guest-ping","id":2}\n')
        assert [c.line(), c.line()] == [d.line(), d.line()]


def test_forwarded_agent_restarted_or_missing(node):
    """A restarted agent is reconnected to; a missing one is a GenericError, and the agent goes on."""
    work = mkdir(Path(node.base) / "agents")
    fwd_dir = mkdir(work / "forward")
    fwd = qemu_ga(fwd_dir, block=FORWARD_BLOCK)
    with quiesce_qga(work, node.run_dir, forward=fwd.sock) as q, q.client() as c:
        try:
            assert c.cmd("guest-ping") == {"return": {}}
            osinfo = c.cmd("guest-get-osinfo")
            assert "return" in osinfo
            fwd.stop()
            missing = c.cmd("guest-get-osinfo")
            assert missing["error"]["class"] == "GenericError"
            assert "cannot be reached" in missing["error"]["desc"]
            assert c.cmd("guest-sync", id=9) == {"return": 9}
            fwd = qemu_ga(fwd_dir, block=FORWARD_BLOCK)
            with fwd.client():
                pass  # listening now
            assert c.cmd("guest-get-osinfo") == osinfo
        finally:
            fwd.stop()


def test_restarted_agent_gets_the_command_once(node):
    """The connection to a restarted agent is stale: the command is sent again on a new one, once."""
    work = mkdir(Path(node.base) / "agents")
    fwd_dir = mkdir(work / "forward")
    marker = Path(node.base) / "ran"
    fwd = qemu_ga(fwd_dir, block=FORWARD_BLOCK)
    with quiesce_qga(work, node.run_dir, forward=fwd.sock) as q, q.client() as c:
        try:
            assert "return" in c.cmd("guest-get-osinfo")
            fwd.stop()
            fwd = qemu_ga(fwd_dir, block=FORWARD_BLOCK)
            with fwd.client():
                pass
            done = exec_output(c, "/bin/sh", "-c", f"echo x >> {marker}")
            assert done["exitcode"] == 0 and marker.read_text() == "x\n"
        finally:
            fwd.stop()
