"""setuptools needs this file to run the cffi builder and to build quiesce-helper.

``build.py`` describes the C extension (``quiesce._native``); the
``build_ext`` below also links ``quiesce-helper`` from the same sources, the
program the guardian and the watchdog run as (``csrc/launch.h``), and puts
it next to the extension: in the wheel, and in ``src/quiesce`` for an
editable install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import LinkError

HERE = Path(__file__).resolve().parent


def _builder():  # type: ignore[no-untyped-def]
    # By path: a module named "build" would be the PyPA package.
    spec = importlib.util.spec_from_file_location("quiesce_cffi_build", HERE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildExtWithHelper(build_ext):
    """build_ext, then quiesce-helper next to the extension."""

    def run(self) -> None:
        super().run()
        b = _builder()
        temp = os.path.join(self.build_temp, "helper")
        objects = self.compiler.compile(
            [f"{b.CSRC}/{c}" for c in b.HELPER_SOURCES],
            output_dir=temp,
            include_dirs=[b.CSRC],
            extra_postargs=b.CFLAGS,
        )
        out_dir = os.path.join(self.build_lib, "quiesce")
        try:
            # Static: no dynamic loader at each start (0.26 ms less CPU here), and
            # the post-script's watchdog is started right after the thaw.
            self.compiler.link_executable(
                objects, b.HELPER, output_dir=out_dir, libraries=["pthread"], extra_postargs=["-static"]
            )
        except LinkError:  # no static libc on this machine: the helper works linked dynamically too
            self.compiler.link_executable(objects, b.HELPER, output_dir=out_dir, libraries=["pthread"])
        if self.inplace:
            package_dir = self.get_finalized_command("build_py").get_package_dir("quiesce")
            shutil.copy2(os.path.join(out_dir, b.HELPER), os.path.join(package_dir, b.HELPER))

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), os.path.join(self.build_lib, "quiesce", _builder().HELPER)]


setup(cffi_modules=["build.py:ffibuilder"], cmdclass={"build_ext": BuildExtWithHelper})
