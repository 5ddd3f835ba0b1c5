"""Sphinx configuration of the sqlalchemy-anyio documentation.

Built by ``sh scripts/docs.sh`` (warnings are errors).  The Markdown guides in
this folder are pages as they are (MyST); the overview, quickstarts and
migration guide include sections of ../README.md between its
``<!-- docs:... -->`` markers; the benchmarks page includes
../benchmarks/README.md.  No intersphinx: the build runs offline.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

import sqlalchemy_anyio

logger = logging.getLogger(__name__)

project = "sqlalchemy-anyio"
author = "The sqlalchemy-anyio authors"
copyright = "2026, The sqlalchemy-anyio authors"
release = importlib.metadata.version("sqlalchemy-anyio")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Anchors for headings down to ####, so links such as bridge.md#thread-placement resolve.
myst_heading_anchors = 4

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"undoc-members": True}

html_theme = "furo"
html_title = f"sqlalchemy-anyio {release}"

# The Markdown files link to each other by their paths in the repository; on
# this site the guides are pages beside this file and benchmarks/README.md is
# the page "benchmarks" (which includes it).
_README_LINKS = {"](docs/": "](", "](benchmarks/README.md": "](benchmarks.md"}
_GUIDE_LINKS = {"](../benchmarks/README.md": "](benchmarks.md"}

# Object kinds of the API reference whose docstring must say what they do.
_NEEDS_DOCSTRING = {"class", "exception", "function", "method", "property", "attribute"}


def _relink(content: list[str], links: dict[str, str]) -> None:
    for old, new in links.items():
        content[0] = content[0].replace(old, new)


def _readme_links(
    app: Sphinx, relative_path: Path, parent_docname: str, content: list[str]
) -> None:
    """Point the repository links of an included README.md at the pages of this site."""
    if relative_path.as_posix() == "../README.md":
        _relink(content, _README_LINKS)


def _guide_links(app: Sphinx, docname: str, content: list[str]) -> None:
    """Point a guide's links to benchmarks/README.md at the page "benchmarks"."""
    _relink(content, _GUIDE_LINKS)


def _require_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Warn (an error under -W) for an API entry without a docstring."""
    if what in _NEEDS_DOCSTRING and not any(line.strip() for line in lines):
        logger.warning("%s %s has no docstring", what, name, type="sqlalchemy_anyio")


def _check_api_entries(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn (an error under -W) for a name of ``sqlalchemy_anyio.__all__`` with no
    entry in the API reference (docs/api.rst)."""
    documented = env.get_domain("py").objects
    for name in sqlalchemy_anyio.__all__:
        if f"sqlalchemy_anyio.{name}" not in documented:
            logger.warning(
                "sqlalchemy_anyio.%s is in __all__ but has no entry in docs/api.rst",
                name,
                type="sqlalchemy_anyio",
            )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", _guide_links)
    app.connect("include-read", _readme_links)
    app.connect("autodoc-process-docstring", _require_docstring)
    app.connect("env-check-consistency", _check_api_entries)
    return {"parallel_read_safe": True}
