"""``quiesce thaw`` parsed without argparse, so that the release of a hold starts sooner.

``quiesce thaw`` runs while a ``freeze --hold`` keeps filesystems frozen:
its start-up is frozen time. Building the argument parser (argparse, its
gettext look-ups and help formatters) costs more than everything the
release itself does, so a plain ``quiesce thaw`` command line (``--json``,
``--run-dir``, ``--wait``, ``--force``, each spelt out in full) is parsed
here into the namespace the parser would give. Anything else (help, an
abbreviation, an unknown or misplaced word, a value that starts with ``-``
or that ``--wait`` does not accept) returns None, and the parser handles it,
with its usual help and errors: the result is the same either way
(``tests/unit/test_startup.py`` checks it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from quiesce.cli.argtypes import MAX_SECONDS, seconds
from quiesce.cli.commands import lazy
from quiesce.engine.rundir import RUN_DIR

if TYPE_CHECKING:
    import argparse

#: The options that take a value, and where it goes (as cli/parser.py defines them).
_VALUED = {"--run-dir": "run_dir", "--wait": "wait", "--force": "force"}
_wait_seconds = seconds(0, MAX_SECONDS)


def thaw_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """The parsed ``quiesce thaw`` command line ``argv`` (the words after ``quiesce``), or None.

    None when ``argv`` is not a plain ``thaw`` command line: the parser
    then parses it (see this module's docstring).
    """
    if not argv or argv[0] != "thaw":
        return None
    ns: dict[str, Any] = {
        "command": "thaw",
        "json": False,
        "run_dir": os.environ.get("QUIESCE_RUN_DIR", RUN_DIR),
        "wait": 10.0,
        "force": [],
        "func": lazy("thaw"),
    }
    words = list(argv[1:])
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--json":
            ns["json"] = True
            continue
        name, eq, value = word.partition("=")
        if name not in _VALUED:
            return None
        if not eq:
            # A value that starts with "-" is argparse's to judge (an option, a negative number).
            if i >= len(words) or words[i].startswith("-"):
                return None
            value = words[i]
            i += 1
        if name == "--wait":
            try:
                ns["wait"] = _wait_seconds(value)
            except Exception:  # out of range or not a number: argparse says so
                return None
        elif name == "--force":
            ns["force"] = [*ns["force"], value]
        else:
            ns["run_dir"] = value
    return cast("argparse.Namespace", SimpleNamespace(**ns))
