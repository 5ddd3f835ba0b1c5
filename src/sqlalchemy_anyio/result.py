"""Async results that fetch through the worker that owns their cursor.

Only :meth:`AsyncConnection.stream` and :meth:`AsyncSession.stream` make
these.  Each wraps a sync result (or a view of it: scalars, mappings) and
runs every fetch on the worker; async iteration pulls rows in batches, one
hop per batch.
"""

from __future__ import annotations

import collections
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Deque,
    Generic,
    Optional,
    Sequence,
    TypeVar,
)

from sqlalchemy import exc
from sqlalchemy.engine import FrozenResult, Result, Row, RowMapping
from sqlalchemy.util.typing import Self

from ._chunk import drain

if TYPE_CHECKING:
    from sqlalchemy.engine.result import RMKeyView, _KeyIndexType, _UniqueFilterType

    from ._bridge import Worker

_R = TypeVar("_R")
_T = TypeVar("_T")

#: Rows pulled per hop by ``async for`` when ``yield_per`` was not set.
ITERATION_BATCH = 100


class AsyncCommon(Generic[_R]):
    """What all async result kinds share: the sync result, its worker, a row buffer."""

    __slots__ = ("__weakref__", "_buffer", "_real_result", "_view", "_worker")

    def __init__(self, real_result: Result[Any], view: Any, worker: Worker) -> None:
        #: The sync Result whose cursor this reads (closed by close()).
        self._real_result = real_result
        worker.track_stream(self)
        #: The sync object fetched from: the Result, or its scalars()/mappings().
        self._view = view
        self._worker = worker
        #: Rows fetched ahead by ``async for``, not yet handed out.
        self._buffer: Deque[_R] = collections.deque()

    async def close(self) -> None:
        """Close this result."""
        self._buffer.clear()
        await self._worker.call(self._real_result.close)

    def _close_on_worker(self) -> None:
        """Close the sync result; called on the worker by a cancellation's recovery."""
        self._real_result.close()

    async def _close_shielded(self) -> None:
        self._buffer.clear()
        await self._worker.call_shielded(self._real_result.close)

    @property
    def closed(self) -> bool:
        """Whether the underlying result is closed."""
        return bool(self._real_result.closed)

    def _reshape_check(self) -> None:
        if self._buffer:
            raise exc.InvalidRequestError(
                "Can't change the shape of an async result (unique(), columns(), "
                "scalars(), mappings()) after iterating it has begun; apply them "
                "before the first 'async for'."
            )

    async def _drain_then(self, method: Any) -> list[_R]:
        """Buffered rows, then ``method`` (all / fetchall) of the rest, in chunks on the worker."""
        rows = list(self._buffer)
        self._buffer.clear()
        return rows + await self._worker.call(drain, self._view, method)

    async def partitions(self, size: Optional[int] = None) -> AsyncIterator[Sequence[_R]]:
        """Iterate over sub-lists of rows of the size given (one hop each)."""
        while True:
            part = await self.fetchmany(size)
            if not part:
                break
            yield part

    def yield_per(self, num: int) -> Self:
        """Fetch ``num`` rows per batch; returns this result."""
        self._view = self._view.yield_per(num)
        return self

    async def fetchall(self) -> Sequence[_R]:
        """All remaining rows, as a list."""
        return await self._drain_then(self._view.fetchall)

    async def fetchmany(self, size: Optional[int] = None) -> Sequence[_R]:
        """Up to ``size`` more rows (or the result's default batch)."""
        if self._buffer:
            want = size if size is not None else len(self._buffer)
            part = [self._buffer.popleft() for _ in range(min(want, len(self._buffer)))]
            if len(part) < want:
                part.extend(await self._worker.call(self._view.fetchmany, want - len(part)))
            return part
        return list(await self._worker.call(self._view.fetchmany, size))

    async def all(self) -> Sequence[_R]:
        """All remaining rows, as a list; closes the result."""
        return await self._drain_then(self._view.all)

    def __aiter__(self) -> AsyncCommon[_R]:
        return self

    async def __anext__(self) -> _R:
        if not self._buffer:
            batch = self._real_result._yield_per or ITERATION_BATCH
            rows = await self._worker.call(self._view.fetchmany, batch)
            if not rows:
                raise StopAsyncIteration()
            self._buffer.extend(rows)
        return self._buffer.popleft()

    async def first(self) -> Optional[_R]:
        """The first row (or None), then close the result."""
        if self._buffer:
            row = self._buffer.popleft()
            await self.close()
            return row
        return await self._worker.call(self._view.first)

    async def one_or_none(self) -> Optional[_R]:
        """At most one row, or raise if there are more."""
        self._unbuffer_for_exactness()
        return await self._worker.call(self._view.one_or_none)

    async def one(self) -> _R:
        """Exactly one row, or raise."""
        self._unbuffer_for_exactness()
        return await self._worker.call(self._view.one)

    def _unbuffer_for_exactness(self) -> None:
        if self._buffer:
            raise exc.InvalidRequestError(
                "one() / one_or_none() can't be used after iteration has begun."
            )


