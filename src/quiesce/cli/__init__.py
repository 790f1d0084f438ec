"""The ``quiesce`` command line; :func:`main` is its entry point (``quiesce``, ``python -m quiesce``).

:mod:`~quiesce.cli.app` runs a command and maps what it raised to an exit
code (:mod:`~quiesce.cli.exits`); :mod:`~quiesce.cli.parser` builds the
parser; the commands live in :mod:`~quiesce.cli.run`,
:mod:`~quiesce.cli.freeze`, :mod:`~quiesce.cli.holder`,
:mod:`~quiesce.cli.recover` and :mod:`~quiesce.cli.status`, their human
output in :mod:`~quiesce.cli.render`.
"""

from __future__ import annotations

from quiesce.cli.app import main
from quiesce.cli.parser import build_parser

__all__ = ["build_parser", "main"]
