"""``quiesce mounts`` and ``quiesce freeze``: what would be frozen, and a freeze held until released."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from quiesce.azure.planning import make_plan
from quiesce.cli.exits import Exit
from quiesce.cli.holder import frozen_event, hold, hold_detached, report_exit
from quiesce.cli.output import SafeStream
from quiesce.cli.render import emit_json, human_ns, print_plan, print_report
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.mountinfo import escape_path
from quiesce.engine.plan import Plan
from quiesce.engine.targets import check_explicit, target_problems
from quiesce.errors import TargetError
from quiesce.runner.signals import ignore_stray_thaw_signals


def plan_from(args: argparse.Namespace, targets: Sequence[str]) -> Plan:
    """The plan for ``targets`` with the selection options of ``args``."""
    return make_plan(
        targets,
        exclude=args.exclude,
        exclude_fstypes=args.exclude_fstype,
        extra_fstypes=args.fstype,
        loop_backing_fstypes=args.loop_backing_fstype,
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
    )


def cmd_mounts(args: argparse.Namespace) -> int:
    """``quiesce mounts``: a named target that cannot be frozen is an error (7), as for ``freeze``."""
    plan = plan_from(args, args.targets)
    problems = target_problems(plan, args.targets)
    if problems:
        raise TargetError("cannot freeze: " + "; ".join(problems))
    if args.json:
        emit_json(plan.to_dict(), sys.stdout)
    else:
        print_plan(plan, sys.stdout)
    return Exit.OK


# -- freeze -------------------------------------------------------------------


def freeze_options(args: argparse.Namespace) -> FreezeOptions:
    """The freeze options of ``quiesce freeze`` and ``quiesce bench`` from their arguments."""
    return FreezeOptions(
        timeout_s=args.timeout,
        # Only `freeze` has --step-timeout; `bench` freezes with the default.
        step_timeout_s=getattr(args, "step_timeout", None),
        preflush=not args.no_preflush,
        run_dir=args.run_dir,
        expedite_rcu=args.expedite_rcu,
        parallel=args.parallel,
    )


def cmd_freeze(args: argparse.Namespace) -> int:
    """``quiesce freeze``."""
    ignore_stray_thaw_signals()  # a `quiesce thaw` that comes late must not kill it after its hold
    plan = plan_from(args, args.targets)
    check_explicit(plan, args.targets)
    options = freeze_options(args)
    if args.hold:
        return hold_detached(plan, options, args.json)

    out = SafeStream("stdout", sys.stdout)

    def announce(f: Freeze) -> None:
        # stdout may be a file on a frozen target: one small write, and the
        # guardian's deadline bounds even that. If it fails, raise: the hold ends.
        if args.json:
            emit_json(frozen_event(f), cast(TextIO, out))
        else:
            how = "a line or EOF on stdin, " if not args.no_stdin else ""
            out.write(
                f"frozen: {' '.join(escape_path(t.mount.mount_point) for t in f.targets)}; "
                f"release with {how}SIGTERM/SIGINT, or `quiesce thaw`; "
                f"the guardian thaws in {human_ns(f.remaining_ns())}\n"
            )
        if out.failure is not None:
            raise OSError(f"stdout: {out.failure}")

    report, released_by, err = hold(plan, options, announce, use_stdin=not args.no_stdin)
    code = report_exit(report, err, released_by)
    if code == Exit.OK and released_by is not None and released_by.startswith("announcement failed"):
        code = Exit.ERROR
    if args.json:
        # The error fields and the exit status, as every --json answer has them.
        fields = {"event": "thawed", "released_by": released_by, "exit": int(code)}
        if err is not None:
            fields |= {
                "error_name": getattr(err, "azure_name", None),
                "error_code": getattr(err, "azure_code", None),
            }
        emit_json(report.to_dict() | fields, cast(TextIO, out))
    else:
        print_report(report, cast(TextIO, out))
        if released_by:
            out.write(f"  released by {released_by}\n")
    if out.failure is not None:
        SafeStream("stderr", sys.stderr).write(f"quiesce: output to stdout failed: {out.failure}\n")
    return code
