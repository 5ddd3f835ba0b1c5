"""pytest plugin: the code under test is sqlalchemy_anyio, whatever the harness uses.

Loaded by scripts/compat/run.py (``-p compat_ours_check``) for the run of
SQLAlchemy's own asyncio suite on this package.  SQLAlchemy's harness needs
greenlet for its own plumbing; this checks, before and after the tests, that
every module imported under ``sqlalchemy.ext.asyncio`` is ours.
"""

from __future__ import annotations

import sys

import pytest

OFFICIAL = "sqlalchemy.ext.asyncio"


def _foreign() -> list[str]:
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if (name == OFFICIAL or name.startswith(OFFICIAL + "."))
        and not getattr(module, "__name__", "").startswith("sqlalchemy_anyio")
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    import sqlalchemy.ext.asyncio as aio

    if not aio.__name__.startswith("sqlalchemy_anyio"):
        raise pytest.UsageError(f"{OFFICIAL} is {aio.__name__}, not sqlalchemy_anyio")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    foreign = _foreign()
    if foreign:
        print(f"\ncompat_ours_check: modules of the official extension were loaded: {foreign}")
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    else:
        print("\ncompat_ours_check: every sqlalchemy.ext.asyncio module was sqlalchemy_anyio's")
