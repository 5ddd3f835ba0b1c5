"""Make ``sqlalchemy.ext.asyncio`` (and its submodules) resolve to ``sqlalchemy_anyio``.

scripts/compat/run.py puts this directory on PYTHONPATH of the client
processes it starts, and nowhere else: real clients of SQLAlchemy's asyncio
extension, and the libraries they import, then run unchanged on
sqlalchemy_anyio.  ``sqlalchemy.ext.asyncio.session`` maps to
``sqlalchemy_anyio.session`` and so on.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Optional, Sequence

OFFICIAL = "sqlalchemy.ext.asyncio"
OURS = "sqlalchemy_anyio"
#: Official submodules whose counterpart here has another name.
RENAMED = {"base": "_base"}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader that answer for the official extension with ours."""

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[types.ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname == OFFICIAL or fullname.startswith(OFFICIAL + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder; exec_module swaps in our module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system returns whatever sys.modules holds under the name
        # once exec_module returns, so the placeholder is dropped and our
        # module (with its own __spec__ untouched) is what clients get.
        rest = module.__name__[len(OFFICIAL) + 1 :]
        target = ".".join(filter(None, (OURS, RENAMED.get(rest, rest))))
        sys.modules[module.__name__] = importlib.import_module(target)


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())
