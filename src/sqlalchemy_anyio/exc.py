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


class ConnectionWrittenOff(exc.PendingRollbackError):
    """The connection (or session) is still stuck in a statement that ignored
    its interrupt and was written off after ``cancel_timeout``.

    Raised at once, instead of waiting behind that statement without a bound.
    A subclass of :class:`sqlalchemy.exc.PendingRollbackError`, the official
    extension's error for a connection that cannot be used until it is reset.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message or WRITTEN_OFF)


WRITTEN_OFF = (
    "This connection was written off: a cancelled statement on it ignored its "
    "interrupt past the engine's cancel_timeout, and it still runs on the "
    "connection's worker thread.  Close this AsyncSession or AsyncConnection and "
    "use a new one (the engine's other connections are unaffected); raise "
    "cancel_timeout, or use a driver and server that honour a cancel, where "
    "statements must be able to outlive it."
)

CLOSE_STILL_RUNNING = (
    "This session's close is still running on its worker thread past the engine's "
    "cancel_timeout; the session can be used again once it has finished."
)


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
    "ConnectionWrittenOff",
    "DriverMappedWarning",
    "WorkerThreadRequired",
]
