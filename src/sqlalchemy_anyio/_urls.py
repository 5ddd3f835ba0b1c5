"""Accept URLs written for the official extension (async drivers).

An async DBAPI cannot run on a worker thread, so ``+aiosqlite``, ``+asyncpg``
and friends are replaced by their synchronous counterpart, with one warning
per mapping, or rejected with a message naming the driver to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import warnings
from typing import Union

from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url

from .exc import DriverMappedWarning

log = logging.getLogger("sqlalchemy_anyio")

#: async driver -> candidate sync drivers, in order of preference, as
#: (SQLAlchemy driver name, importable module, pip requirement).
_SYNC_FOR_ASYNC: dict[tuple[str, str], tuple[tuple[str, str, str], ...]] = {
    ("sqlite", "aiosqlite"): (("pysqlite", "sqlite3", "(the standard library)"),),
    ("postgresql", "asyncpg"): (
        ("psycopg", "psycopg", "psycopg[binary]"),
        ("psycopg2", "psycopg2", "psycopg2-binary"),
    ),
    ("postgresql", "psycopg_async"): (("psycopg", "psycopg", "psycopg[binary]"),),
    ("mysql", "aiomysql"): (
        ("pymysql", "pymysql", "PyMySQL"),
        ("mysqldb", "MySQLdb", "mysqlclient"),
    ),
    ("mysql", "asyncmy"): (
        ("pymysql", "pymysql", "PyMySQL"),
        ("mysqldb", "MySQLdb", "mysqlclient"),
    ),
    ("mariadb", "aiomysql"): (
        ("pymysql", "pymysql", "PyMySQL"),
        ("mysqldb", "MySQLdb", "mysqlclient"),
    ),
    ("mariadb", "asyncmy"): (
        ("pymysql", "pymysql", "PyMySQL"),
        ("mysqldb", "MySQLdb", "mysqlclient"),
    ),
    ("oracle", "oracledb_async"): (("oracledb", "oracledb", "oracledb"),),
    ("mssql", "aioodbc"): (("pyodbc", "pyodbc", "pyodbc"),),
}

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_level() -> int:
    """The ``stacklevel`` of the first caller outside this package."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def to_sync_url(url: Union[str, URL]) -> URL:
    """Return ``url`` with any async driver replaced by a sync one."""
    u = make_url(url)
    backend, driver = u.get_backend_name(), u.get_driver_name()
    if "+" not in u.drivername:
        return u
    candidates = _SYNC_FOR_ASYNC.get((backend, driver))
    if candidates is None:
        return u
    for sync_driver, module, _ in candidates:
        if _installed(module):
            new = u.set(drivername=f"{backend}+{sync_driver}")
            key = (u.drivername, new.drivername)
            with _warned_lock:
                first = key not in _warned
                _warned.add(key)
            if first:
                message = (
                    f"sqlalchemy_anyio runs synchronous drivers on worker threads: "
                    f"using {new.drivername!r} in place of the async driver "
                    f"{u.drivername!r}"
                )
                log.warning("%s", message)
                warnings.warn(message, DriverMappedWarning, stacklevel=_caller_level())
            return new
    needs = " or ".join(
        f"pip install {req!r} (then use {backend}+{d}://)" for d, _, req in candidates
    )
    raise exc.ArgumentError(
        f"The async driver {driver!r} in {u.drivername!r} cannot be used by sqlalchemy_anyio, "
        f"which runs synchronous drivers on worker threads, and no synchronous driver for "
        f"{backend!r} is installed: {needs}."
    )
