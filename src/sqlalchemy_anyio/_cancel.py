"""Per-driver interrupters: make a running statement stop when its task is cancelled.

When a task waiting on a worker is cancelled, ``Worker.call`` runs the
worker's *interrupter* on a short-lived thread (a network driver's cancel is
a round trip), waits for the statement and the interrupt to finish, then runs
the *recoverer* on the worker to leave the connection in a known state.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import _async_drivers, _fork

if TYPE_CHECKING:
    from ._bridge import Worker

log = logging.getLogger("sqlalchemy_anyio")


def _sqlite(conn: Connection, raw: Any, timeout: float) -> None:
    raw.interrupt()


def _psycopg(conn: Connection, raw: Any, timeout: float) -> None:
    cancel_safe = getattr(raw, "cancel_safe", None)
    if cancel_safe is not None:
        cancel_safe(timeout=timeout)
    else:
        raw.cancel()


def _psycopg2(conn: Connection, raw: Any, timeout: float) -> None:
    raw.cancel()


_MYSQL_ID = "_sqlalchemy_anyio_thread_id"


def _remember_mysql_id(dbapi_connection: Any, connection_record: Any) -> None:
    """Pool ``connect`` hook: note the server's id for the connection while on
    its own thread (mysqlclient refuses ``thread_id()`` from another thread)."""
    setattr(dbapi_connection, _MYSQL_ID, dbapi_connection.thread_id())


def _mysql(conn: Connection, raw: Any, timeout: float) -> None:
    """``KILL QUERY <id>`` on a side connection: MySQL drivers have no cancel.

    The side connection is made the way the engine makes its connections
    (``connect_args``, ``creator=``, ``do_connect`` handlers: credentials,
    sockets, SSL, tokens), but outside the pool: it must not wait for a
    place in a pool that the cancelled statement may be filling.
    """
    thread_id = getattr(raw, _MYSQL_ID, None)
    if thread_id is None:
        return
    _kill_query(conn, thread_id)


def _kill_query(conn: Connection, thread_id: Any) -> None:
    """``KILL QUERY`` on a side connection made by the engine's own connect path."""
    side = conn.engine.pool._invoke_creator(None)  # type: ignore[arg-type]
    try:
        cursor = side.cursor()
        cursor.execute(f"KILL QUERY {int(thread_id)}")
        cursor.close()
    finally:
        side.close()


def _remember_native_mysql_id(dbapi_connection: Any, connection_record: Any) -> None:
    """Like :func:`_remember_mysql_id` for aiomysql and asyncmy (whose adapted
    connections take no attributes): the id goes in the record's notes."""
    notes = _async_drivers.notes(connection_record)
    notes[_MYSQL_ID] = dbapi_connection.driver_connection.thread_id()


def _info(conn: Connection) -> dict[str, Any]:
    """Our notes on the pooled connection under ``conn`` (see ``_async_drivers.notes``)."""
    record = getattr(conn._dbapi_connection, "_connection_record", None)
    return _async_drivers.notes(record) if record is not None else {}


def _asyncpg(conn: Connection, raw: Any, timeout: float) -> None:
    """A CancelRequest for the connection's server process, sent the way
    asyncpg sends it: the statement fails with QueryCanceledError and the
    adapter's transaction bookkeeping stays right (cancelling the coroutine
    would also interrupt a COMMIT or BEGIN midway)."""
    info = _info(conn)
    loop = _async_drivers.owner_loop(info)
    if loop is None:
        return
    with _async_drivers.on_loop(loop):
        if not _async_drivers.asyncpg_server_cancel(raw.driver_connection, timeout):
            _async_drivers.interrupt(info)  # asyncpg's internals moved: cancel the coroutine


def _psycopg_async(conn: Connection, raw: Any, timeout: float) -> None:
    """psycopg's server-side cancel, run on the connection's event loop."""
    loop = _async_drivers.owner_loop(_info(conn))
    if loop is not None:
        with _async_drivers.on_loop(loop):
            _async_drivers.run_on_loop(raw.driver_connection.cancel_safe(timeout=timeout))


