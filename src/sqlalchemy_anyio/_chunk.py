"""Fetch big results on the worker in bounded chunks, letting the loop run between them.

A DBAPI ``fetchall()`` can be one C call that converts every row (psycopg's
does) and SQLAlchemy's compiled row loops are C calls too: while one runs, the
worker holds the GIL with no switch point, so the event loop thread waits for
the whole result.  Here rows are fetched ``CHUNK_ROWS`` at a time with
:func:`switch_point` between chunks.

Three paths: :func:`fetch_cursor_rows` for buffered Core results (``_buffer``),
:func:`drain` for ``all()`` / ``fetchall()`` of streamed results, and, for ORM
loads, an execution-context hook (:func:`install_engine`) that pre-fetches the
DBAPI rows in chunks before SQLAlchemy turns them into objects; it acts only
inside :func:`prefetching`, which ``AsyncSession.execute()`` enters on the
worker.  An engine event would do the same, but would send every statement
down SQLAlchemy's slower evented path.

ORM instance processing itself is Python bytecode, where the interpreter's
switch interval already lets the loop in; cyclic-GC passes are not ours to
split (see the responsiveness section of the benchmarks' README).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, List, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.engine.cursor import _DEFAULT_FETCH, FullyBufferedCursorFetchStrategy

#: Rows per chunk: fetching this many takes about a millisecond or less (40k
#: rows: 40 chunks), so a waiting loop thread gets the GIL within about one
#: switch interval (5 ms) and the extra hand-offs cost next to nothing.
CHUNK_ROWS = 1000


def switch_point() -> None:
    """Release the GIL for a moment: a thread that asked for it (the loop) takes it.

    ``time.sleep(0)`` is a blocking call that drops the GIL; when another thread
    has requested it (after waiting one switch interval), CPython hands it over
    before this thread may take it back.
    """
    time.sleep(0)


def fetch_rows(fetchmany: Callable[[int], Sequence[Any]]) -> List[Any]:
    """All remaining rows, ``CHUNK_ROWS`` per ``fetchmany`` call, switching after
    each full chunk.  A small result makes no switch: ``time.sleep(0)`` is a
    system call that can cost a context switch, several times the whole
    statement on a local database."""
    rows: List[Any] = []
    while True:
        part = fetchmany(CHUNK_ROWS)
        if not part:
            return rows
        rows.extend(part)
        if len(part) >= CHUNK_ROWS:
            switch_point()


def fetch_cursor_rows(result: Any, cursor: Any) -> List[Any]:
    """All rows of a CursorResult's DBAPI cursor, in chunks.

    Errors are handled as SQLAlchemy's own ``fetchall()`` handles them
    (wrapped in ``sqlalchemy.exc.DBAPIError``, disconnects noticed).
    """
    try:
        return fetch_rows(cursor.fetchmany)
    except BaseException as err:
        result.cursor_strategy.handle_exception(result, cursor, err)
        raise  # handle_exception always raises; for the type checker


def drain(view: Any, finish: Callable[[], Sequence[Any]]) -> List[Any]:
    """``view.all()`` (``finish`` = ``view.all``) or ``view.fetchall()``, in chunks.

    The chunks go through ``view.fetchmany`` (uniquing and filters apply as in
    ``all()``); ``finish`` then runs on the exhausted result, so it ends
    (closes) exactly as the one-call form would.
    """
    if getattr(view, "_unique_filter_state", None) is not None:
        # Uniquing: an ORM result refuses to be read in parts (its yield_per
        # check), so it is read in one call, as all() does.
        return list(finish())
    rows = fetch_rows(view.fetchmany)
    rows.extend(finish())
    return rows


# --------------------------------------------------------------------------
# ORM loads: pre-fetch in chunks before SQLAlchemy's row processing

_local = threading.local()


@contextlib.contextmanager
def prefetching() -> Iterator[None]:
    """On this thread, rows of statements run with ``prebuffer_rows`` are pre-fetched."""
    previous = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = previous


class _PrefetchingContext:
    """Mixed into a dialect's execution context: ``post_exec`` pre-fetches the rows.

    Only for a plain SELECT whose rows SQLAlchemy will read in full anyway
    (``prebuffer_rows``, set by ``AsyncSession.execute()``), never for a
    server-side cursor, executemany or DML.  ``post_exec`` runs inside
    SQLAlchemy's error handling, so a failing fetch is wrapped and raised from
    the same ``execute()`` as before.
    """

    cursor: Any
    execution_options: Any
    executemany: bool
    is_crud: bool
    _is_server_side: bool
    cursor_fetch_strategy: Any

    def post_exec(self) -> None:
        super().post_exec()  # type: ignore[misc]
        if (
            getattr(_local, "active", False)
            and self.cursor_fetch_strategy is _DEFAULT_FETCH
            and not self.executemany
            and not self.is_crud
            and not self._is_server_side
            and self.execution_options.get("prebuffer_rows", False)
            and not self.execution_options.get("stream_results", False)
        ):
            cursor = self.cursor
            if cursor is not None and cursor.description is not None:
                self.cursor_fetch_strategy = FullyBufferedCursorFetchStrategy(
                    cursor, initial_buffer=fetch_rows(cursor.fetchmany)
                )


_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def install_engine(engine: Engine) -> None:
    """Give ``engine``'s dialect the pre-fetching execution context (once)."""
    dialect = engine.dialect
    cls = dialect.execution_ctx_cls
    if issubclass(cls, _PrefetchingContext):
        return
    with _classes_lock:
        sub = _classes.get(cls)
        if sub is None:
            sub = _classes[cls] = type(cls.__name__, (_PrefetchingContext, cls), {})
    dialect.execution_ctx_cls = sub
