"""Refuse blocking I/O on a leased connection from any thread but its worker.

The official extension raises ``MissingGreenlet`` when a lazy load happens
outside ``await``.  Here the equivalent is SQL run by the event loop thread
(or any other thread) on a connection that a worker owns: it is refused at
once, before the connection is touched, with an error that subclasses
``MissingGreenlet`` so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from . import exc as async_exc

if TYPE_CHECKING:
    from ._bridge import Worker

_OWNER_ATTR = "_sqlalchemy_anyio_worker"

_installed: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_installed_lock = threading.Lock()

REMEDY = (
    "Inside async code, load what you need up front (selectinload(), "
    "joinedload(), refresh()), await it with 'await obj.awaitable_attrs.<name>', "
    "or run the synchronous code on the worker with 'await session.run_sync(fn)' "
    "/ 'await connection.run_sync(fn)'."
)


def refusal(what: str) -> async_exc.WorkerThreadRequired:
    return async_exc.WorkerThreadRequired(
        f"{what} was attempted on a connection owned by a sqlalchemy_anyio worker "
        f"thread, from thread {threading.current_thread().name!r}; this usually means "
        f"a lazy load or an expired attribute was touched outside an await. "
        f"Nothing was sent to the database. {REMEDY}"
    )


def owner_of(conn: Connection) -> Optional[Worker]:
    return getattr(conn, _OWNER_ATTR, None)  # type: ignore[no-any-return]


def claim(conn: Connection, worker: Worker) -> Connection:
    """Mark ``conn`` as owned by ``worker`` (called on that worker)."""
    setattr(conn, _OWNER_ATTR, worker)
    return conn


def connect_on_worker(engine: Engine, worker: Worker) -> Connection:
    """``engine.connect()`` on the worker, the result owned by it."""
    return claim(engine.connect(), worker)


def _before_execute(conn: Connection, *args: Any) -> None:
    worker = getattr(conn, _OWNER_ATTR, None)
    if worker is not None and not worker.is_current():
        raise refusal("SQL execution")


def install_engine(engine: Engine) -> None:
    """Install the check on ``engine`` (once per engine)."""
    root = engine
    while isinstance(getattr(root, "_proxied", None), Engine):
        root = root._proxied  # type: ignore[attr-defined]
    with _installed_lock:
        if root in _installed:
            return
        _installed.add(root)
    event.listen(root, "before_execute", _before_execute)