def _native_mysql(conn: Connection, raw: Any, timeout: float) -> None:
    """``KILL QUERY`` as for the sync MySQL drivers: cancelling an aiomysql or
    asyncmy coroutine mid-reply would leave its connection unusable."""
    info = _info(conn)
    thread_id, loop = info.get(_MYSQL_ID), _async_drivers.owner_loop(info)
    if thread_id is None or loop is None:
        return
    with _async_drivers.on_loop(loop):
        _kill_query(conn, thread_id)


def _driver(dialect: Any) -> str:
    """The driver actually run: a native async driver's own name, else the dialect's."""
    return getattr(dialect, "native_driver", None) or dialect.driver  # type: ignore[no-any-return]


_BY_DRIVER: dict[str, Callable[[Connection, Any, float], None]] = {
    "pysqlite": _sqlite,
    "psycopg": _psycopg,
    "psycopg2": _psycopg2,
    "pymysql": _mysql,
    "mysqldb": _mysql,
    "asyncpg": _asyncpg,
    "psycopg_async": _psycopg_async,
    "aiomysql": _native_mysql,
    "asyncmy": _native_mysql,
}


def interrupter_for(conn: Connection, timeout: float) -> Optional[Callable[[], None]]:
    """A callable that interrupts ``conn``'s current statement, or None.

    ``timeout`` bounds the drivers' own waits where they take one.
    """
    interrupt = _BY_DRIVER.get(_driver(conn.dialect))
    if interrupt is None:
        return None

    def interrupter() -> None:
        fairy = conn._dbapi_connection
        raw = fairy.dbapi_connection if fairy is not None else None
        if raw is not None:
            interrupt(conn, raw, timeout)

    return interrupter


def session_interrupter(sync_session: Session, timeout: float) -> Callable[[], None]:
    """Interrupt whatever statement the session's connections are running."""

    def interrupt() -> None:
        for conn in _session_connections(sync_session):
            interrupter = interrupter_for(conn, timeout)
            if interrupter is not None:
                interrupter()

    return interrupt


def _close_streams(worker: Worker) -> None:
    for result in worker.take_streams():
        try:
            result._close_on_worker()
        except Exception:  # the connection is reset next
            log.debug("closing a stream after cancellation failed", exc_info=True)


def _session_connections(session: Session) -> list[Connection]:
    """The Core connections the session's transaction holds right now."""
    trans = session.get_transaction()
    if trans is None:
        return []
    entries = list(trans._connections.values())
    return [entry[0] for entry in entries if isinstance(entry[0], Connection)]


def _invalidate_session(session: Session) -> None:
    """Invalidate the connections of a session whose call did not settle."""
    for conn in _session_connections(session):
        _invalidate_connection(conn)


def _invalidate_connection(conn: Connection) -> None:
    if not conn.closed and not conn.invalidated:
        conn.invalidate()


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


@_fork.in_child
def _reset_after_fork() -> None:
    global _installed_lock
    _installed_lock = threading.Lock()


def install_engine(engine: Engine) -> None:
    """Register the hooks a driver's interrupter needs (once per engine)."""
    driver = _driver(engine.dialect)
    if driver not in ("pymysql", "mysqldb", "aiomysql", "asyncmy"):
        return
    with _installed_lock:
        if engine in _installed:
            return
        _installed.add(engine)
    if driver in ("aiomysql", "asyncmy"):
        event.listen(engine, "connect", _remember_native_mysql_id)
    else:
        event.listen(engine, "connect", _remember_mysql_id)


def arm(worker: Worker, conn: Connection) -> None:
    """Make ``worker``'s cancellations interrupt and then recover ``conn``
    (or invalidate it, when they do not settle in time).

    A shared worker is left alone: the call running may be another task's.
    """
    if not worker.exclusive:
        return
    worker.interrupter = interrupter_for(conn, worker.cancel_timeout())
    worker.recover = recoverer_for(conn, worker)
    worker.invalidate = functools.partial(_invalidate_connection, conn)


def arm_session(worker: Worker, session: Session) -> None:
    """Like :func:`arm`, for whatever connections ``session`` holds."""
    if not worker.exclusive:
        return
    worker.interrupter = session_interrupter(session, worker.cancel_timeout())
    worker.recover = session_recoverer(session, worker)
    worker.invalidate = functools.partial(_invalidate_session, session)
