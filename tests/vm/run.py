"""The real-guest run: boot the guest built by build.py and drive its agent port from the host.

One boot (TCG) does all of it, with the host talking to the port the way
libvirt does:

1. the agent answers (``guest-sync-delimited``), ``guest-info`` lists
   quiesce's commands merged into qemu-ga's, a forwarded command works;
2. freeze, status, a refused command, thaw over the port; the guest's
   pre/post scripts and qemu-ga's fsfreeze-hook.d script ran around it;
3. the cold window seen by a writer in the guest (``write`` + ``fdatasync``
   on /data): N cycles, each after a quiet spell, freeze then thaw at once;
   then N more with ``"expediteRcu": true`` set in the guest's config;
4. the deadline: no thaw for longer than the guest's 10 s, status thawed,
   the late thaw is an error;
5. switch the guest to stock qemu-ga (as README.md says to switch back),
   the same N cycles; switch to quiesce again; shut down through the agent.

Results go to ``results.json`` in the work directory, and a summary with the
window ratio to stdout. Run as root: ``python3 tests/vm/run.py WORKDIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.vm.guest import Guest

SWITCH_TO_QEMU_GA = (
    "systemctl stop quiesce-qga.service quiesce-qga-forward.service; "
    "systemctl unmask qemu-guest-agent.service; systemctl start qemu-guest-agent.service"
)
SET_EXPEDITE = (
    "import json; p = '/etc/azure/VMSnapshotScriptPluginConfig.json'; d = json.load(open(p)); "
    "d['quiesce']['expediteRcu'] = True; json.dump(d, open(p, 'w'))"
)
SWITCH_TO_QUIESCE = (
    "systemctl stop qemu-guest-agent.service; systemctl mask qemu-guest-agent.service; "
    "systemctl start quiesce-qga.service"
)


def check(cond: bool, what: str, results: dict) -> None:
    """Record a named check; print it."""
    results.setdefault("checks", {})[what] = bool(cond)
    print(f"{'ok ' if cond else 'FAIL'} {what}", flush=True)


def cycles(g: Guest, n: int, quiet_s: float) -> list[dict]:
    """N cold cycles: writer running, quiet spell, freeze, thaw at once; the writer's longest stall."""
    out = []
    for i in range(n):
        pid = g.writer(quiet_s + 4)
        time.sleep(quiet_s)
        frozen, freeze_ms = g.timed("guest-fsfreeze-freeze")
        thawed, thaw_ms = g.timed("guest-fsfreeze-thaw")
        res = g.writer_result(pid)
        row = {"freeze": frozen, "thaw": thawed, "freeze_rtt_ms": freeze_ms, "thaw_rtt_ms": thaw_ms, **res}
        print(f"  cycle {i}: {row}", flush=True)
        out.append(row)
    return out


def summary(rows: list[dict]) -> dict:
    """Medians of a set of cycles."""
    return {
        key: statistics.median(r[key] for r in rows)
        for key in ("max_ms", "median_ms", "freeze_rtt_ms", "thaw_rtt_ms")
    }


def switch(g: Guest, script: str, unit: str, results: dict) -> bool:
    """Switch the agent on the port (a transient timer runs ``script`` after this reply).

    True once ``unit`` is active and answers; the old agent may answer for a
    while after the request (systemd is slow under TCG), so ask until then.
    """
    g.exec("/usr/bin/systemd-run", "--on-active=2", "/bin/sh", "-c", script)
    deadline = time.monotonic() + 300
    state = ""
    while time.monotonic() < deadline:
        time.sleep(3)
        try:
            g.resync(time.monotonic() + 120)
            state = g.exec("/usr/bin/systemctl", "is-active", unit, timeout=60).get("out-data", "").strip()
        except (TimeoutError, KeyError, OSError) as err:
            state = f"no answer ({err!r})"
            continue
        if state == "active":
            return True
    status = g.exec(
        "/usr/bin/systemctl", "status", "--no-pager", "quiesce-qga", "qemu-guest-agent", timeout=60
    )
    results.setdefault("switch_failures", []).append({"unit": unit, "state": state, "status": status})
    return False


