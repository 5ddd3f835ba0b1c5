"""An AsyncConnection's statements: each runs on the connection's worker.

``execute()`` and friends fetch every row there before they return, so
reading the result on the event loop does no I/O; ``stream()`` pulls batches
from a server-side cursor through the worker.
"""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    Callable,
    Optional,
    TypeVar,
)

from sqlalchemy import exc
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Connection, Engine, Result

from ._base import asyncstartablecontext
from ._bridge import Worker
from ._buffer import buffer_result
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter, _CoreAnyExecuteParams
    from sqlalchemy.sql.base import Executable

_T = TypeVar("_T")

_STREAM_OPTIONS = sa_util.immutabledict({"stream_results": True})


class ConnectionStatements:
    """The statement-running part of :class:`AsyncConnection`."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by AsyncConnection
        sync_engine: Engine

        @property
        def _proxied(self) -> Connection: ...

        async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T: ...

        def _current_worker(self) -> Optional[Worker]: ...

    async def exec_driver_sql(
        self,
        statement: str,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Result[Any]:
        """Execute a driver-level SQL string; the result is fully fetched."""
        return await self._call(
            _buffered_call,
            self._proxied.exec_driver_sql,
            statement,
            parameters,
            execution_options,
        )

    @asyncstartablecontext
    async def stream(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> AsyncGenerator[AsyncResult[Any], None]:
        """Execute and return an :class:`AsyncResult` that fetches in batches.

        Uses a server-side cursor where the dialect has one.  Await it, or use
        ``async with`` to have the result closed at the end of the block.
        """
        dialect = self.sync_engine.dialect
        if not dialect.supports_server_side_cursors and dialect.name != "sqlite":
            # (SQLite's cursors step through the rows as they are fetched:
            # batches pulled through the worker stream there too)
            raise exc.InvalidRequestError(
                "Can't use `stream` or `stream_scalars` with the current dialect since it "
                "does not support server side cursors.  Use execute(), which fetches the "
                "whole result on the worker."
            )
        result = await self._call(
            self._proxied.execute,
            statement,
            parameters,
            execution_options=sa_util.EMPTY_DICT.merge_with(execution_options, _STREAM_OPTIONS),
        )
        ar: AsyncResult[Any] = AsyncResult(result, self._require_worker())
        try:
            yield ar
        except GeneratorExit:
            pass
        else:
            await ar._close_shielded()

    def _require_worker(self) -> Worker:
        worker = self._current_worker()
        assert worker is not None
        return worker

    async def execute(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Result[Any]:
        """Execute a statement; the rows are fetched before this returns."""
        return await self._call(
            _buffered_call, self._proxied.execute, statement, parameters, execution_options
        )

    async def scalar(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Any:
        """Execute and return the first column of the first row."""
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalar()

    async def scalars(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Any:
        """Execute and return a :class:`~sqlalchemy.engine.ScalarResult`."""
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalars()

    @asyncstartablecontext
    async def stream_scalars(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> AsyncGenerator[AsyncScalarResult[Any], None]:
        """Like :meth:`stream`, yielding an :class:`AsyncScalarResult`."""
        result: AsyncResult[Any]
        async with self.stream(
            statement, parameters, execution_options=execution_options
        ) as result:
            yield result.scalars()

    async def run_sync(self, fn: Callable[..., _T], *arg: Any, **kw: Any) -> _T:
        """Run ``fn(sync_connection, *arg, **kw)`` on this connection's worker.

        Inside ``fn`` everything is ordinary synchronous SQLAlchemy.
        """
        return await self._call(fn, self._proxied, *arg, **kw)


def _buffered_call(
    method: Callable[..., Result[Any]],
    statement: Any,
    parameters: Any,
    execution_options: Any,
) -> Result[Any]:
    """Run an execute method and fetch all of its rows (on the worker)."""
    if execution_options:
        result = method(statement, parameters, execution_options=execution_options)
    else:
        result = method(statement, parameters)
    return buffer_result(result, "AsyncConnection", method.__name__)
