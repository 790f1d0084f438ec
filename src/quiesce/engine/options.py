"""How a freeze is run (:class:`FreezeOptions`): its deadlines, checked when the options are made.

A deadline is a real number of seconds, above 0 and at most an hour, as on
the command line and in the config: it always fits the guardian's
nanoseconds and the ledger, and a bool, a string or NaN is refused at once
with an error naming the option, never deep in a conversion.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

from quiesce.engine.defaults import DEFAULT_FREEZE_TIMEOUT_S, DEFAULT_STEP_TIMEOUT_S, MAX_TIMEOUT_S
from quiesce.engine.ledger import RUN_ID
from quiesce.engine.preflush import DEFAULT_POLICY, PreflushPolicy
from quiesce.engine.rundir import RUN_DIR


@dataclass(frozen=True)
class FreezeOptions:
    """How a freeze is run."""

    timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S
    step_timeout_s: float | None = None
    preflush: bool = True
    #: When the pre-flush runs (quiesce.engine.preflush): only with enough dirty to matter.
    preflush_policy: PreflushPolicy = DEFAULT_POLICY
    run_dir: str = RUN_DIR
    #: Expedite RCU grace periods for the window (see quiesce.engine.rcu): a cold
    #: FIFREEZE then costs about a millisecond instead of tens. On by default;
    #: a knob that cannot be written is reported as a warning, never an error.
    expedite_rcu: bool = True
    #: Freeze and thaw independent filesystems at once, one thread each
    #: (stacked ones still in order): their cold-freeze waits overlap.
    parallel: bool = True
    #: This process ends its window on SIGUSR1 (quiesce's own commands install that
    #: handler), so ``quiesce thaw`` signals it. Left False, ``quiesce thaw`` never
    #: signals the process (SIGUSR1 would kill a program that does not handle it):
    #: it thaws the filesystems itself, and this freeze finds them thawed.
    release_on_sigusr1: bool = False
    #: The ID the freeze's ledger, report and guardian log carry (``quiesce run``
    #: gives its own, so that ``quiesce status`` names the run); None: a new one.
    run_id: str | None = None

    def __post_init__(self) -> None:
        _check_seconds("timeout", self.timeout_s)
        if self.run_id is not None and not (isinstance(self.run_id, str) and RUN_ID.fullmatch(self.run_id)):
            raise ValueError(f"run_id must be 1 to 128 of A-Z a-z 0-9 _ . : -, not {self.run_id!r}")
        if self.step_timeout_s is not None:
            _check_seconds("step timeout", self.step_timeout_s)
        check_switches(self, "preflush", "expedite_rcu", "parallel")
        object.__setattr__(self, "run_dir", path_option("run_dir", self.run_dir))

    @property
    def timeout_ns(self) -> int:
        """The guardian's deadline in nanoseconds: never 0, which the guardian reads as "none"."""
        return _positive_ns(self.timeout_s)

    @property
    def step_timeout_ns(self) -> int:
        """Per-FIFREEZE limit: the option, else the default, never past the window's; never 0."""
        step = self.step_timeout_s or min(DEFAULT_STEP_TIMEOUT_S, self.timeout_s)
        return _positive_ns(min(step, self.timeout_s))


def _check_seconds(what: str, value: object) -> None:
    """A timeout is a real number of seconds, above 0 and at most :data:`MAX_TIMEOUT_S`.

    Finite: an infinite deadline is no deadline (and no int of nanoseconds);
    bounded, as the command line and the config bound it, so that it always
    fits the guardian's nanoseconds and the ledger. ``True`` is not a second.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__} {value!r}")
    seconds = float(value)
    if not (0 < seconds <= MAX_TIMEOUT_S and math.isfinite(seconds)):
        raise ValueError(
            f"{what} must be a positive number of seconds, at most {MAX_TIMEOUT_S:g}, not {value!r}"
        )


def check_switches(options: object, *names: str) -> None:
    """Each named field is a bool: the string ``"false"`` would read as true."""
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {type(value).__name__} {value!r}")


def path_option(name: str, value: object) -> str:
    """A path option as a str (given as str, bytes or a path object)."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{name} must be a path, not {type(value).__name__} {value!r}")
    return os.fsdecode(value)


def _positive_ns(seconds: float) -> int:
    """``seconds`` (> 0) in whole nanoseconds, at least 1.

    Plain truncation would turn a timeout under a nanosecond into 0, and the
    native side reads a 0 deadline as no deadline at all.
    """
    return max(1, round(seconds * 1e9))
