"""A test's own processes, found by a marker only that test put in their command lines.

The machine is shared: a check for leftover processes must never see
anyone else's. Each test that starts long-lived children gives them an
argument no other process can have (:func:`unique_sleep`: a ``sleep``
duration carrying this process's pid and a random number) and looks only
for that exact argument (:func:`alive_with`), never for a pattern.
"""

from __future__ import annotations

import os
import secrets


def unique_sleep(seconds: int = 300) -> str:
    """A ``sleep`` duration of about ``seconds``, unique to the caller: ``300.<pid><random>``."""
    return f"{seconds}.{os.getpid()}{secrets.randbelow(10**9):09d}"


def alive_with(marker: str) -> list[int]:
    """Pids of live processes (not zombies) with ``marker`` as one of their arguments, or inside one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile
        if any(marker in arg for arg in argv):
            found.append(int(entry))
    return found
