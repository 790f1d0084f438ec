"""Building and running ``bench/floor.c``, the floor every window is compared to.

The binary is compiled at run time into a directory the caller owns (a
temporary one): no binary is ever committed. :func:`compile_program` builds
the other C helpers of ``bench/`` (``exit_stamp.c``) the same way.
``-Wl,-z,now`` resolves every libc symbol at load time, so the first window
of a fresh process does not pay for the lazy binding of ``ioctl`` inside the
window; the engine's cffi module is loaded by Python with ``RTLD_NOW`` and
pays nothing there either.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "floor.c"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Wl,-z,now")


class FloorError(RuntimeError):
    """The floor program could not be built, or a run of it failed."""


def compile_program(source: str | Path, dest_dir: str | Path) -> Path:
    """Compile one C file of ``bench/`` with ``cc`` into ``dest_dir``; returns the binary's path."""
    cc = shutil.which("cc")
    if cc is None:
        raise FloorError("no C compiler: `cc` is not on PATH")
    binary = Path(dest_dir) / Path(source).stem
    argv = [cc, *CFLAGS, "-o", str(binary), str(source)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FloorError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return binary


def compile_floor(dest_dir: str | Path) -> Path:
    """Compile ``floor.c`` into ``dest_dir``; returns the binary's path."""
    return compile_program(SOURCE, dest_dir)


def compile_command(dest_dir: str | Path, source: str | Path = SOURCE) -> str:
    """The compile command line, as printed in reports."""
    return " ".join(["cc", *CFLAGS, "-o", str(Path(dest_dir) / Path(source).stem), str(source)])


def run_floor(binary: str | Path, windows: int, mounts: Sequence[str]) -> list[int]:
    """Run the floor for ``windows`` windows over ``mounts``; returns each window in ns."""
    argv = [str(binary), str(windows), *mounts]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FloorError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    values = [int(line) for line in done.stdout.split()]
    if len(values) != windows:
        raise FloorError(f"{' '.join(argv)}: printed {len(values)} windows, not {windows}")
    return values
