"""cffi builder for quiesce's native module, ``quiesce._native``.

The C declarations live in the headers under ``csrc/``: each header marks the
part cffi must see between ``/* cdef-begin */`` and ``/* cdef-end */``. This
script only assembles those parts, so constants and structures are written
once, in C.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

CSRC = "csrc"
HEADERS = ("session.h", "freeze.h", "guardian.h", "watchdog.h", "spawn.h", "window.h", "launch.h")
SOURCES = ("session.c", "freeze.c", "detach.c", "guardian.c", "watchdog.c", "spawn.c", "window.c", "launch.c")
#: The guardian's and the watchdog's own program (csrc/launch.h), installed next to the module.
HELPER = "quiesce-helper"
HELPER_SOURCES = ("helper.c", "launch.c", "guardian.c", "watchdog.c", "detach.c", "session.c", "freeze.c")
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
_CDEF = re.compile(r"/\* cdef-begin \*/\n(.*?)/\* cdef-end \*/", re.DOTALL)


def cdef_of(header: Path) -> str:
    """Return the cffi-visible declarations of one header."""
    parts = _CDEF.findall(header.read_text())
    if not parts:
        raise ValueError(f"{header}: no cdef-begin/cdef-end region")
    return "\n".join(parts)


def make_ffibuilder() -> FFI:
    """Build the FFI object that setuptools (or a direct call) compiles."""
    here = Path(__file__).resolve().parent
    builder = FFI()
    builder.cdef("\n".join(cdef_of(here / CSRC / h) for h in HEADERS))
    builder.set_source(
        "quiesce._native",
        "\n".join(f'#include "{h}"' for h in HEADERS),
        # Relative paths: setuptools builds from the project root and refuses
        # absolute source paths in an sdist build.
        sources=[f"{CSRC}/{c}" for c in SOURCES],
        include_dirs=[CSRC],
        extra_compile_args=CFLAGS,
        libraries=["pthread"],
    )
    return builder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    # `python -m build` run from this directory lands here: this file shadows
    # the PyPA "build" package. Say so instead of half-building something.
    raise SystemExit(
        "build.py is quiesce's cffi builder, run by setuptools. To build, use "
        "`pip install .`, `pip wheel .`, or `python -m build` from outside this directory "
        "(e.g. `cd .. && python -m build quiesce`)."
    )
