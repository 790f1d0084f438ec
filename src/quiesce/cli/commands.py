"""What runs each of the parser's own subcommands, imported only when it runs.

``quiesce thaw`` runs while filesystems are frozen (the hold shape's
release), and ``quiesce run`` and ``quiesce freeze`` before they freeze: each
command's start is on a clock. So the parser names each command's function
by module (:data:`OWN_COMMANDS`, :func:`lazy`), builds only the command
being run when it can (:func:`command_of`); ``quiesce thaw`` is parsed
without argparse when it can be (:mod:`quiesce.cli.fastpath`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

#: The subcommands :mod:`quiesce.cli.parser` defines itself, with the module that runs each.
#: A command's module is imported only when that command runs (:func:`lazy`), and the
#: commands other modules define (``bench``, ``qga``, the fleet's) are registered only in the
#: whole parser (:func:`~quiesce.cli.parser.build_parser`): ``quiesce thaw`` runs while
#: filesystems are frozen and ``quiesce run``/``freeze`` before they freeze, so neither
#: loads what it does not run.
OWN_COMMANDS = {
    "run": "quiesce.cli.run:cmd_run",
    "check": "quiesce.cli.run:cmd_check",
    "mounts": "quiesce.cli.freeze:cmd_mounts",
    "freeze": "quiesce.cli.freeze:cmd_freeze",
    "thaw": "quiesce.cli.thaw:cmd_thaw",
    "demo": "quiesce.cli.run:cmd_demo",
    "recover": "quiesce.cli.recover:cmd_recover",
    "status": "quiesce.cli.status:cmd_status",
}


def lazy(name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``name`` of :data:`OWN_COMMANDS`; its module is imported when it is called."""
    module, attr = OWN_COMMANDS[name].split(":")

    def command(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), attr)
        return func(args)

    command.__name__ = command.__qualname__ = attr
    return command


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs when it is one of :data:`OWN_COMMANDS` (its first word), else None.

    Such a command line parses the same with
    :func:`~quiesce.cli.parser.build_parser` given it: the top-level usage
    names no subcommand, and any other first word (an option such as
    ``--help``, a misspelt or another module's command) gets the whole
    parser.
    """
    return argv[0] if argv and argv[0] in OWN_COMMANDS else None
