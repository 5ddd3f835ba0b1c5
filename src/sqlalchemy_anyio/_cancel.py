"""Per-driver interrupters: make a running statement stop when its task is cancelled.

An interrupter runs on the event loop thread while the worker is still busy
with the statement.  It must not wait for the statement; the worker is awaited
afterwards (see ``Worker.call``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from sqlalchemy.engine import Connection


def _sqlite(raw: Any) -> None:
    raw.interrupt()


def _psycopg(raw: Any) -> None:
    cancel = getattr(raw, "cancel_safe", None) or raw.cancel
    cancel()


def _psycopg2(raw: Any) -> None:
    raw.cancel()


_BY_DRIVER: dict[str, Callable[[Any], None]] = {
    "pysqlite": _sqlite,
    "psycopg": _psycopg,
    "psycopg2": _psycopg2,
}


def interrupter_for(conn: Connection) -> Optional[Callable[[], None]]:
    """A callable that interrupts ``conn``'s current statement, or None."""
    interrupt = _BY_DRIVER.get(conn.dialect.driver)
    if interrupt is None:
        return None

    def interrupter() -> None:
        fairy = conn._dbapi_connection
        raw = fairy.dbapi_connection if fairy is not None else None
        if raw is not None:
            interrupt(raw)

    return interrupter
