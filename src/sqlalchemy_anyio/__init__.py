"""SQLAlchemy's asyncio extension on worker threads, for asyncio and trio.

Replace ``from sqlalchemy.ext.asyncio import X`` with
``from sqlalchemy_anyio import X``.
"""

from __future__ import annotations

from ._bridge._reentry import await_
from .engine import (
    AsyncConnection,
    AsyncEngine,
    AsyncTransaction,
    async_engine_from_config,
    create_async_engine,
    create_async_pool_from_url,
)
from .exc import (
    AsyncBindNotFound,
    AsyncContextAlreadyStarted,
    AsyncContextNotStarted,
    AsyncMethodRequired,
    CallerCancelled,
    ConnectionWrittenOff,
    DriverMappedWarning,
    WorkerThreadRequired,
)
from .result import AsyncMappingResult, AsyncResult, AsyncScalarResult, AsyncTupleResult
from .scoping import async_scoped_session
from .session import (
    AsyncAttrs,
    AsyncSession,
    AsyncSessionTransaction,
    async_object_session,
    async_session,
    async_sessionmaker,
    close_all_sessions,
)

__all__ = [
    "AsyncAttrs",
    "AsyncBindNotFound",
    "AsyncConnection",
    "AsyncContextAlreadyStarted",
    "AsyncContextNotStarted",
    "AsyncEngine",
    "AsyncMappingResult",
    "AsyncMethodRequired",
    "AsyncResult",
    "AsyncScalarResult",
    "AsyncSession",
    "AsyncSessionTransaction",
    "AsyncTransaction",
    "AsyncTupleResult",
    "CallerCancelled",
    "ConnectionWrittenOff",
    "DriverMappedWarning",
    "WorkerThreadRequired",
    "await_",
    "async_engine_from_config",
    "async_object_session",
    "async_scoped_session",
    "async_session",
    "async_sessionmaker",
    "close_all_sessions",
    "create_async_engine",
    "create_async_pool_from_url",
]
