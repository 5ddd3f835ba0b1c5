"""SQLAlchemy's asyncio extension on worker threads, for asyncio and trio.

Replace ``from sqlalchemy.ext.asyncio import X`` with
``from sqlalchemy_anyio import X``.
"""

from __future__ import annotations

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
    WorkerThreadRequired,
)
from .result import AsyncMappingResult, AsyncResult, AsyncScalarResult, AsyncTupleResult

__all__ = [
    "AsyncBindNotFound",
    "AsyncConnection",
    "AsyncContextAlreadyStarted",
    "AsyncContextNotStarted",
    "AsyncEngine",
    "AsyncMappingResult",
    "AsyncMethodRequired",
    "AsyncResult",
    "AsyncScalarResult",
    "AsyncTransaction",
    "AsyncTupleResult",
    "WorkerThreadRequired",
    "async_engine_from_config",
    "create_async_engine",
    "create_async_pool_from_url",
]
