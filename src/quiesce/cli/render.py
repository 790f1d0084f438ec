"""Human output and JSON for the command line: durations, plans, freeze reports, run results."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TextIO

# emit_json lives with the output that never decides a run, which `quiesce thaw` loads alone.
from quiesce.cli.output import emit_json as emit_json
from quiesce.engine.mountinfo import escape_path

if TYPE_CHECKING:  # annotations only: `quiesce thaw` prints with this module and need not load them
    from quiesce.engine.plan import Plan
    from quiesce.engine.report import FreezeReport
    from quiesce.runner.types import HoldAnnouncement, RunResult


def human_ns(ns: int | None) -> str:
    """A duration for a terminal: 812 us, 3.4 ms, 1.25 s."""
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def print_plan(plan: Plan, out: TextIO) -> None:
    """What would be frozen, in order, and every skipped mount with its reason."""
    if plan.targets:
        out.write("freeze order (thawed in reverse):\n")
        for i, t in enumerate(plan.targets, 1):
            m = t.mount
            extra = f"  [loop on {escape_path(t.backing_target)}]" if t.backing_target else ""
            where = f"{escape_path(m.mount_point)}  {m.fstype}  {m.dev}  {escape_path(m.source)}"
            out.write(f"  {i:2}. {where}{extra}\n")
    else:
        out.write("nothing would be frozen\n")
    if plan.skipped:
        out.write("skipped:\n")
        for s in plan.skipped:
            m = s.mount
            out.write(f"  {escape_path(m.mount_point)}  {m.fstype}  {s.reason.value}: {s.detail}\n")
    for pattern in plan.unmatched:
        out.write(f"no mount matches {escape_path(pattern)}\n")


def preflush_text(report: FreezeReport) -> str:
    """The pre-flush for a terminal: its time, or why it did not run."""
    d = report.preflush
    if d is None or d.flush:
        return human_ns(report.preflush_ns)
    if d.dirty_bytes is None:
        return "off"
    return f"skipped ({d.dirty_bytes / 2**20:.1f} MiB dirty machine-wide)"


def print_report(report: FreezeReport, out: TextIO) -> None:
    """A freeze report for a terminal."""
    out.write(f"run {report.run_id}: window {human_ns(report.window_ns)}")
    out.write(f", pre-flush {preflush_text(report)}\n")
    for t in report.targets:
        line = (
            f"  {escape_path(t.mount_point):<24} {t.fstype:<6} {t.state:<18} "
            f"freeze {human_ns(t.freeze_ns):>9}  thaw {human_ns(t.thaw_ns):>9}"
        )
        if t.freeze_errno:
            line += f"  freeze errno {t.freeze_errno} ({os.strerror(t.freeze_errno)})"
        if t.thaw_errno:
            line += f"  thaw errno {t.thaw_errno} ({os.strerror(t.thaw_errno)})"
        out.write(line + "\n")
    if report.guardian_reason:
        out.write(
            f"  guardian acted ({report.guardian_reason}) "
            f"{human_ns(report.guardian_fired_at_ns)} after the first FIFREEZE\n"
        )
    if report.error:
        out.write(f"  error: {report.error}\n")
    for w in report.warnings:
        out.write(f"  warning: {w}\n")


def print_run(result: RunResult, out: TextIO) -> None:
    """A run's result for a terminal: one line per phase, then the verdict."""
    for p in result.phases:
        detail = f"  ({p.detail})" if p.detail else ""
        out.write(f"{p.name:<18} {p.status:<10} {human_ns(p.duration_ns):>10}{detail}\n")
    for res in (result.pre, result.post):
        if res is None:
            continue
        for a in res.attempts:
            how = f"exit {a.exit_code}" if a.exit_code is not None else f"signal {a.signal}"
            out.write(
                f"  {res.phase}-script attempt {a.number}: {a.outcome}, {how}, "
                f"{human_ns(a.duration_ns)}, cpu {a.cpu_user_us + a.cpu_system_us} us\n"
            )
            if a.outcome != "ok" and a.stderr.strip():
                for line in a.stderr.strip().splitlines()[-5:]:
                    out.write(f"    | {line}\n")
    if result.freeze is not None and result.freeze.window_ns is not None:
        # A window that did not hold (rolled back, cut short) is never shown as the run's window.
        held = "" if result.freeze.ok else " (the freeze did not hold: see the result)"
        out.write(f"frozen window {human_ns(result.freeze.window_ns)}{held}\n")
    # The freeze's own (e.g. expedited RCU unavailable) are in its report: shown with the run's.
    for w in (result.freeze.warnings if result.freeze is not None else []) + result.warnings:
        out.write(f"warning: {w}\n")
    verdict = result.consistency
    if result.error_name:
        verdict += f" ({result.error_name}, code {result.error_code}: {result.message})"
    out.write(f"result: {verdict}\n")


def hold_line(news: HoldAnnouncement) -> str:
    """The hold's announcement for a terminal or a script reading stdout."""
    release = "release with a line or EOF on stdin, SIGTERM, or `quiesce thaw`"
    if news.frozen:
        return f"frozen: {' '.join(escape_path(m) for m in news.frozen)}; {release}"
    not_frozen = " ".join(escape_path(m) for m in news.not_frozen) or "-"
    return f"frozen: nothing ({news.reason}); not frozen: {not_frozen}; take the snapshot now, then {release}"


def print_thaw(out: dict[str, Any]) -> None:
    """What `quiesce thaw` or `quiesce recover` did, for a terminal."""
    for r in out.get("forced", []):
        print(f"{escape_path(r['mount_point'])}: {r['outcome']}")
    if "message" in out:
        print(out["message"])
    if "released" in out:
        print(f"released the freeze held by pid {out['released']}")
        rep = out.get("report")
        if rep:
            print(f"  window {human_ns(rep.get('window_ns'))}; ", end="")
            print(", ".join(f"{escape_path(t['mount_point'])} {t['state']}" for t in rep["targets"]))
    for r in out.get("thawed_for", []):
        print(f"{escape_path(r['mount_point'])} ({r['dev']}): {r['outcome']}")
    for r in out.get("recovered", []):
        print(f"{escape_path(r['mount_point'])} ({r['dev']}): {r['outcome']}")
