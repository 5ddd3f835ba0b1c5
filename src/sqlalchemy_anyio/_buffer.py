"""Fetch a result's rows on the worker, so reading it on the loop does no I/O."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Result
from sqlalchemy.engine.cursor import CursorFetchStrategy, FullyBufferedCursorFetchStrategy

from . import exc as async_exc
from ._chunk import fetch_cursor_rows, fetch_rows


def buffer_result(result: Result[Any], owner: str, method: str = "execute") -> Result[Any]:
    """Fully buffer a result of ``<owner>.<method>()`` and release its cursor.

    A server-side cursor (``stream_results``) cannot be buffered silently: it
    is closed and :class:`~.exc.AsyncMethodRequired` names ``stream()``.
    """
    try:
        is_cursor = result._is_cursor
    except AttributeError:  # legacy execute(DefaultGenerator) returns a scalar
        return result
    cursor_result: Any = result if is_cursor else getattr(result, "raw", None)
    # Asked for, not only granted: SQLite has no server-side cursors, but the
    # same code must fail the same way on every database.
    if cursor_result is not None and (
        cursor_result.context._is_server_side
        or cursor_result.context.execution_options.get("stream_results", False)
    ):
        cursor_result.close()
        raise async_exc.AsyncMethodRequired(
            f"Can't use the {owner}.{method}() method with a server-side cursor. "
            f"Use the {owner}.stream() method for an async streaming result set."
        )
    if is_cursor:
        buffer_cursor_result(result)
    return result


def buffer_cursor_result(result: Any) -> None:
    """Move the rows of a CursorResult into memory and close its DBAPI cursor."""
    cursor = result.cursor
    if cursor is None or result._soft_closed:  # no rows (DML), exhausted, or done already
        return
    strategy = result.cursor_strategy
    if not isinstance(strategy, FullyBufferedCursorFetchStrategy):
        # In chunks, so the event loop thread gets the GIL between them.
        if type(strategy) is CursorFetchStrategy:
            rows = fetch_cursor_rows(result, cursor)
        else:  # a row-buffering strategy: drain through it
            rows = fetch_rows(lambda size: strategy.fetchmany(result, cursor, size))
        result.cursor_strategy = FullyBufferedCursorFetchStrategy(
            None,
            alternate_description=strategy.alternate_cursor_description,
            initial_buffer=rows,
        )
    # Release the cursor now, here on the worker; the result stays readable.
    # ``result.cursor`` keeps naming it (closed), as a buffered result of the
    # official extension does.
    result._soft_closed = True
    result.connection._safe_close_cursor(cursor)
