"""The ``quiesce`` command line; :func:`main` is its entry point (``quiesce``, ``python -m quiesce``).

:mod:`~quiesce.cli.app` runs a command and maps what it raised to an exit
code (:mod:`~quiesce.cli.exits`); :mod:`~quiesce.cli.parser` builds the
parser; the commands live in :mod:`~quiesce.cli.run`,
:mod:`~quiesce.cli.freeze`, :mod:`~quiesce.cli.holder`,
:mod:`~quiesce.cli.recover` and :mod:`~quiesce.cli.status`, their human
output in :mod:`~quiesce.cli.render`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quiesce.cli.app import main

if TYPE_CHECKING:
    import argparse

__all__ = ["build_parser", "main"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``quiesce`` (:func:`quiesce.cli.parser.build_parser`).

    Imported when called: the ``quiesce`` command imports this package, and
    ``quiesce thaw`` does not build a parser when it need not.
    """
    from quiesce.cli.parser import build_parser as build

    return build(only)
