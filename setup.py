"""Build the optional C bridge (``_cbridge``); metadata lives in pyproject.toml.

The extension only makes the loop <-> worker hand-off faster.  When it cannot
be built (no compiler, no Python headers, Windows, PyPy), a warning is printed
and the package installs with its pure-Python bridge.
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

SPEEDUPS = [
    Extension(
        "sqlalchemy_anyio._bridge._cbridge",
        ["src/sqlalchemy_anyio/_bridge/_cbridge.c"],
        optional=True,
    )
]

BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError, ValueError)


def _warn(error: BaseException) -> None:
    print(
        "*" * 72 + "\n"
        f"WARNING: the C bridge (_cbridge) could not be built: {error}\n"
        "sqlalchemy-anyio will use its pure-Python bridge: it works the same,\n"
        "each call to a worker thread just costs a little more.\n" + "*" * 72,
        file=sys.stderr,
    )


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns and carries on when the compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as error:
            _warn(error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as error:
            _warn(error)


def _can_build() -> bool:
    # POSIX threads and C11 atomics, CPython's C API: not on Windows or PyPy.
    return platform.python_implementation() == "CPython" and os.name == "posix"


setup(
    ext_modules=SPEEDUPS if _can_build() else [],
    cmdclass={"build_ext": OptionalBuildExt},
)