def scenario(g: Guest, n: int, quiet_s: float, results: dict) -> None:
    """Steps 1 to 5 of the module docstring."""
    g.connect()
    results["boot_to_agent_s"] = round(time.monotonic() - g.started, 1)
    info = g.cmd("guest-info")["return"]
    names = {c["name"] for c in info["supported_commands"]}
    results["guest_info"] = {"version": info["version"], "commands": len(names)}
    check({"guest-fsfreeze-freeze", "guest-exec", "guest-get-osinfo"} <= names, "guest-info merged", results)
    osinfo = g.cmd("guest-get-osinfo")
    check(osinfo.get("return", {}).get("id") == "debian", "forwarded guest-get-osinfo", results)
    check(g.exec("/usr/bin/systemctl", "is-active", "quiesce-qga").get("out-data", "").strip() == "active",
          "quiesce-qga.service owns the port", results)  # fmt: skip

    frozen, results["first_freeze_rtt_ms"] = g.timed("guest-fsfreeze-freeze")
    results["frozen_count"] = frozen.get("return")
    check(isinstance(frozen.get("return"), int) and frozen["return"] >= 2, "freeze (/ and /data)", results)
    check(g.cmd("guest-fsfreeze-status") == {"return": "frozen"}, "status frozen", results)
    refused = g.cmd("guest-get-osinfo").get("error", {})
    check(refused.get("class") == "CommandNotFound" and "frozen state" in refused.get("desc", ""),
          "forwarded command refused while frozen", results)  # fmt: skip
    thawed, results["first_thaw_rtt_ms"] = g.timed("guest-fsfreeze-thaw")
    check(thawed == {"return": frozen.get("return")}, "thaw", results)
    check(g.cmd("guest-fsfreeze-status") == {"return": "thawed"}, "status thawed", results)
    events = g.exec("/bin/cat", "/run/quiesce-vm/events").get("out-data", "").split()
    check(events[:1] == ["pre"] and "snapshot=ok" in events, "guest pre/post scripts ran", results)
    journal = g.exec("/bin/journalctl", "-u", "quiesce-qga", "-o", "cat", "--no-pager").get("out-data", "")
    # Debian's fsfreeze-hook logs its .d scripts' output to its own file; quiesce logs the hook's result.
    hook_log = g.exec("/bin/cat", "/var/log/qga-fsfreeze-hook.log").get("out-data", "")
    hooked = "fsfreeze hook freeze: ok" in journal and "fsfreeze hook thaw: ok" in journal
    check(
        hooked and "50-vm called with thaw" in hook_log,
        "qemu-ga's fsfreeze-hook and its .d script ran",
        results,
    )

    print("cold cycles, quiesce qga:", flush=True)
    results["quiesce_cycles"] = cycles(g, n, quiet_s)
    journal = g.exec("/bin/journalctl", "-u", "quiesce-qga", "-o", "cat", "--no-pager").get("out-data", "")
    results["quiesce_windows_ms"] = [
        float(line.split()[3]) for line in journal.splitlines() if line.startswith("quiesce qga: window ")
    ]

    # The same with expedited RCU grace periods for the window (opt-in: "expediteRcu": true).
    g.exec("/usr/bin/python3", "-c", SET_EXPEDITE)
    print("cold cycles, quiesce qga, expediteRcu:", flush=True)
    results["quiesce_expedite_cycles"] = cycles(g, n, quiet_s)
    journal = g.exec("/bin/journalctl", "-u", "quiesce-qga", "-o", "cat", "--no-pager").get("out-data", "")
    results["quiesce_window_lines"] = [
        line for line in journal.splitlines() if line.startswith("quiesce qga: window ")
    ]

    print("deadline:", flush=True)
    g.cmd("guest-fsfreeze-freeze")
    time.sleep(12)
    check(g.cmd("guest-fsfreeze-status") == {"return": "thawed"}, "auto-thawed at the guest's 10 s", results)
    late = g.cmd("guest-fsfreeze-thaw")
    check("guardian" in late.get("error", {}).get("desc", ""), "the late thaw is an error", results)

    check(switch(g, SWITCH_TO_QEMU_GA, "qemu-guest-agent", results), "switched to stock qemu-ga", results)
    print("cold cycles, qemu-ga:", flush=True)
    results["qemu_ga_cycles"] = cycles(g, n, quiet_s)
    check(switch(g, SWITCH_TO_QUIESCE, "quiesce-qga", results), "switched back to quiesce", results)
    check(g.cmd("guest-fsfreeze-status") == {"return": "thawed"}, "quiesce answers again", results)

    ours, theirs = summary(results["quiesce_cycles"]), summary(results["qemu_ga_cycles"])
    expedited = summary(results["quiesce_expedite_cycles"])
    results["summary"] = {
        "quiesce": ours,
        "quiesce_expedite_rcu": expedited,
        "qemu_ga": theirs,
        "stall_ratio": ours["max_ms"] / theirs["max_ms"],
        "stall_ratio_expedite_rcu": expedited["max_ms"] / theirs["max_ms"],
    }
    # guest-shutdown succeeds silently; an error (no D-Bus in a minbase guest) comes back instead.
    g.client.send(b'{"execute":"guest-shutdown"}\n')  # type: ignore[union-attr]
    try:
        results["guest_shutdown_reply"] = g.client.reply(15)  # type: ignore[union-attr]
        g.exec("/usr/bin/systemctl", "poweroff", wait=False)
    except TimeoutError:
        results["guest_shutdown_reply"] = None
    results["qemu_exit"] = g.wait_exit()


def main() -> int:
    """Boot, run the scenario, write results.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, nargs="?", default=Path("/var/tmp/quiesce-vm"))
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--quiet", type=float, default=3.0, help="seconds without a freeze before each cycle")
    p.add_argument("--kvm", action="store_true", help="use KVM (hung at 'Probing EDD' nested here)")
    args = p.parse_args()
    results: dict = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_loadavg": os.getloadavg(),
        "accel": "kvm" if args.kvm else "tcg",
    }
    g = Guest(args.work, kvm=args.kvm)
    try:
        scenario(g, args.cycles, args.quiet, results)
    finally:
        g.close()
        (args.work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results.get("summary"), indent=1))
    failed = [k for k, v in results.get("checks", {}).items() if not v]
    print("FAILED: " + ", ".join(failed) if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
