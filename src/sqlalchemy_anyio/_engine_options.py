"""The options create_async_engine takes on top of create_engine's.

Each is validated here, once, with an ``ArgumentError`` that says what is
allowed, so a mistyped setting fails at engine creation, not under load.
Also here: the pool and SQLite settings this package chooses by default.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from sqlalchemy import exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine.url import URL

from ._bridge import _placement, bound_seconds
from ._pool import WorkerQueuePool


def parse_cancel_timeout(value: Any) -> Optional[float]:
    """The ``cancel_timeout=`` engine option: seconds, above 0 (None: the default)."""
    if value is None:
        return None
    seconds = bound_seconds(value)
    if seconds is None:
        raise exc.ArgumentError(
            f"cancel_timeout must be a number of seconds above 0, not {value!r}: it bounds "
            "how long a cancelled call waits for its statement, interrupt and recovery."
        )
    return seconds


def parse_overflow_linger(value: Any) -> Optional[float]:
    """The ``overflow_linger=`` engine option: seconds, 0 to an hour (None: the default)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 <= seconds <= 3600:
        raise exc.ArgumentError(
            f"overflow_linger must be a number of seconds from 0 to 3600, not {value!r}: "
            "how long an overflow connection the pool does not need is kept before it is "
            "closed (0: at once, as QueuePool does)."
        )
    return seconds


def parse_thread_placement(value: Any) -> str:
    """The ``thread_placement=`` engine option: ``"auto"``, ``"on"`` or ``"off"``."""
    try:
        return _placement.parse_mode(value)
    except ValueError as error:
        raise exc.ArgumentError(str(error)) from None


def worker_pool_default(url: URL, kw: Dict[str, Any]) -> None:
    """Use :class:`WorkerQueuePool` where a plain QueuePool would be used.

    That is the dialect's default, ``QueuePool`` and ``AsyncAdaptedQueuePool``
    (which code written for the official extension may name), as a class or
    as a ready-made ``pool=`` object (whose settings, creator and listeners
    are taken over).  Other pool classes and objects are kept as they are.
    """
    given = kw.get("pool")
    if isinstance(given, sa_pool.QueuePool) and not isinstance(given, WorkerQueuePool):
        kw["pool"] = WorkerQueuePool.adopt(given)
        return
    if given is not None:
        return
    poolclass = kw.get("poolclass")
    if poolclass is None:
        poolclass = url.get_dialect().get_pool_class(url)  # type: ignore[attr-defined]
    if poolclass in (sa_pool.QueuePool, sa_pool.AsyncAdaptedQueuePool):
        kw["poolclass"] = WorkerQueuePool


def sqlite_defaults(url: URL, kw: Dict[str, Any]) -> None:
    """Connections move between worker threads; memory databases are shared.

    An in-memory SQLite database is one database per DBAPI connection, so a
    single connection serves the whole engine (StaticPool), as with the
    official aiosqlite dialect, instead of one database per thread.
    """
    if url.get_backend_name() != "sqlite" or "creator" in kw:
        return
    connect_args = dict(kw.get("connect_args") or {})
    connect_args.setdefault("check_same_thread", False)
    kw["connect_args"] = connect_args
    is_file = bool(url.database and url.database != ":memory:") and (
        url.query.get("mode") != "memory"
    )
    if not is_file and "poolclass" not in kw and "pool" not in kw:
        kw["poolclass"] = sa_pool.StaticPool
