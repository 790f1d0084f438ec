"""Write the real-guest results (``results.json`` of run.py and libvirt_run.py) into bench/RESULTS.md.

Its own section, ``qga_vm``, through ``bench/results.py`` (the other sections
are kept): the host machine, the guest, every check, the cold windows of
quiesce and of qemu-ga measured in the same guest, and their ratio (the
figure to read: a TCG guest's timings are not a real VM's).
Usage: ``python3 tests/vm/report.py WORKDIR [RESULTS.md]``.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import results as res  # noqa: E402

COMMANDS = (
    "python3 tests/vm/build.py WORKDIR && python3 tests/vm/run.py WORKDIR && "
    "python3 tests/vm/libvirt_run.py WORKDIR && python3 tests/vm/report.py WORKDIR"
)


def _cell(x: float) -> str:
    return f"{x:.1f}"


def _ratio(groups: dict, rows: list[list[str]]) -> str:
    if len(rows) < 2:
        return "not measured"
    return f"{float(rows[1][2]) / float(rows[0][2]):.2f}x"


def body(data: dict, host: dict) -> str:
    """The section's markdown."""
    s = data["summary"]
    rows = []
    for label, key, cycles in (
        ("quiesce qga, node config (pre/post scripts, fsfreeze-hook.d)", "quiesce", "quiesce_cycles"),
        ("quiesce qga, same + `expediteRcu`", "quiesce_expedite_rcu", "quiesce_expedite_cycles"),
        ("qemu-ga 7.2 (stock unit, no hook)", "qemu_ga", "qemu_ga_cycles"),
    ):
        m = s[key]
        stalls = sorted(round(r["max_ms"], 1) for r in data[cycles])
        rows.append(
            [
                label,
                str(len(data[cycles])),
                _cell(m["max_ms"]),
                ", ".join(map(str, stalls)),
                _cell(m["median_ms"]),
                _cell(m["freeze_rtt_ms"]),
                _cell(m["thaw_rtt_ms"]),
                res.ratio(m["max_ms"] / s["qemu_ga"]["max_ms"]),
            ]
        )
    table = res.table(
        [
            "agent on the port",
            "cycles",
            "median longest stall ms",
            "each cycle's longest stall ms",
            "median gap ms",
            "freeze RTT ms",
            "thaw RTT ms",
            "stall / qemu-ga",
        ],
        rows,
        text_columns=1,
    )
    lines = data.get("quiesce_window_lines", [])
    n = len(data["quiesce_cycles"])
    # The journal's lines: the first functional freeze, then the default cycles, then the expediteRcu ones.
    groups = {"node config": lines[1 : 1 + n], "node config + expediteRcu": lines[1 + n : 1 + 2 * n]}
    window_rows = []
    for label, group in groups.items():
        if not group:
            continue
        wins = [float(line.split()[3]) for line in group]
        fifreeze = [float(x) for line in group for x in re.findall(r"freeze ([0-9.]+) ms", line)]
        window_rows.append(
            [label, str(len(wins)), _cell(statistics.median(wins)), _cell(statistics.median(fifreeze))]
        )
    checks = dict(data.get("checks", {}))
    lv = data.get("libvirt", {})
    checks.update({f"libvirt: {k}": v for k, v in lv.get("checks", {}).items()})
    check_rows = [[name, "ok" if ok else "**FAILED**"] for name, ok in checks.items()]
    parts = [
        "Debian bookworm guest (`tests/vm/build.py`), QEMU 7.2 `-accel tcg -cpu max`, 1 vCPU, 1 GiB, "
        f"`/` and `/data` ext4 on virtio disks; booted in {data['boot_to_agent_s']:.0f} s to an answering "
        f"agent (under libvirt: {lv.get('boot_to_agent_s', 'n/a')} s). The host drives the port "
        "`org.qemu.guest_agent.0` (a chardev socket, as libvirt does) and never freezes anything itself."
        + (f" While measuring: {data['host_note']}." if data.get("host_note") else ""),
        "### Checks\n\n" + res.table(["check", "result"], check_rows, text_columns=2),
        "### Cold window seen by an application in the guest\n\n"
        "A writer in the guest (`write` + `fdatasync` of 4 KiB on `/data`, started with `guest-exec`) runs "
        "while the host, after 3 s without a freeze, sends `guest-fsfreeze-freeze` and, on its reply, "
        "`guest-fsfreeze-thaw`. Its longest gap between two completions is the window the application "
        "saw (the freeze of `/` and `/data`, the host's round trip, the thaw). Freeze and thaw RTTs are "
        "host-side and include quiesce's pre steps (before the freeze) and post steps (after the thaw), "
        "which are outside the window.\n\n" + table,
        "quiesce's own record of the same cycles (its journal: first FIFREEZE start to last FITHAW end, "
        "the host's round trip included; and each filesystem's FIFREEZE):\n\n"
        + res.table(
            ["quiesce qga", "cycles", "median window ms", "median FIFREEZE per filesystem ms"], window_rows
        ),
        f"- deadline: a freeze left without a thaw was thawed by the guest's guardian at 10 s; the status "
        f"said `thawed`; the late thaw was an error: "
        f"{'yes' if checks.get('the late thaw is an error') else 'NO'}",
        "- guest-shutdown through quiesce (forwarded; qemu-ga sends no reply on success): "
        + (
            f"{json.dumps(data['guest_shutdown_reply'])} (the error qemu-ga gave came back through quiesce; "
            "a minbase guest has no D-Bus for `shutdown +0`, so the script powered off with `systemctl`)"
            if data.get("guest_shutdown_reply")
            else "no reply: the guest shut down"
        ),
        f"- reading: quiesce's own window with expediteRcu is {_ratio(groups, window_rows)} of its window "
        "without; each filesystem's cold FIFREEZE is the bulk of the window for both agents. The writer's "
        "stalls are noisy here (the host was loaded: see the load average above), and on one TCG vCPU the "
        "Python between quiesce's last FIFREEZE and its reply, and between the thaw request and its first "
        "FITHAW, runs far slower than qemu-ga's C: compare the ratios, not the milliseconds, and only "
        "within this section.",
    ]
    bare = lv.get("bare")
    if bare:
        brows = []
        for name, label in (
            ("quiesce-bare", "quiesce qga --no-config --no-fsfreeze-hook"),
            ("qemu-ga-bare", "qemu-ga"),
        ):
            b = bare[name]
            stalls = sorted(round(r["max_ms"], 1) for r in b["cycles"])
            brows.append(
                [
                    label,
                    str(len(b["cycles"])),
                    _cell(b["median_max_ms"]),
                    ", ".join(map(str, stalls)),
                    _cell(b["median_freeze_rtt_ms"]),
                    _cell(b["median_thaw_rtt_ms"]),
                    res.ratio(b["median_max_ms"] / bare["qemu-ga-bare"]["median_max_ms"]),
                ]
            )
        parts.append(
            "### The freeze alone: bare agents on a second port (libvirt boot)\n\n"
            "Neither agent runs a script or a hook, so on this 1-vCPU guest nothing but the freeze "
            "competes with the writer (`tests/vm/measure.py`). The guest's clock ticked in 4 ms steps in "
            "this boot (the writer's median gap reads 4.000 ms), so these stalls are good to 4 ms.\n\n"
            + res.table(
                [
                    "agent",
                    "cycles",
                    "median longest stall ms",
                    "each cycle's longest stall ms",
                    "freeze RTT ms",
                    "thaw RTT ms",
                    "stall / qemu-ga",
                ],
                brows,
            )
        )
    if lv:
        parts.append(
            "### Under libvirt\n\n"
            + "\n".join(
                f"- `{k}`: {lv[k]}"
                for k in ("virsh_version", "domfsfreeze", "domfsthaw", "snapshot", "windows_ms", "error")
                if k in lv
            )
        )
    doc = {"machine": host, "command": COMMANDS}
    ratio_default = s["stall_ratio"]
    ratio_fast = s["stall_ratio_expedite_rcu"]
    checks_ = [
        res.Check("cold window, node config, at most qemu-ga's", "stall / qemu-ga", ratio_default, 1.0),
        res.Check("cold window with expediteRcu, at most qemu-ga's", "stall / qemu-ga", ratio_fast, 1.0),
    ]
    if bare:
        checks_.append(
            res.Check("the freeze alone, at most qemu-ga's", "stall / qemu-ga", bare["stall_ratio"], 1.0)
        )
    extra = "; the guest under QEMU TCG"
    return res.section(
        "tests/vm: quiesce qga in a real Debian guest (TCG)",
        doc=doc,
        parts=parts,
        checks=checks_,
        extra_machine=extra,
    )


def main() -> int:
    """Read WORKDIR/results.json, write the section."""
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/quiesce-vm")
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else res.DEFAULT_PATH
    data = json.loads((work / "results.json").read_text())
    host = res.machine()
    host["loadavg"] = tuple(data.get("host_loadavg", host["loadavg"]))
    host["date_utc"] = data.get("started_utc", host["date_utc"])
    res.write_section(target, "qga_vm", body(data, host))
    print(f"wrote section qga_vm of {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
