"""Per-driver interrupters: make a running statement stop when its task is cancelled.

When a task waiting on a worker is cancelled, ``Worker.call`` runs the
worker's *interrupter* on a short-lived thread (a network driver's cancel is
a round trip), waits for the statement and the interrupt to finish, then runs
the *recoverer* on the worker to leave the connection in a known state.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

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


_MYSQL_ID = "_sqlalchemy_anyio_thread_id"


def _remember_mysql_id(dbapi_connection: Any, connection_record: Any) -> None:
    """Pool ``connect`` hook: note the server's id for the connection while on
    its own thread (mysqlclient refuses ``thread_id()`` from another thread)."""
    setattr(dbapi_connection, _MYSQL_ID, dbapi_connection.thread_id())


def _mysql(conn: Connection, raw: Any) -> None:
    """``KILL QUERY <id>`` on a side connection: MySQL drivers have no cancel."""
    thread_id = getattr(raw, _MYSQL_ID, None)
    if thread_id is None:
        return
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


def _close_streams(worker: Worker) -> None:
    for result in worker.take_streams():
        try:
            result._close_on_worker()
        except Exception:  # the connection is reset next
            log.debug("closing a stream after cancellation failed", exc_info=True)


def session_recoverer(session: Session, worker: Worker) -> Callable[[], None]:
    """Close streams and roll back a session whose call was cancelled."""

    def recover() -> None:
        _close_streams(worker)
        try:
            if session.in_transaction():
                session.rollback()
        except Exception:  # state unknown: drop the DBAPI connections
            log.debug("session rollback after cancellation failed", exc_info=True)
            session.invalidate()

    return recover


def recoverer_for(conn: Connection, worker: Worker) -> Callable[[], None]:
    """Close streams and roll back what a cancelled call left open.

    Open streaming cursors are closed first: SQLite keeps an interrupt
    pending while any statement is active, and it would hit the next one.
    If the rollback fails the DBAPI connection is invalidated.
    """

    def recover() -> None:
        _close_streams(worker)
        if conn.closed or conn.invalidated:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
        except Exception:
            log.debug("rollback after cancellation failed; invalidating", exc_info=True)
            conn.invalidate()

    return recover


_installed: weakref.WeakSet[Engine] = weakref.WeakSet()
_installed_lock = threading.Lock()


def install_engine(engine: Engine) -> None:
    """Register the hooks a driver's interrupter needs (once per engine)."""
    if engine.dialect.driver not in ("pymysql", "mysqldb"):
        return
    with _installed_lock:
        if engine in _installed:
            return
        _installed.add(engine)
    event.listen(engine, "connect", _remember_mysql_id)


def arm(worker: Worker, conn: Connection) -> None:
    """Make ``worker``'s cancellations interrupt and then recover ``conn``.

    A shared worker is left alone: the call running may be another task's.
    """
    if not worker.exclusive:
        return
    worker.interrupter = interrupter_for(conn)
    worker.recover = recoverer_for(conn, worker)
