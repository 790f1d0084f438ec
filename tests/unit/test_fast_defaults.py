"""The fast path is the default: expedited RCU and parallel freeze, each with an opt-out."""

from __future__ import annotations

import pytest

import quiesce
from quiesce.azure.config import Extensions
from quiesce.cli.freeze import freeze_options
from quiesce.cli.parser import build_parser
from quiesce.engine.freeze import FreezeOptions


def test_freeze_options_default_to_the_fast_path():
    """The API's FreezeOptions expedite RCU and freeze in parallel unless told not to."""
    opts = FreezeOptions()
    assert (opts.expedite_rcu, opts.parallel) == (True, True)
    assert quiesce.FreezeOptions is FreezeOptions


def test_config_extensions_default_to_the_fast_path():
    """Absent ``expediteRcu``/``parallelFreeze`` mean true; the dict form spells them out."""
    ext = Extensions()
    assert (ext.expedite_rcu, ext.parallel_freeze) == (True, True)
    assert ext.to_dict()["expediteRcu"] is True and ext.to_dict()["parallelFreeze"] is True


@pytest.mark.parametrize("command", ["freeze", "bench"])
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], (True, True)),
        (["--expedite-rcu", "--parallel"], (True, True)),
        (["--no-expedite-rcu"], (False, True)),
        (["--no-parallel"], (True, False)),
        (["--no-expedite-rcu", "--no-parallel"], (False, False)),
        # The last word wins, as for any argparse flag.
        (["--no-parallel", "--parallel"], (True, True)),
    ],
)
def test_cli_flags_default_on_and_opt_out(command, flags, expected):
    """``freeze`` and ``bench`` expedite and parallelise by default; ``--no-…`` turns each off."""
    args = build_parser().parse_args([command, *flags, "/srv/db"])
    assert (args.expedite_rcu, args.parallel) == expected
    opts = freeze_options(args)
    assert (opts.expedite_rcu, opts.parallel) == expected
