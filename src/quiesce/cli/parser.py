"""The argument parser of ``quiesce``: every subcommand, its options, its help.

Options several commands share come from parent parsers, each defined once
(:class:`Parents`): ``--json`` and ``--run-dir`` (every command), Azure's
vmbackup.conf, the filesystem selection (``mounts``, ``freeze``), the config
files (``run``, ``check``), the freeze's tuning (``freeze``, ``bench``), the
wait for a holder (``thaw``, ``recover``). ``bench``, ``qga`` and the
fleet's ``agent`` and ``fleet`` register their own subcommands
(:mod:`quiesce.bench.command`, :mod:`quiesce.qga.command`, :mod:`quiesce.fleet.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

from quiesce.azure.paths import DEFAULT_CONFIG_PATH, DEFAULT_PLUGINHOST_PATH, VMBACKUP_CONF
from quiesce.cli.argtypes import MAX_SECONDS, seconds
from quiesce.cli.commands import lazy
from quiesce.cli.exits import EXIT_HELP, exit_help
from quiesce.engine.defaults import DEFAULT_FREEZE_TIMEOUT_S, DEFAULT_STEP_TIMEOUT_S
from quiesce.engine.rundir import RUN_DIR

_positive_seconds = seconds(0, MAX_SECONDS, low_open=True)
_wait_seconds = seconds(0, MAX_SECONDS)


class UsageError(Exception):
    """The command line could not be parsed; ``parser`` is the (sub)parser that said so."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised, so that ``--json`` can report them as JSON."""

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` instead of printing and exiting."""
        raise UsageError(message, self)


class Parents(NamedTuple):  # not a dataclass: `quiesce thaw` need not load dataclasses
    """The option groups several subcommands share, each defined once."""

    #: ``--json`` and ``--run-dir``: every subcommand.
    common: argparse.ArgumentParser
    #: Which filesystems: ``mounts`` and ``freeze``.
    selection: argparse.ArgumentParser
    #: The config, the plugin host INI and vmbackup.conf: ``run`` and ``check``.
    config_files: argparse.ArgumentParser
    #: ``--timeout``, pre-flush, expedited RCU, parallel: ``freeze`` and ``bench``.
    freeze_tuning: argparse.ArgumentParser
    #: ``--wait`` for a holder or its guardian: ``thaw`` and ``recover``.
    wait: argparse.ArgumentParser


class _Version(argparse.Action):
    """``--version``: reads the installed version only when asked (importlib.metadata is slow to load)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show program's version number and exit",
            **kwargs,
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Print ``quiesce VERSION`` and exit 0, as argparse's own version action does."""
        import quiesce

        parser._print_message(f"quiesce {quiesce.__version__}\n", sys.stdout)
        parser.exit()


def _parent(*parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return _Parser(add_help=False, parents=list(parents))


def build_parents() -> Parents:
    """The shared option groups (see :class:`Parents`)."""
    common = _parent()
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--run-dir",
        default=os.environ.get("QUIESCE_RUN_DIR", RUN_DIR),
        metavar="DIR",
        help=f"where the lock, ledger and guardian log live (default {RUN_DIR}, "
        "or $QUIESCE_RUN_DIR); it must be root's alone (refused if anyone else can write it or a "
        "directory above it), is made mode 700 if missing, and must not be on a filesystem that "
        "gets frozen",
    )
    vmbackup = _parent()
    vmbackup.add_argument(
        "--vmbackup-conf",
        default=VMBACKUP_CONF,
        metavar="PATH",
        help=f"Azure's vmbackup.conf whose [SnapshotThread] MountsToSkip is honoured "
        f"(default {VMBACKUP_CONF}; a missing file is fine); it must be root-owned and writable "
        "by no one else",
    )
    vmbackup.add_argument("--no-vmbackup-conf", action="store_true", help="ignore vmbackup.conf")

    selection = _parent(vmbackup)
    selection.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="MOUNT",
        help="skip a mount point or glob (repeatable); excluding any mount of a "
        "filesystem excludes the filesystem",
    )
    selection.add_argument(
        "--exclude-fstype",
        action="append",
        default=[],
        metavar="TYPE",
        help="skip every filesystem of this type (repeatable)",
    )
    selection.add_argument(
        "--fstype",
        action="append",
        default=[],
        metavar="TYPE",
        help="treat this filesystem type as freezable (repeatable)",
    )
    selection.add_argument(
        "--loop-backing-fstype",
        action="append",
        default=[],
        metavar="TYPE",
        help="freeze a loop-mounted filesystem even when its image lives on this filesystem type "
        "(FUSE or network; a glob such as 'fuse.*'; repeatable). Skipped by default: the FUSE "
        "daemon, or the network, can block its FIFREEZE",
    )

    config_files = _parent(vmbackup)
    config_files.add_argument(
        "--config",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the JSON config (default {DEFAULT_CONFIG_PATH}); must be root-owned, mode 600",
    )
    config_files.add_argument(
        "--pluginhost",
        default=DEFAULT_PLUGINHOST_PATH,
        metavar="PATH",
        help=f"Azure's plugin host INI, optional (default {DEFAULT_PLUGINHOST_PATH}); "
        "must be root-owned, mode 600",
    )
    config_files.add_argument("--no-pluginhost", action="store_true", help="ignore the plugin host INI")

    freeze_tuning = _parent()
    freeze_tuning.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_FREEZE_TIMEOUT_S,
        metavar="S",
        help=f"longest time frozen (each time, for bench): the guardian thaws at this deadline "
        f"(default {DEFAULT_FREEZE_TIMEOUT_S:g}; more than 0, at most {MAX_SECONDS:g})",
    )
    freeze_tuning.add_argument(
        "--no-preflush", action="store_true", help="skip the parallel syncfs() before freezing"
    )
    # On by default; the --no- forms opt out (the positive ones stay accepted).
    freeze_tuning.add_argument(
        "--expedite-rcu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="expedite RCU grace periods for the window (/sys/kernel/rcu_expedited, system-wide, "
        "restored after): a freeze after a quiet spell costs ~1 ms per filesystem instead of tens "
        "(default on; a knob that cannot be written is a warning, never an error)",
    )
    freeze_tuning.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freeze and thaw independent filesystems at once, one thread each (loop-stacked ones "
        "still in order, / last): their cold-freeze waits overlap (default on)",
    )

    wait = _parent()
    wait.add_argument(
        "--wait",
        type=_wait_seconds,
        default=10.0,
        metavar="S",
        help=f"how long to wait for the freeze's holder or guardian to end (default 10; "
        f"0 to {MAX_SECONDS:g})",
    )
    return Parents(common, selection, config_files, freeze_tuning, wait)


def _command(
    sub: argparse._SubParsersAction[Any],
    name: str,
    parents: list[argparse.ArgumentParser],
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand whose help ends with the exit codes it can return."""
    return sub.add_parser(  # type: ignore[no-any-return]
        name,
        parents=parents,
        help=help,
        description=description,
        epilog=exit_help(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``quiesce``.

    With ``only`` (a name from :func:`~quiesce.cli.commands.command_of`), the commands other
    modules define are left out, so their packages are not imported; the
    parse of a command line that starts with ``only`` is the same.
    """
    shared = build_parents()
    parser = _Parser(
        prog="quiesce",
        description="Application-consistent snapshots: freeze filesystems (FIFREEZE) for "
        "as short a window as the kernel allows, with a guardian process that always thaws.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "run",
        [shared.common, shared.config_files],
        "the whole job: pre-script, freeze, snapshot, thaw, post-script (Azure config)",
        "Read Azure Backup's VMSnapshotScriptPluginConfig.json, check it and the "
        "scripts (owner root, safe modes and directories), run the pre-script, freeze the "
        "filesystems, take the snapshot, thaw, run the post-script, and classify the result "
        "application-consistent, file-system-consistent, crash-consistent or failed.",
    )
    p.add_argument(
        "--no-stdin",
        action="store_true",
        help='snapshot mode "hold": do not release on stdin (only a signal, `quiesce thaw`, the deadline)',
    )
    p.add_argument(
        "--log-format",
        choices=("plain", "json", "none"),
        default=None,
        help="event lines on stderr after the run, with the run ID: plain key=value lines "
        "(journald-friendly; the default when stderr is not a terminal), JSON lines, or none "
        "(the default on a terminal)",
    )
    p.add_argument(
        "--metrics",
        metavar="FILE",
        help="write Prometheus metrics of the run (last window, status, durations) to FILE, "
        "atomically; point node_exporter's textfile collector at its directory, which only root "
        "may write (else the metrics are refused, the run stands)",
    )
    p.set_defaults(func=lazy("run"))

    p = _command(
        sub,
        "check",
        [shared.common, shared.config_files],
        "check the config, scripts, hooks and plan as `run` would, running and freezing nothing",
        "Check everything `quiesce run` checks, without running or freezing anything: "
        "the config (owner, mode, directories, every key), the plugin host INI, both scripts "
        "(permissions, existence, whether their #! interpreter can start), the hook directory and "
        "every hook, the snapshot command, and the plan (what would be frozen, in which order, what "
        "is skipped and why). Exits 0 when all is well, 10 when anything is wrong.",
    )
    p.set_defaults(func=lazy("check"))

    p = _command(
        sub,
        "mounts",
        [shared.common, shared.selection],
        "show what would be frozen, in which order, and what is skipped",
        "List the filesystems quiesce would freeze, in freeze order, and every "
        "skipped mount with its reason (pseudo, network, fuse, read-only, duplicate, excluded, "
        "unsupported, not-included).",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="limit to these mount points or globs")
    p.set_defaults(func=lazy("mounts"))

    p = _command(
        sub,
        "freeze",
        [shared.common, shared.freeze_tuning, shared.selection],
        "freeze filesystems until released",
        "Freeze the named mount points (in a safe order), announce 'frozen', wait "
        "for the release, then thaw and report. Released by a line or EOF on stdin (unless "
        "--no-stdin), SIGTERM/SIGINT/SIGHUP, or `quiesce thaw`; the guardian thaws on its own "
        "at --timeout, or if quiesce dies. With --hold the command returns as soon as the "
        "filesystems are frozen and a background holder keeps them frozen until `quiesce thaw` "
        "or the timeout.",
    )
    p.add_argument("targets", nargs="+", metavar="TARGET", help="mount points (or globs) to freeze")
    p.add_argument(
        "--step-timeout",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help=f"longest one FIFREEZE may block before the guardian thaws the rest "
        f"(default {DEFAULT_STEP_TIMEOUT_S:g}; more than 0, at most {MAX_SECONDS:g}; "
        "never longer than --timeout)",
    )
    p.add_argument("--hold", action="store_true", help="return once frozen; release with `quiesce thaw`")
    p.add_argument("--no-stdin", action="store_true", help="do not release on stdin")
    p.set_defaults(func=lazy("freeze"))

    p = _command(
        sub,
        "thaw",
        [shared.common, shared.wait],
        "release or thaw what quiesce froze",
        "Release a running freeze (foreground or --hold) and show its report. If the "
        "process that froze is gone, thaw exactly the filesystems its ledger lists, and only if "
        "they are still the same mounts. If the guardian already ended the last --hold at its "
        "deadline, say so and exit 5 (once). --force thaws a named mount point regardless of any "
        "ledger (also one frozen by another tool).",
    )
    p.add_argument("--force", action="append", default=[], metavar="MOUNT", help="FITHAW this mount point")
    p.set_defaults(func=lazy("thaw"))

    if only is None:
        from quiesce.bench import command as bench_command
        from quiesce.qga import command as qga_command

        bench_command.add_parser(sub, [shared.common, shared.freeze_tuning])
        qga_command.add_parser(sub, shared.common)

    p = _command(
        sub,
        "demo",
        [shared.common],
        "run the whole job on a sandbox of loop filesystems (root; never touches this machine's)",
        "Build loop-mounted disks in a private mount namespace, run a writing "
        "application, freeze, take reflink snapshots of the disk images inside the window, thaw, "
        "and check the snapshots: fsck-clean and consistent with each other. Needs root, "
        "xfsprogs and e2fsprogs.",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="S",
        help=f"guardian deadline (default 10; more than 0, at most {MAX_SECONDS:g})",
    )
    p.set_defaults(func=lazy("demo"))

    p = _command(
        sub,
        "recover",
        [shared.common, shared.wait],
        "after a crash: thaw what the ledger says quiesce froze, kill leftover script processes",
        "Safe to run at any time (at boot, after quiesce.service stops): if a freeze's "
        "process and guardian are both gone but its ledger remains, thaw exactly the filesystems "
        "it lists (only if still the same mounts), restore rcu_expedited if it was changed, and "
        "kill script processes left in the cgroups of runs that are no longer alive. A freeze in "
        "progress is left alone.",
    )
    p.set_defaults(func=lazy("recover"))

    p = _command(
        sub,
        "status",
        [shared.common],
        "is anything frozen by quiesce?",
        "Show the freeze in progress (from the ledger), whether its process and "
        "guardian are alive, the lock (and its holder while held), and how the last freeze ended.",
    )
    p.set_defaults(func=lazy("status"))

    if only is None:
        from quiesce.fleet import cli as fleet_cli

        fleet_cli.add_parsers(sub, shared.common, shared.config_files)
    return parser
