"""The API reference (docs/api.rst) has an entry for every name of ``__all__``.

The documentation build checks the same on the objects it documented
(docs/conf.py); this test catches a missing entry without building the site.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy_anyio

API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.rst"

_MODULE = re.compile(r"^\.\. (?:py:)?(?:module|currentmodule):: *(\S+)\s*$")
_ENTRY = re.compile(r"^\.\. (?:py:)?auto(?:class|function|exception|data|attribute):: *(\S+)")


def documented_names() -> set[str]:
    """Fully qualified names of the page's autodoc entries."""
    module = ""
    names: set[str] = set()
    for line in API_PAGE.read_text(encoding="utf-8").splitlines():
        if match := _MODULE.match(line):
            module = match.group(1)
        elif match := _ENTRY.match(line):
            name = match.group(1)
            names.add(name if "." in name or not module else f"{module}.{name}")
    return names


def test_every_public_name_has_an_entry() -> None:
    documented = documented_names()
    missing = [
        name for name in sqlalchemy_anyio.__all__ if f"sqlalchemy_anyio.{name}" not in documented
    ]
    assert not missing, f"no entry in {API_PAGE.name} for: {', '.join(missing)}"


def test_entries_name_public_objects() -> None:
    for name in documented_names():
        module, _, attr = name.rpartition(".")
        if module == "sqlalchemy_anyio":
            assert attr in sqlalchemy_anyio.__all__, f"{name} is not in __all__"
