"""Per-driver interrupters: make a running statement stop when its task is cancelled.

When a task waiting on a worker is cancelled, ``Worker.call`` runs the
worker's *interrupter* on a short-lived thread (a network driver's cancel is
a round trip), waits for the statement and the interrupt to finish, then runs
the *recoverer* on the worker to leave the connection in a known state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from ._bridge import Worker

log = logging.getLogger("sqlalchemy_anyio")


def _sqlite(conn: Connection, raw: Any) -> None:
    raw.interrupt()


def _psycopg(conn: Connection, raw: Any) -> None:
    cancel = getattr(raw, "cancel_safe", None) or raw.cancel
    cancel()


def _psycopg2(conn: Connection, raw: Any) -> None:
    raw.cancel()


def _mysql(conn: Connection, raw: Any) -> None:
    """``KILL QUERY <id>`` on a side connection: MySQL drivers have no cancel."""
    thread_id = raw.thread_id()
    dialect = conn.dialect
    cargs, cparams = dialect.create_connect_args(conn.engine.url)
    side = dialect.connect(*cargs, **cparams)
    try:
        cursor = side.cursor()
        cursor.execute(f"KILL QUERY {int(thread_id)}")
        cursor.close()
    finally:
        side.close()


_BY_DRIVER: dict[str, Callable[[Connection, Any], None]] = {
    "pysqlite": _sqlite,
    "psycopg": _psycopg,
    "psycopg2": _psycopg2,
    "pymysql": _mysql,
    "mysqldb": _mysql,
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
            interrupt(conn, raw)

    return interrupter


def recoverer_for(conn: Connection) -> Callable[[], None]:
    """Roll back what a cancelled call left open; invalidate if that fails."""

    def recover() -> None:
        if conn.closed or conn.invalidated:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
        except Exception:  # noqa: BLE001 - state unknown: drop the DBAPI connection
            log.debug("rollback after cancellation failed; invalidating", exc_info=True)
            conn.invalidate()

    return recover


def arm(worker: Worker, conn: Connection) -> None:
    """Make ``worker``'s cancellations interrupt and then recover ``conn``."""
    worker.interrupter = interrupter_for(conn)
    worker.recover = recoverer_for(conn)
