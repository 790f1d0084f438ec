"""Numbers on the command line, checked against their allowed range.

Every numeric option of every subcommand goes through :func:`seconds` or
:func:`count`, so ``inf``, ``nan``, ``1e12`` or a negative value is a usage
error (exit 2) that names the allowed range, never an ``OverflowError`` deep
in a conversion to nanoseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

#: The longest anything may stay frozen, and the longest any wait: an hour
#: (the config's freezeTimeoutSeconds has the same bound).
MAX_SECONDS = 3600.0

_INTEGER = re.compile(r"[0-9]+")
# Plain decimal notation with an optional exponent: no "inf", "nan", "0x..", "1_0".
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _type_error(message: str) -> Exception:
    # argparse is imported only to report a bad value: `quiesce thaw`'s own parse (cli/fastpath.py)
    # checks its --wait with these functions and does not load argparse.
    import argparse

    return argparse.ArgumentTypeError(message)


def seconds(low: float = 0.0, high: float = MAX_SECONDS, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a number of seconds from ``low`` (excluded if ``low_open``) to ``high``."""
    lower = f"greater than {low:g}" if low_open else f"at least {low:g}"
    expected = f"a number of seconds {lower} and at most {high:g}"

    def parse(text: str) -> float:
        value = float(text) if _DECIMAL.fullmatch(text.strip()) else math.nan
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            raise _type_error(f"expected {expected}, not {text!r}")
        return value

    parse.__name__ = "seconds"
    return parse


def count(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """An argparse ``type`` for a whole number from ``low`` to ``high``."""
    expected = f"a whole number{f' of {unit}' if unit else ''} from {low} to {high}"

    def parse(text: str) -> int:
        stripped = text.strip()
        if not _INTEGER.fullmatch(stripped) or not low <= int(stripped) <= high:
            raise _type_error(f"expected {expected}, not {text!r}")
        return int(stripped)

    parse.__name__ = "count"
    return parse
