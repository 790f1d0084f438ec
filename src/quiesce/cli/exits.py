"""``quiesce``'s exit codes: what each means, which commands return which, and the error each stands for.

The command line is the only place exceptions become exit codes
(:func:`exit_code_for`); README's table says the same as :data:`EXIT_MEANINGS`.
"""

from __future__ import annotations

import enum

from quiesce.errors import ConfigError, FreezeError, FreezeTimeoutError, LockHeldError, TargetError, ThawError


class Exit(enum.IntEnum):
    """``quiesce``'s exit codes (documented in README.md)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    LOCKED = 3
    FREEZE_FAILED = 4
    GUARDIAN_THAWED = 5
    THAW_FAILED = 6
    BAD_TARGET = 7
    DEGRADED = 8
    BACKUP_FAILED = 9
    CONFIG = 10


#: What each exit code means (README.md's table says the same).
EXIT_MEANINGS: dict[str, str] = {
    "0": "success",
    "1": "error (message on stderr)",
    "2": "usage error (an unknown option, a number out of its range...)",
    "3": "another quiesce freeze (or run) holds the lock",
    "4": "a FIFREEZE failed; everything frozen before it was thawed",
    "5": "the guardian thawed before the release (deadline passed, or a FIFREEZE blocked); thaw: "
    "the hold's window had ended before it (guardian, someone else's thaw, its holder stopped)",
    "6": "a FITHAW failed: a filesystem may still be frozen (see `quiesce status`)",
    "7": "a named target cannot be frozen (missing, not a mount point, read-only, pseudo...)",
    "8": "a snapshot was taken, but only file-system- or crash-consistent",
    "9": "the backup failed (no snapshot, or a failure marked it failed)",
    "10": "a configuration file is missing, unsafe or invalid (the plugin config, its targets, "
    "the plugin host INI, vmbackup.conf); nothing ran and nothing was frozen",
    "128+N": "a stop signal N (SIGTERM 143, SIGINT 130, SIGHUP 129) arrived before the post "
    "steps; nothing was left frozen, the post steps ran, the result says whether the snapshot ran",
    "130": "interrupted by SIGINT (143: SIGTERM); partial results printed",
}

#: The exit codes each subcommand can return.
COMMAND_EXITS: dict[str, tuple[str, ...]] = {
    "run": ("0", "1", "2", "3", "8", "9", "10", "128+N"),
    "check": ("0", "1", "2", "10"),
    "mounts": ("0", "1", "2", "7", "10"),
    "freeze": ("0", "1", "2", "3", "4", "5", "6", "7", "10"),
    "thaw": ("0", "1", "2", "3", "5", "6"),
    "recover": ("0", "1", "2", "3", "6"),
    "status": ("0", "1", "2"),
    "bench": ("0", "1", "2", "3", "4", "5", "6", "7", "10", "130"),
    "demo": ("0", "1", "2"),
}


def exit_help(command: str | None = None) -> str:
    """The "exit status" epilog of ``command``'s help (every code for the top-level help)."""
    codes = COMMAND_EXITS[command] if command else [c for c in EXIT_MEANINGS if c != "130"]
    lines = ["exit status:"]
    for code in codes:
        lines.append(f"  {code:>5}  {EXIT_MEANINGS[code]}")
    return "\n".join(lines) + "\n"


#: The top-level help's epilog (every exit code).
EXIT_HELP = exit_help()


def exit_code_for(err: BaseException) -> Exit:
    """The exit status for an error that ended a command."""
    for kind, code in (
        (ConfigError, Exit.CONFIG),
        (LockHeldError, Exit.LOCKED),
        (TargetError, Exit.BAD_TARGET),
        (ThawError, Exit.THAW_FAILED),
        # A FIFREEZE that blocked: the guardian thawed the rest (5), not a failed freeze (4).
        (FreezeTimeoutError, Exit.GUARDIAN_THAWED),
        (FreezeError, Exit.FREEZE_FAILED),
        (ValueError, Exit.USAGE),
    ):
        if isinstance(err, kind):
            return code
    return Exit.ERROR
