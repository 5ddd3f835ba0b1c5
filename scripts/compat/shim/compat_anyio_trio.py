"""pytest plugin: run a pytest-asyncio test suite on trio through anyio's plugin.

Loaded by scripts/compat/run.py as ``-p compat_anyio_trio -p no:asyncio``:
with pytest-asyncio's plugin off, ``pytest_asyncio.fixture`` leaves plain
async fixtures, which anyio's plugin runs, with every test marked ``asyncio``,
on trio.  Only for suites whose tests and fixtures await nothing
asyncio-specific.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # pytest-asyncio's ini keys, so suites that set them do not warn
    parser.addini("asyncio_mode", "ignored: pytest-asyncio is off")
    parser.addini("asyncio_default_fixture_loop_scope", "ignored: pytest-asyncio is off")
    parser.addini("asyncio_default_test_loop_scope", "ignored: pytest-asyncio is off")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "asyncio: run on anyio's trio backend here")


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: Any
) -> Generator[None, Any, Any]:
    # A wrapper runs before anyio's own hook, which reads the anyio mark.
    marks = getattr(obj, "pytestmark", ())
    if any(m.name == "asyncio" for m in marks) and not any(m.name == "anyio" for m in marks):
        pytest.mark.anyio(obj)
    return (yield)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # anyio parametrizes anyio_backend over all its backends; asyncio is
    # covered by the suite's own pytest-asyncio run, so keep trio only.
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("anyio_backend") if callspec else None
        (drop if backend not in (None, "trio") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
