"""Exceptions of the async extension, with the official names and bases."""

from __future__ import annotations

from sqlalchemy import exc


class AsyncMethodRequired(exc.InvalidRequestError):
    """An API can't be used because its result would not be compatible with async."""


class AsyncContextNotStarted(exc.InvalidRequestError):
    """A startable context manager has not been started."""


class AsyncContextAlreadyStarted(exc.InvalidRequestError):
    """A startable context manager is already started."""


class AsyncBindNotFound(exc.InvalidRequestError):
    """A bind has no async counterpart known to the AsyncSession."""


class WorkerThreadRequired(exc.MissingGreenlet):
    """Blocking I/O was attempted off the worker thread that owns a connection.

    A subclass of :class:`sqlalchemy.exc.MissingGreenlet`, so code written for
    the official extension that catches that error keeps working.
    """


__all__ = [
    "AsyncBindNotFound",
    "AsyncContextAlreadyStarted",
    "AsyncContextNotStarted",
    "AsyncMethodRequired",
    "WorkerThreadRequired",
]