class _WithKeys:
    __slots__ = ()
    _view: Any

    def keys(self) -> RMKeyView:
        """The column names of the rows."""
        keys: RMKeyView = self._view.keys()
        return keys


_TP = TypeVar("_TP", bound=Any)


class AsyncResult(_WithKeys, AsyncCommon[Row[Any]], Generic[_TP]):
    """An async wrapper around a streaming :class:`~sqlalchemy.engine.Result`."""

    __slots__ = ()

    def __init__(self, real_result: Result[Any], worker: Worker) -> None:
        super().__init__(real_result, real_result, worker)

    @property
    def t(self) -> AsyncTupleResult[Any]:
        """Same rows, typed as tuples (a synonym for :meth:`tuples`)."""
        return self.tuples()

    def tuples(self) -> AsyncTupleResult[Any]:
        """Same rows, typed as tuples."""
        return AsyncTupleResult(self._real_result, self._view, self._worker)

    def unique(self, strategy: Optional[_UniqueFilterType] = None) -> AsyncResult[_TP]:
        """De-duplicate rows (or objects) in Python; returns this result."""
        self._reshape_check()
        self._view = self._view.unique(strategy)
        return self

    def columns(self, *col_expressions: _KeyIndexType) -> AsyncResult[_TP]:
        """Limit each row to the given columns; returns this result."""
        self._reshape_check()
        self._view = self._view.columns(*col_expressions)
        return self

    async def fetchone(self) -> Optional[Row[Any]]:
        """The next row, or None."""
        if self._buffer:
            return self._buffer.popleft()
        return await self._worker.call(self._view.fetchone)

    async def scalar_one(self) -> Any:
        """Exactly one row's first column."""
        self._unbuffer_for_exactness()
        return await self._worker.call(self._view.scalar_one)

    async def scalar_one_or_none(self) -> Optional[Any]:
        """At most one row's first column, or None."""
        self._unbuffer_for_exactness()
        return await self._worker.call(self._view.scalar_one_or_none)

    async def scalar(self) -> Any:
        """The first column of the first row, then close the result."""
        if self._buffer:
            row = self._buffer.popleft()
            await self.close()
            return row[0]
        return await self._worker.call(self._view.scalar)

    async def freeze(self) -> FrozenResult[Any]:
        """A :class:`~sqlalchemy.engine.FrozenResult` of the remaining rows."""
        self._reshape_check()
        return await self._worker.call(self._view.freeze)

    def scalars(self, index: _KeyIndexType = 0) -> AsyncScalarResult[Any]:
        """An :class:`AsyncScalarResult` of one column of each row."""
        self._reshape_check()
        return AsyncScalarResult(self._real_result, self._view.scalars(index), self._worker)

    def mappings(self) -> AsyncMappingResult:
        """An :class:`AsyncMappingResult` of dict-like rows."""
        self._reshape_check()
        return AsyncMappingResult(self._real_result, self._view.mappings(), self._worker)


class AsyncScalarResult(AsyncCommon[_R]):
    """An async wrapper around a :class:`~sqlalchemy.engine.ScalarResult`."""

    __slots__ = ()

    def unique(self, strategy: Optional[_UniqueFilterType] = None) -> AsyncScalarResult[_R]:
        """De-duplicate values in Python; returns this result."""
        self._reshape_check()
        self._view = self._view.unique(strategy)
        return self


class AsyncMappingResult(_WithKeys, AsyncCommon[RowMapping]):
    """An async wrapper around a :class:`~sqlalchemy.engine.MappingResult`."""

    __slots__ = ()

    def unique(self, strategy: Optional[_UniqueFilterType] = None) -> AsyncMappingResult:
        """De-duplicate rows in Python; returns this result."""
        self._reshape_check()
        self._view = self._view.unique(strategy)
        return self

    def columns(self, *col_expressions: _KeyIndexType) -> AsyncMappingResult:
        """Limit each mapping to the given columns; returns this result."""
        self._reshape_check()
        self._view = self._view.columns(*col_expressions)
        return self

    async def fetchone(self) -> Optional[RowMapping]:
        """The next mapping, or None."""
        if self._buffer:
            return self._buffer.popleft()
        return await self._worker.call(self._view.fetchone)


class AsyncTupleResult(AsyncResult[_TP]):
    """An :class:`AsyncResult` typed as plain tuples."""

    __slots__ = ()

    def __init__(self, real_result: Result[Any], view: Any, worker: Worker) -> None:
        AsyncCommon.__init__(self, real_result, view, worker)


__all__ = ["AsyncMappingResult", "AsyncResult", "AsyncScalarResult", "AsyncTupleResult"]
