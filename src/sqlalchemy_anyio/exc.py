"""Exceptions of the async extension, with the official names and bases."""

from __future__ import annotations

from concurrent.futures import CancelledError as _FutureCancelled

from sqlalchemy import exc


class AsyncMethodRequired(exc.InvalidRequestError):
    """Server-side cursors were asked for where only ``stream()`` can provide them."""


class AsyncContextNotStarted(exc.InvalidRequestError):
    """A connection or transaction was used before being awaited or entered."""


class AsyncContextAlreadyStarted(exc.InvalidRequestError):
    """A connection or transaction was awaited or entered a second time."""


class AsyncBindNotFound(exc.InvalidRequestError):
    """A bind has no async counterpart known to the AsyncSession."""


class WorkerThreadRequired(exc.MissingGreenlet):
    """Blocking I/O was attempted off the worker thread that owns a connection.

    A subclass of :class:`sqlalchemy.exc.MissingGreenlet`, so code written for
    the official extension that catches that error keeps working.
    """


class CallerCancelled(_FutureCancelled):
    """The task awaiting this worker call was cancelled: the loop is off limits.

    Raised on the worker by ``anyio.from_thread.*`` and ``await_()`` so the
    code there unwinds; the awaiting task raises its own cancellation.  A
    ``concurrent.futures.CancelledError``, as anyio raises in its own worker
    threads when their host task is cancelled.
    """


class DriverMappedWarning(UserWarning):
    """An async driver in a URL (``+asyncpg``, ``+aiosqlite``...) was replaced by
    its synchronous counterpart, which is what runs on the worker threads.

    A warning rather than only a log line so it shows up where logging is
    configured away (Alembic's ``fileConfig``).  Silence it with
    ``warnings.filterwarnings("ignore", category=DriverMappedWarning)``, or
    write the synchronous driver in the URL.
    """


__all__ = [
    "AsyncBindNotFound",
    "AsyncContextAlreadyStarted",
    "AsyncContextNotStarted",
    "AsyncMethodRequired",
    "CallerCancelled",
    "DriverMappedWarning",
    "WorkerThreadRequired",
]
